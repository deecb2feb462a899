"""End-to-end runs of the train / validate / predict pipelines on a tiny synthetic dataset (a few steps each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lookalike.errors import ConfigError, LookalikeError
from lookalike.pipelines import commands, predict, train, validate
from lookalike.pipelines.config import read_config, resolve_config

from tests.pipelines.conftest import N_TRAIN_LABELS, N_VAL_LABELS, PER_LABEL, TRIPLET, killed_in_second_epoch, tiny


def test_train_writes_a_complete_run_folder(trained, dataset):
    run = Path(trained["run_dir"])
    assert run.name == "shared"
    for name in ("config.yaml", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.json",
                 "metrics/epoch_000.json", "metrics/epoch_001.json", "metrics/epoch_002.json", "history.json",
                 "curves.png"):  # one numbering: epoch N = after N epochs, 0 = before training
        assert (run / name).is_file(), name
    assert not list(run.rglob("*.tmp")), "temporary files left behind"
    assert list(run.rglob("metrics.csv")), "the CSV logger wrote nothing"
    saved = resolve_config(read_config(run / "config.yaml").raw)
    assert saved["max_epochs"] == 2 and saved["dataset_root"] == str(dataset)
    assert 0.0 <= trained["metrics_flat"]["OVERALL/cmc/1"] <= 1.0
    assert trained["best_checkpoint"].name == "best.ckpt"
    history = json.loads((run / "history.json").read_text())
    assert set(history) == {"0", "1", "2"}
    assert "train" not in history["0"] and "OVERALL/cmc/1" in history["0"]["val"]
    assert "loss" in history["2"]["train"] and "OVERALL/cmc/1" in history["2"]["val"]
    latest = json.loads((run / "metrics.json").read_text())
    assert latest["epoch"] == 2 and "OVERALL" in latest["metrics"]


def test_validate_a_run_folder_reproduces_its_best_metrics(trained):
    run = Path(trained["run_dir"])
    result = validate(run, ["progress_bar=false", "accelerator=cpu", "log_images=true"])
    out = result["output_dir"]
    assert out.parent == run and out.name.startswith("validation")
    assert (out / "metrics.json").is_file()
    assert (out / "worst_queries.png").stat().st_size > 1000
    best_epoch = torch.load(trained["best_checkpoint"], weights_only=True)["epoch"] + 1  # Lightning counts from 0
    recorded = json.loads((run / "metrics" / f"epoch_{best_epoch:03d}.json").read_text())["metrics"]
    assert result["metrics"]["OVERALL"]["cmc"][1] == pytest.approx(float(recorded["OVERALL"]["cmc"]["1"]))


def test_predict_a_folder_reports_bad_images_and_keeps_order(trained, dataset, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.png", "a.png", "sub/c.png"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes((dataset / "images" / "000_0.png").read_bytes())
    (folder / "broken.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match=r"1 of 4 image\(s\) could not be read"):
        out = predict(trained["run_dir"], [f"predict_source={folder}", "accelerator=cpu"])
    embeddings = np.load(out / "embeddings.npy")
    manifest = pd.read_csv(out / "manifest.csv")
    failed = pd.read_csv(out / "failed.csv")
    assert embeddings.shape[0] == len(manifest) == 3
    assert manifest["id"].tolist() == ["a.png", "b.png", "sub/c.png"]
    assert failed["id"].tolist() == ["broken.png"]
    # identical pictures give identical embeddings
    assert np.allclose(embeddings[0], embeddings[1], atol=1e-5) and np.allclose(embeddings[0], embeddings[2], atol=1e-5)


def test_predict_the_dataset_csv(trained):
    out = predict(trained["run_dir"], ["accelerator=cpu", "output_dir=" + str(trained["run_dir"] / "p"),
                                       "run_name=csv"])
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == (N_TRAIN_LABELS + N_VAL_LABELS) * PER_LABEL
    assert {"id", "path", "label", "split"} <= set(manifest.columns)
    assert np.load(out / "embeddings.npy").shape[0] == len(manifest)


def test_training_on_the_built_in_data_improves_retrieval(tmp_path):
    """The built-in emoji data with a small CNN at 32 px and triplet loss + hard mining: a few epochs must clearly
    raise CMC@1 on the validation labels, which training never sees."""
    result = train(None, [
        "extractor={name: small_cnn, args: {channels: [16, 32, 64], embedding_dim: 64}}", "image_size=32",
        "sampler={name: balance, args: {n_labels: 16, n_instances: 4}}", "scheduler=null",
        "criterion={name: triplet_with_miner, args: {margin: 0.2, miner: hard_triplets}}",
        "max_epochs=8", "valid_period=100", "optimizer.args.lr=3e-3", "progress_bar=false", "logger=null",
        "log_images=false", f"output_dir={tmp_path}", "accelerator=cpu",
    ])
    before = result["initial_metrics"]["OVERALL"]["cmc"][1]
    after = result["metrics"]["OVERALL"]["cmc"][1]
    assert after >= before + 0.1, (before, after)


def test_killed_and_resumed_run_equals_an_uninterrupted_one(dataset, tmp_path, monkeypatch):
    config = dict(TRIPLET, scheduler={"name": "step", "args": {"step_size": 1, "gamma": 0.5}})
    full = train(config, tiny(dataset, tmp_path, max_epochs=2, run_name="full"))

    killed_in_second_epoch(monkeypatch, lambda: train(config, tiny(dataset, tmp_path, max_epochs=2,
                                                                    run_name="killed")))
    assert torch.load(tmp_path / "killed/checkpoints/last.ckpt", weights_only=True)["epoch"] == 0

    resumed = train(None, [], resume=tmp_path / "killed")
    a = torch.load(full["last_checkpoint"], weights_only=True)
    b = torch.load(resumed["last_checkpoint"], weights_only=True)
    assert a["epoch"] == b["epoch"] == 1
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert resumed["metrics_flat"] == full["metrics_flat"]


@pytest.mark.parametrize("name", ["default", "triplet", "arcface", "category_balance", "small_images"])
def test_every_shipped_config_runs(name, dataset, tmp_path):
    raw = read_config(name).raw
    extra: dict = {"limit_train_batches": 2}
    if raw.get("sampler"):
        sampler_args = raw["sampler"].get("args", {})
        if "n_categories" in sampler_args:
            extra["sampler.args.n_categories"] = 2
        extra["sampler.args.n_labels"] = 2 if "n_categories" in sampler_args else 4
        extra["sampler.args.n_instances"] = 2
    if raw.get("scheduler"):
        extra["scheduler"] = "null"
    result = train(name, tiny(dataset, tmp_path, **extra))
    assert (Path(result["run_dir"]) / "checkpoints" / "last.ckpt").is_file()
    assert "OVERALL/cmc/1" in result["metrics_flat"]


def test_bad_configs_exit_non_zero_with_one_message(dataset, tmp_path, capsys):
    def run(*args: str) -> str:
        assert commands.main(list(args)) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    cfg = tmp_path / "c.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        dataset_root: {dataset}
        output_dir: {tmp_path}
        extractor: {{name: small_cnn, args: {{}}}}
        criterion: {{name: triplet_with_miner, args: {{margin: 0.2}}}}
        sampler: {{name: balance, args: {{n_labels: 4, n_instances: 2}}}}
        """))
    assert "seeed: unknown key (did you mean 'seed'?)" in run("train", str(cfg), "seeed=1")
    assert "extractor.name: unknown extractor 'smal_cnn' (did you mean 'small_cnn'?)" in run(
        "train", str(cfg), "extractor.name=smal_cnn")
    assert "criterion.args.margni: TripletLossWithMiner has no argument 'margni'" in run(
        "train", str(cfg), "criterion.args.margni=0.1")
    assert "max_epochs: expected int, got 'many' (str)" in run("train", str(cfg), "max_epochs=many")
    err = run("train", str(cfg), f"dataset_root={tmp_path / 'nowhere'}")
    assert "nowhere" in err and "does not exist" in err
    assert "n_labels=400" in run("train", str(cfg), "sampler.args.n_labels=400")
    err = run("validate", str(cfg), f"checkpoint={tmp_path / 'missing.ckpt'}")
    assert "missing.ckpt" in err and "not found" in err


