"""Reliability of the pipelines (issue 15): nothing overwritten, bad resume checkpoints and user components end in
one message, paths that work from any folder, Ctrl-C that says how to continue, best.ckpt that every validation
competes for, one epoch numbering."""

from __future__ import annotations

import json
import os
import shutil
import signal
import uuid
from pathlib import Path

import pytest
import torch

from lookalike import cli
from lookalike.errors import CheckpointError, ConfigError
from lookalike.pipelines import commands, predict, train, validate
from lookalike.pipelines.config import load_config
from tests.pipelines.conftest import TRIPLET, tiny

CPU = ["progress_bar=false", "accelerator=cpu"]


def _copy_run(trained: dict, tmp_path: Path) -> Path:
    """A private copy of the shared run folder (config and checkpoints), for tests that write into it."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained["run_dir"] / "config.yaml", run / "config.yaml")
    shutil.copytree(trained["run_dir"] / "checkpoints", run / "checkpoints")
    return run


class _Evil:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# --- item 3: never overwrite a result silently ---------------------------------------------------------------------
def test_validate_and_predict_never_overwrite_earlier_results(trained, tmp_path):
    run = _copy_run(trained, tmp_path)
    first = validate(run, CPU)
    kept = (first["output_dir"] / "metrics.json").read_bytes()
    second = validate(run, CPU)
    assert first["output_dir"] == run / "validation" and second["output_dir"] == run / "validation_2"
    assert (first["output_dir"] / "metrics.json").read_bytes() == kept

    config = (run / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        validate(run, CPU + [f"output_dir={run.parent}", f"run_name={run.name}"])
    with pytest.raises(ConfigError, match="already holds a run"):
        predict(run, ["accelerator=cpu", f"output_dir={run.parent}", f"run_name={run.name}"])
    assert (run / "config.yaml").read_bytes() == config and not (run / "metrics.json").exists()

    assert predict(run, ["accelerator=cpu"]) == run / "predictions"
    assert predict(run, ["accelerator=cpu"]) == run / "predictions_2"

    named = CPU + [f"output_dir={tmp_path}", "run_name=results"]
    validate(run, named)
    with pytest.raises(ConfigError, match="already holds results.*overwrite=true"):
        validate(run, named)
    assert validate(run, named + ["overwrite=true"])["output_dir"] == tmp_path / "results"


# --- item 4: train --resume with a bad last.ckpt ------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "empty", "other_architecture", "malicious_pickle", "weights_only"])
def test_resume_from_a_bad_last_checkpoint_is_one_clean_message(trained, tmp_path, damage, capsys):
    run = _copy_run(trained, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    marker = tmp_path / "pwned"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "empty":
        last.write_bytes(b"")
    elif damage == "other_architecture":
        ckpt = torch.load(last, weights_only=True)
        key = next(k for k in ckpt["state_dict"] if k.startswith("extractor.") and k.endswith("weight"))
        ckpt["state_dict"][key] = torch.zeros(3, 3)
        torch.save(ckpt, last)
    elif damage == "malicious_pickle":
        torch.save({"state_dict": _Evil(marker), "epoch": 0}, last)
    else:
        torch.save(torch.load(last, weights_only=True)["state_dict"], last)  # weights without a training state
    assert commands.main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --resume") and "Traceback" not in err
    assert "weights_only" not in err and not marker.exists()
    expected = {"truncated": "cannot be read", "empty": "cannot be read", "other_architecture": "shape mismatch",
                "malicious_pickle": "was refused", "weights_only": "no training state"}[damage]
    assert expected in err


# --- item 5: paths ---------------------------------------------------------------------------------------------
def test_paths_are_absolute_and_relative_to_the_yaml_that_names_them(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(dataset.parent)
    cfg, _ = load_config(TRIPLET, [f"dataset_root={dataset.name}", "output_dir=out"], pipeline="train")
    assert cfg["dataset_root"] == str(dataset) and cfg["output_dir"] == str(dataset.parent / "out")

    (tmp_path / "configs").mkdir()
    (tmp_path / "data").mkdir()
    yaml_file = tmp_path / "configs" / "mine.yaml"
    yaml_file.write_text("dataset_root: ../data\ncheckpoint: weights.pt\nextractor: small_cnn\n")
    monkeypatch.chdir(dataset)  # somewhere else entirely
    cfg, _ = load_config(yaml_file, pipeline="predict")
    assert cfg["dataset_root"] == str(tmp_path / "data")
    assert cfg["checkpoint"] == str(tmp_path / "configs" / "weights.pt")
    cfg, _ = load_config(yaml_file, ["dataset_root=here"], pipeline="predict")  # the command line: the cwd
    assert cfg["dataset_root"] == str(dataset / "here")


def test_an_empty_path_is_an_error_not_the_example_data(dataset, tmp_path, capsys):
    with pytest.raises(ConfigError, match="empty path"):
        load_config(TRIPLET, ["dataset_root="], pipeline="train")
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text('dataset_root: ""\nextractor: small_cnn\n')
    with pytest.raises(ConfigError, match="dataset_root is an empty string"):
        load_config(yaml_file, pipeline="predict")
    assert cli.main(["train", "dataset_root=", "max_epochs=1"]) == 2
    assert "empty path" in capsys.readouterr().err


def test_a_run_stores_absolute_paths_so_it_validates_from_anywhere(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(dataset.parent)
    overrides = tiny(dataset, tmp_path, run_name="rel")
    assert overrides[0].startswith("dataset_root=") and overrides[1].startswith("output_dir=")
    result = train(TRIPLET, [f"dataset_root={dataset.name}", "output_dir=rel_runs", *overrides[2:]])
    assert result["run_dir"] == dataset.parent / "rel_runs" / "rel"
    saved = (result["run_dir"] / "config.yaml").read_text()
    assert f"dataset_root: {dataset}" in saved
    monkeypatch.chdir(tmp_path)
    assert "OVERALL/cmc/1" in validate(result["run_dir"], CPU)["metrics_flat"]


# --- item 6: smaller ones ----------------------------------------------------------------------------------------
def test_ctrl_c_exits_130_and_prints_the_resume_command(dataset, tmp_path, monkeypatch, capsys):
    from lookalike.pipelines import lightning_parts

    original = lightning_parts.ExtractorModule.training_step

    def ctrl_c_in_second_epoch(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise KeyboardInterrupt
        return original(self, batch, batch_idx)

    monkeypatch.setattr(lightning_parts.ExtractorModule, "training_step", ctrl_c_in_second_epoch)
    cfg = tmp_path / "triplet.yaml"
    cfg.write_text(json.dumps(TRIPLET))
    handler = signal.getsignal(signal.SIGINT)
    try:
        code = cli.main(["train", str(cfg), *tiny(dataset, tmp_path, max_epochs=2, run_name="stopped")])
        restored = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert code == 130
    err = capsys.readouterr().err
    assert f"lookalike train --resume {tmp_path / 'stopped'}" in err and "Traceback" not in err
    assert restored is signal.default_int_handler  # Lightning's "ignore Ctrl-C" is not left behind
    assert torch.load(tmp_path / "stopped/checkpoints/last.ckpt", weights_only=True)["epoch"] == 0


def test_a_user_extractor_without_feat_dim_is_one_message(dataset, tmp_path):
    cfg = dict(TRIPLET, extractor={"name": "tests.pipelines.user_parts:NoFeatDim", "args": {}})
    overrides = [o for o in tiny(dataset, tmp_path) if not o.startswith("extractor=")]
    with pytest.raises(ConfigError, match=r"extractor: tests.pipelines.user_parts:NoFeatDim has no `feat_dim`"):
        train(cfg, overrides)


def test_a_user_module_that_fails_on_import_is_one_message(tmp_path, monkeypatch):
    module = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text("raise RuntimeError('model file missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"extractor.name: importing module .* failed inside that module "
                                          r"\(RuntimeError: model file missing\)"):
        load_config({"extractor": f"{module}:Net"}, pipeline="predict")


def test_a_word_for_a_number_names_the_key():
    with pytest.raises(ConfigError, match=r"optimizer\.args\.lr: AdamW expects a number \(default 0\.001\), got "
                                          r"'fast'"):
        load_config(TRIPLET, ["optimizer.args.lr=fast"], pipeline="train")


def test_refused_weights_do_not_suggest_comparing_extractor_args(tmp_path):
    from lookalike.models import SmallCNNExtractor
    from lookalike.pipelines.builders import load_extractor_weights

    evil = tmp_path / "weights.pt"
    torch.save({"x": _Evil(tmp_path / "pwned")}, evil)
    with pytest.raises(CheckpointError) as info:
        load_extractor_weights(SmallCNNExtractor(), evil)
    assert "was refused" in str(info.value) and "extractor.args" not in str(info.value)
    assert not (tmp_path / "pwned").exists()
    other = tmp_path / "other.pt"
    torch.save(SmallCNNExtractor(channels=(8,)).state_dict(), other)
    with pytest.raises(CheckpointError, match="compare extractor.args"):  # a real mismatch keeps the hint
        load_extractor_weights(SmallCNNExtractor(), other)


# --- items 7 and 10: best.ckpt and one epoch numbering -------------------------------------------------------------
def test_a_finished_run_always_has_a_best_checkpoint(dataset, tmp_path):
    result = train(TRIPLET, tiny(dataset, tmp_path, max_epochs=1, valid_period=2, run_name="short"))
    run = result["run_dir"]
    assert result["best_checkpoint"] == run / "checkpoints" / "best.ckpt" and result["best_checkpoint"].is_file()
    assert "OVERALL/cmc/1" in validate(run, CPU)["metrics_flat"]


def test_every_validation_competes_for_best_and_epochs_count_from_one(dataset, tmp_path, capsys):
    result = train(TRIPLET, tiny(dataset, tmp_path, max_epochs=3, valid_period=2, run_name="three",
                                 **{"optimizer.args.lr": 3e-3}))
    run = result["run_dir"]
    history = json.loads((run / "history.json").read_text())
    validated = {int(k): v["val"]["OVERALL/cmc/1"] for k, v in history.items() if "val" in v}
    assert set(validated) == {2, 3}  # every 2nd epoch and the last one
    assert sorted(p.name for p in (run / "metrics").iterdir()) == ["epoch_002.json", "epoch_003.json"]
    best_epoch = max(validated, key=lambda e: (validated[e], e))
    assert result["best_score"] == pytest.approx(max(validated.values()))
    ckpt_epoch = torch.load(result["best_checkpoint"], weights_only=True)["epoch"] + 1  # Lightning counts from 0
    assert validated[ckpt_epoch] == pytest.approx(validated[best_epoch])
    assert json.loads((run / "metrics.json").read_text())["epoch"] == 3
    assert "validation after epoch 3" in capsys.readouterr().out


def test_backbone_lr_for_an_extractor_without_a_backbone_is_one_message(dataset, tmp_path):
    cfg = dict(TRIPLET, extractor={"name": "tests.pipelines.user_parts:NoBackbone", "args": {}}, backbone_lr=1e-5)
    overrides = [o for o in tiny(dataset, tmp_path) if not o.startswith("extractor=")]
    with pytest.raises(ConfigError, match=r"backbone_lr: the extractor \(tests.pipelines.user_parts:NoBackbone\) has "
                                          r"no `backbone` part"):
        train(cfg, overrides)
