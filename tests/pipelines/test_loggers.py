"""The real MLflow (file store) and W&B (offline) loggers receive a training run's metrics and its picture."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from lookalike.pipelines import train

pytest.importorskip("mlflow")
pytest.importorskip("wandb")

TINY = ["extractor={name: small_cnn, args: {channels: [8, 16], embedding_dim: 16}}", "image_size=24",
        "max_epochs=1", "limit_train_batches=2", "bs_val=256", "progress_bar=false", "accelerator=cpu",
        "precision=32", "num_workers=0", "log_images=true", "n_worst_queries=2"]


def test_mlflow_file_store_gets_metrics_and_the_worst_query_picture(tmp_path):
    result = train(None, TINY + [f"output_dir={tmp_path}", "run_name=mlf", "logger={name: mlflow, args: {}}"])
    store = Path(result["run_dir"]) / "mlruns"  # the default: a file store inside the run folder
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"file:{store}")
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"] or client.search_experiments()
    (run,) = client.search_runs([experiment.experiment_id])
    logged = run.data.metrics
    key = next(k for k in logged if k.endswith("OVERALL/cmc/1"))
    assert logged[key] == pytest.approx(result["metrics_flat"]["OVERALL/cmc/1"], abs=1e-6)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "worst_queries")]
    assert artifacts, "no worst-query picture reached MLflow"
    files = [f.path for d in artifacts for f in client.list_artifacts(run.info.run_id, d)]
    assert any(f.endswith(".png") for f in files)


def test_wandb_offline_run_gets_metrics_and_the_picture(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    result = train(None, TINY + [f"output_dir={tmp_path}", "run_name=wb", "logger={name: wandb, args: {}}"])
    import wandb

    wandb.finish()  # what the end of a process does: the run's summary file is written
    runs = list(Path(result["run_dir"]).rglob("offline-run-*"))
    assert runs, "W&B wrote no offline run"
    # Lightning logs the metric as a float32 tensor: its float64 rendering is what the log holds
    value = json.dumps(float(np.float32(result["metrics_flat"]["OVERALL/cmc/1"]))).encode()
    for _ in range(60):  # the run's record log (what `wandb sync` uploads) is written by wandb's service process
        log = next(runs[0].glob("run-*.wandb")).read_bytes()
        if value in log:
            break
        time.sleep(0.5)
    assert b"OVERALL/cmc/1" in log and value in log
    assert list(runs[0].rglob("worst_queries/*.png")), "no worst-query picture in the W&B run"
