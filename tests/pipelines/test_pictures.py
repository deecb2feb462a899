"""Worst-query pictures reach every logger that can hold pictures."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lookalike.pipelines.pictures import per_query_for, send_figure  # noqa: E402


class _MlflowClient:
    def __init__(self) -> None:
        self.logged: list[tuple] = []

    def log_figure(self, run_id, figure, artifact_file) -> None:
        self.logged.append((run_id, artifact_file))


class MLFlowLogger:  # the duck type of lightning's MLFlowLogger
    run_id = "run-1"

    def __init__(self) -> None:
        self.experiment = _MlflowClient()


class WandbLogger:
    def __init__(self) -> None:
        self.images: list[tuple] = []

    def log_image(self, key, images, step=None) -> None:
        self.images.append((key, images, step))


def test_figures_go_to_tensorboard_mlflow_and_wandb(tmp_path: Path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    figure = plt.figure()
    png = tmp_path / "epoch_003.png"
    figure.savefig(png)
    tensorboard = TensorBoardLogger(str(tmp_path / "tb"))
    mlflow, wandb = MLFlowLogger(), WandbLogger()
    send_figure(figure, png, [tensorboard, mlflow, wandb, CSVLogger(str(tmp_path / "csv"))],
                key="worst_queries/cmc@1", step=7, tag="epoch_003")
    tensorboard.experiment.flush()
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events and b"worst_queries/cmc@1" in events[0].read_bytes()
    assert mlflow.experiment.logged == [("run-1", "worst_queries/cmc@1/epoch_003.png")]
    assert wandb.images == [("worst_queries/cmc@1", [str(png)], 7)]
    plt.close(figure)


def test_worst_queries_ranked_by_the_checkpointing_metric():
    per_query = {"cmc": {1: "cmc1", 5: "cmc5"}, "precision": {5: "p5"}}
    assert per_query_for(per_query, "OVERALL/cmc/5") == ("cmc5", "cmc@5")
    assert per_query_for(per_query, "OVERALL/precision/5") == ("p5", "precision@5")
    assert per_query_for(per_query, "OVERALL/map/5") == ("cmc1", "cmc@1")  # not computed: the first metric