def test_resume_without_a_last_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(LookalikeError, match="no checkpoints/last.ckpt"):
        train(None, [], resume=tmp_path / "run")


def test_training_refuses_to_overwrite_a_run(trained):
    run = Path(trained["run_dir"])
    with pytest.raises(ConfigError, match="already holds a run"):
        train(run / "config.yaml", [f"output_dir={run.parent}", f"run_name={run.name}"])


DDP_SCRIPT = """
import json, sys
from lookalike.pipelines import validate
result = validate(sys.argv[1], sys.argv[2:])
if result["output_dir"] is not None:
    print("METRICS " + json.dumps(result["metrics_flat"], sort_keys=True), flush=True)
"""


def test_ddp_validation_on_two_cpu_processes_equals_one_process(trained, tmp_path):
    ckpt = trained["best_checkpoint"]
    common = [f"checkpoint={ckpt}", "accelerator=cpu", f"output_dir={tmp_path}", "bs_val=7"]
    single = validate(trained["run_dir"], common + ["run_name=single"])
    script = tmp_path / "ddp_validate.py"
    script.write_text(DDP_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(trained["run_dir"]), *common, "run_name=ddp", "devices=2",
         "strategy=ddp"],
        capture_output=True, text=True, timeout=240, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line[len("METRICS "):]) for line in proc.stdout.splitlines() if line.startswith("METRICS ")]
    assert len(lines) == 2, proc.stdout[-2000:]  # both ranks hold the gathered metrics
    for metrics in lines:
        assert metrics == pytest.approx(single["metrics_flat"])



