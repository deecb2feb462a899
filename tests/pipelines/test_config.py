"""Config loading, overrides and validation: every bad config gives one message naming the key path."""

from __future__ import annotations

import pytest
import yaml

from lookalike.errors import ConfigError
from lookalike.pipelines import commands
from lookalike.pipelines.config import (
    SCHEMA,
    apply_overrides,
    check_components,
    parse_overrides,
    read_config,
    resolve_config,
    shipped_configs,
    yaml_load,
)
from lookalike.pipelines.registry import REGISTRIES

TRIPLET = {"name": "triplet_with_miner", "args": {"margin": 0.2, "miner": {"name": "hard_triplets", "args": {}}}}


def minimal(**extra) -> dict:
    cfg = {"extractor": {"name": "my.module:Thing", "args": {}}, "criterion": TRIPLET}
    cfg.update(extra)
    return cfg


def problems(raw: dict, overrides=(), pipeline: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        cfg = resolve_config(raw, overrides)
        if pipeline:
            check_blocks(cfg, pipeline)
    return str(info.value)


def check_blocks(cfg: dict, pipeline: str) -> None:
    """check_components without the extractor (the models layer is exercised by the end-to-end tests)."""
    cfg = dict(cfg, extractor=None)
    check_components(cfg, pipeline)


# --- YAML and overrides --------------------------------------------------------------------------------
def test_scientific_floats_are_floats():
    assert yaml_load("lr: 3e-4")["lr"] == pytest.approx(3e-4)
    assert yaml_load("x: 1.0e-3")["x"] == pytest.approx(1e-3)
    assert yaml_load("x: 5")["x"] == 5 and isinstance(yaml_load("x: 5")["x"], int)


def test_overrides_set_dotted_paths_with_yaml_values():
    cfg = apply_overrides({"optimizer": {"name": "adamw", "args": {"lr": 1e-3}}},
                          ["optimizer.args.lr=3e-4", "max_epochs=5", "sampler=null", "metric_args.cmc_top_k=[1, 10]"])
    assert cfg == {"optimizer": {"name": "adamw", "args": {"lr": 3e-4}}, "max_epochs": 5, "sampler": None,
                   "metric_args": {"cmc_top_k": [1, 10]}}
    assert parse_overrides(["a.b={x: 1}"]) == [(["a", "b"], {"x": 1})]


def test_override_into_a_shorthand_block_expands_it():
    cfg = apply_overrides({"optimizer": "sgd"}, ["optimizer.args.momentum=0.9"])
    assert cfg["optimizer"] == {"name": "sgd", "args": {"momentum": 0.9}}


@pytest.mark.parametrize("bad, words", [
    ("max_epochs", "expected key=value"),
    ("=3", "not a dotted key path"),
    ("a..b=3", "not a dotted key path"),
])
def test_malformed_overrides(bad, words):
    with pytest.raises(ConfigError, match=words):
        parse_overrides([bad])


def test_override_through_a_scalar_names_the_key():
    with pytest.raises(ConfigError, match=r"seed holds 0, not a mapping"):
        apply_overrides({"seed": 0}, ["seed.x=1"])


# --- schema ------------------------------------------------------------------------------------------------
def test_defaults_are_filled_and_blocks_normalised():
    cfg = resolve_config(minimal(sampler="balance"), ["sampler.args.n_labels=4"])
    assert set(cfg) == set(SCHEMA)
    assert cfg["sampler"] == {"name": "balance", "args": {"n_labels": 4}}
    assert cfg["optimizer"] == {"name": "adamw", "args": {"lr": 1e-3}}
    assert cfg["max_epochs"] == SCHEMA["max_epochs"].default


def test_unknown_key_suggests_the_closest():
    msg = problems(minimal(max_epoch=3))
    assert "max_epoch: unknown key (did you mean 'max_epochs'?)" in msg
    assert "1 problem" in msg


def test_unknown_key_from_an_override():
    assert "bs_vall: unknown key (did you mean 'bs_val'?)" in problems(minimal(), ["bs_vall=3"])


def test_wrong_types_name_the_key_and_the_expected_type():
    msg = problems(minimal(seed="zero", cache_images="yes", max_epochs=True))
    assert "seed: expected int, got 'zero' (str)" in msg
    assert "cache_images: expected bool, got 'yes' (str)" in msg
    assert "max_epochs: expected int, got True (bool)" in msg
    assert "3 problem(s)" in msg


def test_choices_and_minimum():
    msg = problems(minimal(precision="bf16", mode="maximum", bs_val=0))
    assert "precision: 'bf16' is not one of" in msg and "did you mean 'bf16-mixed'" in msg
    assert "mode: 'maximum' is not one of 'max', 'min'" in msg
    assert "bs_val: must be >= 1, got 0" in msg
    assert "backbone_lr: must be >= 0, got -0.001" in problems(minimal(backbone_lr=-1e-3))


def test_missing_required_key():
    assert "extractor: required key missing" in problems({"criterion": TRIPLET})


def test_block_structure_errors():
    msg = problems(minimal(scheduler={"name": "step", "intervall": "epoch", "args": {"step_size": 1}},
                           sampler={"args": {"n_labels": 2}}, optimizer={"name": "sgd", "args": [0.1]}))
    assert "scheduler.intervall: unknown key in a component block (did you mean 'interval'?)" in msg
    assert "sampler.name: missing" in msg
    assert "optimizer.args: expected a mapping" in msg


# --- components ------------------------------------------------------------------------------------------------
def test_unknown_component_lists_valid_names():
    cfg = resolve_config(minimal(), ["criterion.args.miner.name=hard_triplet"])
    with pytest.raises(ConfigError) as info:
        check_blocks(cfg, "train")
    msg = str(info.value)
    assert "criterion.args.miner.name: unknown miner 'hard_triplet' (did you mean 'hard_triplets'?)" in msg
    assert "all_triplets" in msg and "memory_bank" in msg


def test_unknown_argument_suggests_and_lists_the_signature():
    cfg = resolve_config(minimal(), ["criterion.args.margn=0.3"])
    with pytest.raises(ConfigError) as info:
        check_blocks(cfg, "train")
    msg = str(info.value)
    assert "criterion.args.margn: TripletLossWithMiner has no argument 'margn' (did you mean 'margin'?)" in msg


def test_missing_required_argument_and_wrong_argument_type():
    cfg = resolve_config(minimal(sampler={"name": "balance", "args": {"n_labels": "four"}},
                                 scheduler={"name": "step", "args": {}}))
    with pytest.raises(ConfigError) as info:
        check_blocks(cfg, "train")
    msg = str(info.value)
    assert "sampler.args.n_instances: required argument of BalanceSampler is missing" in msg
    assert "sampler.args.n_labels: BalanceSampler expects int, got 'four' (str)" in msg
    assert "scheduler.args.step_size: required argument of StepLR is missing" in msg


def test_arguments_owned_by_the_pipeline_are_refused():
    cfg = resolve_config(minimal(sampler={"name": "balance", "args": {"n_labels": 2, "n_instances": 2,
                                                                      "labels": [1, 2]}}))
    with pytest.raises(ConfigError, match=r"sampler.args.labels: set by the pipeline"):
        check_blocks(cfg, "train")


def test_criterion_is_required_for_training_only():
    cfg = resolve_config(minimal(criterion=None))
    with pytest.raises(ConfigError, match=r"criterion: required for training"):
        check_blocks(cfg, "train")


def test_a_users_class_by_import_path_is_checked_too():
    cfg = resolve_config(minimal(optimizer={"name": "torch.optim:SGD", "args": {"lr": 0.1, "momentun": 0.9}}))
    with pytest.raises(ConfigError, match=r"optimizer.args.momentun: SGD has no argument 'momentun' "
                                          r"\(did you mean 'momentum'\?\)"):
        check_blocks(cfg, "train")
    bad_path = resolve_config(minimal(optimizer={"name": "torch.optimz:SGD"}))
    with pytest.raises(ConfigError, match=r"optimizer.name: cannot import module 'torch.optimz'"):
        check_blocks(bad_path, "train")


def test_metric_for_checkpointing_must_be_computed():
    cfg = resolve_config(minimal(metric_for_checkpointing="OVERALL/cmc/10", metric_args={"cmc_top_k": [1, 5]}))
    with pytest.raises(ConfigError, match=r"'OVERALL/cmc/10' is not computed because metric_args.cmc_top_k is "
                                          r"\[1, 5\]"):
        check_blocks(cfg, "validate")


# --- files, registry, command handlers ------------------------------------------------------------------------
def test_read_config_by_shipped_name_and_missing_file(tmp_path):
    assert {"default", "triplet", "arcface", "category_balance"} <= set(shipped_configs())
    assert read_config("triplet").origin.endswith("triplet.yaml")
    with pytest.raises(ConfigError, match=r"nope.yaml' not found"):
        read_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"top level must be a mapping"):
        read_config(tmp_path / "list.yaml")


