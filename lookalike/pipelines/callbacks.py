"""Lightning callbacks of the training pipeline: the training-time clock (time budget, time-to-accuracy) and the
run recorder (metrics JSON of every validation, per-epoch history, worst-query pictures)."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl

from lookalike.io import write_json_atomic

__all__ = ["TrainingClock", "ValidationSchedule", "RunRecorder"]


class TrainingClock(pl.Callback):
    """Counts training time (data, forward, backward, optimizer; not validation) across resumes, and stops
    training inside an epoch once ``budget_minutes`` are spent. Time-to-accuracy curves use ``seconds``."""

    def __init__(self, budget_minutes: float | None = None) -> None:
        self.budget_s = None if budget_minutes is None else 60.0 * budget_minutes
        self.seconds = 0.0
        self._since: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._since = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._since is None:  # the first batch of a resumed epoch, or the first after a validation
            self._since = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        self.seconds += now - self._since
        self._since = now
        if self.budget_s is not None:
            spent = self.seconds >= self.budget_s
            if trainer.world_size > 1:  # every rank stops on rank 0's clock, at the same step
                spent = bool(trainer.strategy.broadcast(spent, src=0))
            trainer.should_stop = trainer.should_stop or spent

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._since = None  # validation time is not training time

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._since = None

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds = float(state_dict.get("seconds", 0.0))


class ValidationSchedule(pl.Callback):
    """Validates inside the fit loop every ``period`` epochs, after the last epoch, and when training stops early
    (the time budget): every validation of a training run then competes for best.ckpt, and a finished run always
    has one. (Lightning reads ``check_val_every_n_epoch`` after each batch's hooks, so it is set there.)"""

    def __init__(self, period: int) -> None:
        self.period = int(period)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        epoch = trainer.current_epoch
        due = (epoch + 1) % self.period == 0 or epoch + 1 >= (trainer.max_epochs or 0) or trainer.should_stop
        trainer.check_val_every_n_epoch = 1 if due else epoch + 2


class RunRecorder(pl.Callback):
    """Rank zero writes the metrics JSON of every validation, the per-epoch history, and worst-query pictures.

    One numbering everywhere: epoch N = after N epochs of training (0 = before training), in file names
    (``metrics/epoch_001.json``), ``history.json`` keys, ``metrics.json``'s ``epoch``, curves and messages."""

    def __init__(self, run_dir: Path, *, log_images: bool = False, n_worst_queries: int = 6,
                 image_saver: Callable | None = None, clock: TrainingClock | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.log_images = log_images
        self.n_worst_queries = n_worst_queries
        self.image_saver = image_saver
        self.clock = clock
        self.epoch: int | None = None  # set by the pipeline for validations outside fit (0: before training)
        self.history_path = self.run_dir / "history.json"
        self.history: dict[str, dict] = {}
        self.last_epoch: int | None = None  # epoch number of the latest recorded validation

    def load_history(self, completed_epochs: int | None) -> None:
        """Resume: keep the records up to ``completed_epochs`` (a killed run may have written later ones)."""
        if self.history_path.is_file():
            data = json.loads(self.history_path.read_text())
            self.history = {k: v for k, v in data.items()
                            if completed_epochs is None or not k.isdigit() or int(k) <= completed_epochs}

    def _entry(self, epoch: int) -> dict:
        return self.history.setdefault(str(epoch), {})

    def _write_history(self) -> None:
        ordered = dict(sorted(self.history.items(), key=lambda kv: (not kv[0].isdigit(), kv[0].zfill(9))))
        write_json_atomic(self.history_path, ordered)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or pl_module.last_results is None:
            return
        epoch = self.epoch if self.epoch is not None else trainer.current_epoch + 1
        stem = f"epoch_{epoch:03d}"
        self.last_epoch = epoch
        payload = {"epoch": epoch, "global_step": trainer.global_step, "metrics": pl_module.last_results}
        write_json_atomic(self.run_dir / "metrics" / f"{stem}.json", payload)
        write_json_atomic(self.run_dir / "metrics.json", payload)
        self._entry(epoch)["val"] = pl_module.last_flat
        if self.clock is not None:
            self._entry(epoch)["train_seconds"] = round(self.clock.seconds, 3)
        self._write_history()
        if self.log_images and self.image_saver is not None:
            try:
                self.image_saver(pl_module, self.run_dir / "images" / f"{stem}.png", trainer)
            except Exception as exc:  # a picture must never kill a training run
                warnings.warn(f"worst-query pictures failed: {type(exc).__name__}: {exc}", stacklevel=1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        train = {}
        for name, value in trainer.callback_metrics.items():
            if name in ("loss_epoch",) or name.startswith("train/"):
                train[name.replace("_epoch", "")] = float(value)
        self._entry(trainer.current_epoch + 1)["train"] = train
        self._write_history()