DDP_TRAIN_SCRIPT = """
import json, os, sys
from lookalike.pipelines import train
for i, (name, overrides) in enumerate(json.loads(sys.argv[1])):
    os.environ["MASTER_PORT"] = str(int(sys.argv[2]) + i)  # a fresh rendezvous per run
    train(name, overrides)
    print("TRAINED " + name, flush=True)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(rank: int, port: int) -> dict:
    """The environment torchrun gives rank ``rank`` of 2 on one machine (this checkout first on the path)."""
    return dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                LOCAL_RANK=str(rank), NODE_RANK="0", PYTHONPATH=os.pathsep.join(sys.path))


def run_two_processes(args: list[str], port: int, timeout: int, env_for=torchrun_env) -> list[str]:
    """Starts ``python *args`` as 2 processes (environments from ``env_for(rank, port)``), waits, checks that both
    exit 0 and returns their standard outputs."""
    procs = [subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env_for(rank, port)) for rank in range(2)]
    outputs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    return [out for out, _ in outputs]


SHIPPED = ["default", "triplet", "arcface", "category_balance", "small_images"]


def _ddp_overrides(name: str, dataset: Path, out: Path, run_name: str) -> tuple[list[str], dict]:
    """Tiny overrides of a shipped config for DDP (per rank: 1 batch per epoch, 2 epochs: with
    freeze_backbone_epochs: 1 a frozen step, then an unfrozen one) and the reference's extra overrides."""
    raw = read_config(name).raw
    extra = {"max_epochs": 2, "limit_train_batches": 1, "log_images": "false", "validate_before_training": "false",
             "transforms_train": "{name: val, args: {}}",  # deterministic: ranks seed augmentations differently
             "run_name": run_name}
    reference = {"accumulate_grad_batches": 2, "limit_train_batches": 2}  # 1 step per epoch: 2 x 1 rank batch
    if raw.get("sampler"):
        sampler_args = raw["sampler"].get("args", {})
        if "n_categories" in sampler_args:
            extra["sampler.args.n_categories"] = 2
        extra["sampler.args.n_labels"] = 2
        extra["sampler.args.n_instances"] = 2
    else:
        extra["bs_train"] = 8
        reference["sampler"] = "{name: 'tests.pipelines.ddp_reference:RankInterleaved', args: {batch_size: 8}}"
    return tiny(dataset, out, **extra), reference