def test_registry_names_resolve_lazily_and_listing_shows_defaults():
    assert "balance" in REGISTRIES["sampler"] and "hard_triplets" in REGISTRIES["miner"]
    text = commands.registry_listing("miner")
    assert "memory_bank" in text and "bank_size_in_batches (required)" in text and "tri_expand_k=1" in text
    with pytest.raises(ConfigError, match="unknown kind"):
        commands.registry_listing("extractors_x")


def test_split_config_and_overrides():
    assert commands.split_config_and_overrides(["a.yaml", "x=1", "y.z=2"]) == ("a.yaml", ["x=1", "y.z=2"])
    assert commands.split_config_and_overrides(["x=1"]) == (None, ["x=1"])
    with pytest.raises(ConfigError, match="several configs"):
        commands.split_config_and_overrides(["a.yaml", "b.yaml"])


def test_handlers_exit_non_zero_with_one_message(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("extractor: {name: small_cnn}\ncriterion: {name: triplet_with_miner}\nmax_epoch: 3\n")
    assert commands.main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "max_epoch: unknown key (did you mean 'max_epochs'?)" in err and "Traceback" not in err
    assert commands.main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert commands.main(["registry", "sampler"]) == 0
    assert "category_balance" in capsys.readouterr().out


def test_docs_hold_the_generated_config_reference():
    from pathlib import Path

    from lookalike.pipelines.config import schema_markdown

    docs = (Path(__file__).resolve().parents[2] / "docs" / "pipelines.md").read_text()
    assert schema_markdown() in docs, "regenerate the table: python -c 'from lookalike.pipelines.config " \
                                      "import schema_markdown; print(schema_markdown())'"


def test_a_python_config_with_tuples_is_saved_as_yaml_lists(tmp_path):
    from lookalike.pipelines.runs import save_config

    cfg = resolve_config(minimal(criterion={"name": "arcface", "args": {"m": 0.7, "m_start": 0.3, "m_ramp": (1, 8)}},
                                 freeze_layers=("backbone.0",)))
    assert cfg["criterion"]["args"]["m_ramp"] == [1, 8] and cfg["freeze_layers"] == ["backbone.0"]
    saved = yaml.safe_load(save_config(cfg, tmp_path / "config.yaml").read_text())
    assert saved["criterion"]["args"]["m_ramp"] == [1, 8]