def test_ddp_training_on_two_cpu_processes_equals_one_process_on_the_same_global_batches(dataset, tmp_path):
    """Every shipped config (at tiny sizes; triplet keeps its freeze_backbone_epochs: 1) trains on 2 gloo ranks
    to the parameters one process reaches on the same global batches with accumulate_grad_batches: 2."""
    cases = [(name, _ddp_overrides(name, dataset, tmp_path, f"ddp_{name}")[0] + ["devices=2", "strategy=ddp"])
             for name in SHIPPED]
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_TRAIN_SCRIPT)
    port = _free_port()
    for out in run_two_processes([str(script), json.dumps(cases), str(port + 1)], port, timeout=900):
        assert out.count("TRAINED ") == len(SHIPPED), out[-2000:]
    for name in SHIPPED:
        overrides, reference = _ddp_overrides(name, dataset, tmp_path, f"one_{name}")
        single = train(name, overrides + [f"{k}={v}" for k, v in reference.items()])
        ddp = torch.load(tmp_path / f"ddp_{name}" / "checkpoints" / "last.ckpt", weights_only=True)
        one = torch.load(single["last_checkpoint"], weights_only=True)
        assert ddp["epoch"] == one["epoch"] == 1 and ddp["global_step"] == one["global_step"]
        buffers = ("running_mean", "running_var", "num_batches_tracked")
        params = [k for k in one["state_dict"] if not k.endswith(buffers)]
        # BatchNorm running statistics differ by design (each rank updates its own, rank 0's are saved)
        for key in params:
            a, b = ddp["state_dict"][key], one["state_dict"][key]
            # float sums in another order (all-reduce vs accumulation): measured up to 2.1e-5 on weights ~0.05
            # (small_images, lr 3e-3), far below one Adam step (~lr)
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (name, key, (a - b).abs().max())
        assert (tmp_path / f"ddp_{name}" / "checkpoints" / "best.ckpt").is_file(), name


def test_time_budget_stops_training_and_still_validates(dataset, tmp_path):
    result = train(TRIPLET, tiny(dataset, tmp_path, max_epochs=10_000, max_minutes=0.01))  # 0.6 s
    epoch = torch.load(result["last_checkpoint"], weights_only=True)["epoch"]
    assert 0 <= epoch < 10_000 - 1
    assert "OVERALL/cmc/1" in result["metrics_flat"]
    history = json.loads((Path(result["run_dir"]) / "history.json").read_text())
    spent = max(entry.get("train_seconds", 0.0) for entry in history.values())
    assert 0.6 <= spent < 0.6 + 10  # the budget, plus at most the step that crossed it


def test_validate_with_a_postprocessor_and_its_bad_arguments(trained, tmp_path):
    common = ["progress_bar=false", "accelerator=cpu", f"output_dir={tmp_path}"]
    plain = validate(trained["run_dir"], common + ["run_name=plain"])
    expanded = validate(trained["run_dir"], common + ["run_name=qe",
                                                      "postprocessor={name: query_expansion, args: {top_n: 8}}"])
    assert expanded["metrics"]["OVERALL"]["n_queries"] == plain["metrics"]["OVERALL"]["n_queries"]
    assert 0.0 <= expanded["metrics_flat"]["OVERALL/cmc/1"] <= 1.0
    with pytest.raises(ConfigError, match="postprocessor.args.top: QueryExpansion has no argument 'top'"):
        validate(trained["run_dir"], common + ["postprocessor={name: query_expansion, args: {top: 8}}"])


def test_metric_args_batch_keys_reach_the_metrics(trained, tmp_path):
    """metric_args.categories_key is the batch key the metrics read: null turns the per-category rows off."""
    common = ["progress_bar=false", "accelerator=cpu", f"output_dir={tmp_path}"]
    with_categories = validate(trained["run_dir"], common + ["run_name=cats"])
    assert {"OVERALL", "warm", "cold"} <= set(with_categories["metrics"])
    without = validate(trained["run_dir"], common + ["run_name=nocats", "metric_args.categories_key=null"])
    assert set(without["metrics"]) == {"OVERALL"}
    assert without["metrics_flat"]["OVERALL/cmc/1"] == pytest.approx(with_categories["metrics_flat"]["OVERALL/cmc/1"])


def test_freeze_layers_keep_their_weights_and_batchnorm_statistics(dataset, tmp_path):
    from lookalike.models import SmallCNNExtractor, load_weights, save_weights

    torch.manual_seed(0)
    init = tmp_path / "init.ckpt"
    save_weights(SmallCNNExtractor(), init)
    before = load_weights(init)
    result = train(TRIPLET, tiny(dataset, tmp_path, max_epochs=2, checkpoint=str(init),
                                 freeze_layers="[backbone.0]"))
    after = load_weights(result["last_checkpoint"], prefix="extractor.")
    frozen = [k for k in before if k.startswith("backbone.0.")]
    assert any("running_mean" in k for k in frozen) and any(k.endswith("weight") for k in frozen)
    assert all(torch.equal(before[k], after[k]) for k in frozen)  # weights and BN statistics untouched
    trained_rest = [k for k in before if k.startswith("backbone.1.") and k.endswith("weight")]
    assert trained_rest and not all(torch.equal(before[k], after[k]) for k in trained_rest)
    with pytest.raises(ConfigError, match=r"'backbone\.9' is not a module.*backbone\.0, backbone\.1"):
        train(TRIPLET, tiny(dataset, tmp_path, freeze_layers="[backbone.9]", run_name="bad"))
    with pytest.raises(ConfigError, match="nothing would train"):
        train(TRIPLET, tiny(dataset, tmp_path, freeze_layers="[backbone, head]", run_name="bad2"))


def test_holdout_labels_stay_out_of_training_and_are_recorded(dataset, tmp_path):
    from tests.pipelines.conftest import N_TRAIN_LABELS

    arcface = {**TRIPLET, "sampler": None, "criterion": {"name": "arcface", "args": {}}}
    result = train(arcface, tiny(dataset, tmp_path, holdout_labels=0.25, run_name="ho"))
    recorded = json.loads((Path(result["run_dir"]) / "holdout_labels.json").read_text())
    assert recorded["fraction"] == 0.25 and len(recorded["labels"]) == round(0.25 * N_TRAIN_LABELS)
    state = torch.load(result["last_checkpoint"], weights_only=True)["state_dict"]
    trained_ids = state["criterion.label_ids"].tolist()  # the labels ArcFace has a class centre for
    assert len(trained_ids) == N_TRAIN_LABELS - len(recorded["labels"])
    assert not set(trained_ids) & set(recorded["labels"])


def test_mixstyle_trains_and_leaves_validation_alone(dataset, tmp_path):
    """MixStyle acts in training only: it changes the training (the losses differ from the same run without it),
    and a validation of its checkpoint (without the hooks) reproduces the metrics the run recorded with them."""
    # a validation before training is a stage of its own: MixStyle must still act in the fit after it
    result = train(TRIPLET, tiny(dataset, tmp_path, max_epochs=2, mixstyle_layers="[backbone.0, backbone.1]",
                                 mixstyle_p=1.0, run_name="mix", validate_before_training="true"))
    plain = train(TRIPLET, tiny(dataset, tmp_path, max_epochs=2, run_name="plain", validate_before_training="true"))
    run = Path(result["run_dir"])
    losses = [json.loads((Path(r["run_dir"]) / "history.json").read_text())["1"]["train"]["loss"]
              for r in (result, plain)]
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)
    again = validate(run, ["progress_bar=false", "accelerator=cpu", f"output_dir={tmp_path}", "run_name=v"])
    best_epoch = torch.load(result["best_checkpoint"], weights_only=True)["epoch"] + 1
    recorded = json.loads((run / "metrics" / f"epoch_{best_epoch:03d}.json").read_text())["metrics"]
    assert again["metrics"]["OVERALL"]["cmc"][1] == pytest.approx(float(recorded["OVERALL"]["cmc"]["1"]))
    with pytest.raises(ConfigError, match=r"mixstyle_layers: 'backbone\.7' is not a module.*backbone\.0, backbone\.1"):
        train(TRIPLET, tiny(dataset, tmp_path, mixstyle_layers="[backbone.7]", run_name="bad"))
    for inside_or_around in ("backbone.0", "backbone.0.3", "backbone"):
        with pytest.raises(ConfigError, match="with cache_frozen_trunk the frozen layers run once"):
            train(TRIPLET, tiny(dataset, tmp_path, mixstyle_layers=f"[{inside_or_around}]",
                                freeze_layers="[backbone.0]", cache_frozen_trunk="true", run_name="bad2",
                                transforms_train="{name: train, args: {hflip: 0.0, jitter: 0.0}}"))


def test_embed_from_trains_through_the_projection_and_serves_the_earlier_stage(tmp_path):
    """With extractor.args.embed_from, ArcFace is sized by and trained on the head's 64-d output, while the
    validation, the checkpointing metric and predict use the 32-d stage output, which training clearly improves
    (the built-in emoji data, validation labels never trained on)."""
    result = train(None, [
        "extractor={name: small_cnn, args: {channels: [16, 32, 64], embedding_dim: 64, embed_from: backbone.1}}",
        "image_size=32", "max_epochs=10", "valid_period=100", "optimizer.args.lr=3e-3", "progress_bar=false",
        "logger=null", "log_images=false", f"output_dir={tmp_path}", "accelerator=cpu",
    ])
    state = torch.load(result["last_checkpoint"], weights_only=True)["state_dict"]
    assert state["criterion.weight"].shape[1] == 64  # the head's size, not the embedding's
    before = result["initial_metrics"]["OVERALL"]["cmc"][1]
    after = result["metrics"]["OVERALL"]["cmc"][1]
    assert after >= before + 0.1, (before, after)
    out = predict(result["run_dir"], ["accelerator=cpu", f"output_dir={tmp_path}", "run_name=p"])
    assert np.load(out / "embeddings.npy").shape[1] == 32  # the second stage's channels


def test_arcface_margin_warm_up_follows_the_steps_of_a_run(dataset, tmp_path, monkeypatch):
    """The training step hands ArcFace the fractional epoch: with 3 batches an epoch and a ramp from 0.2 to 0.6
    over epochs 0-2, the margins in force are 0.2, 0.267, 0.333 then 0.4, 0.467, 0.533 (logged as epoch means)."""
    arcface = {**TRIPLET, "sampler": None,
               "criterion": {"name": "arcface", "args": {"m": 0.6, "m_start": 0.2, "m_ramp": [0, 2]}}}
    result = train(arcface, tiny(dataset, tmp_path, max_epochs=2, bs_train=16, run_name="ramp"))
    history = json.loads((Path(result["run_dir"]) / "history.json").read_text())
    margins = [history[str(epoch)]["train"]["train/margin"] for epoch in (1, 2)]  # history counts from 1
    assert margins == pytest.approx([0.8 / 3, 1.4 / 3], abs=1e-6)
    # killed in the second epoch and resumed: the ramp picks up where the run stopped
    killed_in_second_epoch(monkeypatch, lambda: train(arcface, tiny(dataset, tmp_path, max_epochs=2, bs_train=16,
                                                                     run_name="killed")))
    resumed = train(None, [], resume=tmp_path / "killed")
    history = json.loads((Path(resumed["run_dir"]) / "history.json").read_text())
    assert history["2"]["train"]["train/margin"] == pytest.approx(1.4 / 3, abs=1e-6)
