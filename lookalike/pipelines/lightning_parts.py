"""Lightning pieces of the pipelines: the module (extractor + criterion), the data module (P x K batches per
rank), the per-epoch seeding callback that makes a resumed run equal an uninterrupted one, the run recorder
(metrics JSON, history, worst-query pictures) and an atomic checkpoint writer.
"""

from __future__ import annotations

import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lookalike.data import schema
from lookalike.io import atomic_path, write_json_atomic

__all__ = [
    "finish_distributed",
    "ExtractorModule",
    "MetricLearningData",
    "EpochLoader",
    "RunRecorder",
    "TrainingClock",
    "AtomicCheckpointIO",
    "flatten_metrics",
    "epoch_seed",
]


def flatten_metrics(results: Mapping, prefix: str = "") -> dict[str, float]:
    """``{"OVERALL": {"cmc": {1: 0.5}}}`` -> ``{"OVERALL/cmc/1": 0.5}`` (tensors and numpy scalars as floats)."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, name))
        else:
            try:
                flat[name] = float(value)
            except (TypeError, ValueError):
                continue  # non-numeric extras (e.g. lists) are kept in the JSON only
    return flat


def finish_distributed(trainer: pl.Trainer, value: Any) -> Any:
    """Rank 0's ``value`` on every rank, then the process group is closed so that later single-process work in
    the same Python process (or another pipeline call) does not talk to finished ranks."""
    import torch.distributed as dist

    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        value = trainer.strategy.broadcast(value, src=0)
        trainer.strategy.barrier()
        dist.destroy_process_group()
    return value


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of the random augmentations of one epoch on one rank: a pure function of (seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def _first_param(module: torch.nn.Module) -> torch.nn.Parameter | None:
    return next(iter(module.parameters()), None)


class ExtractorModule(pl.LightningModule):
    """Trains ``extractor`` with ``criterion(features, labels)`` and validates it with ``EmbeddingMetrics``.

    ``optimizer_factory(params)`` and ``scheduler_factory(optimizer)`` build the optimizer (over extractor and
    criterion parameters, e.g. an ArcFace head) and the optional Lightning scheduler dict.
    """

    def __init__(
        self,
        extractor: torch.nn.Module,
        criterion: torch.nn.Module | None = None,
        *,
        metrics: Any = None,
        optimizer_factory: Callable | None = None,
        scheduler_factory: Callable | None = None,
        freeze_backbone_epochs: int = 0,
        backbone: torch.nn.Module | None = None,
        main_metric: str = "OVERALL/cmc/1",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        if channels_last:  # NHWC: faster convolutions on CPUs (oneDNN) and on GPUs with mixed precision
            extractor = extractor.to(memory_format=torch.channels_last)
        self.extractor = extractor
        self.criterion = criterion
        self._metrics = [metrics]  # a list keeps it out of the module tree (and out of checkpoints)
        self.optimizer_factory = optimizer_factory
        self.scheduler_factory = scheduler_factory
        self.freeze_backbone_epochs = int(freeze_backbone_epochs)
        self._backbone = [backbone if backbone is not None else extractor]
        self.main_metric = main_metric
        self.last_results: dict | None = None
        self.last_flat: dict[str, float] = {}
        self.validated_epoch: int | None = None

    @property
    def metrics(self):
        return self._metrics[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(self._layout(images))

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    # --- training ---------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.extractor.parameters()]
        if self.criterion is not None:
            params += [p for p in self.criterion.parameters()]
        optimizer = self.optimizer_factory(params)
        scheduler = self.scheduler_factory(optimizer) if self.scheduler_factory else None
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _apply_freeze(self) -> None:
        """Freezes the backbone during the first ``freeze_backbone_epochs`` epochs (weights and BN statistics)."""
        if self.freeze_backbone_epochs <= 0:
            return
        frozen = self.current_epoch < self.freeze_backbone_epochs
        backbone = self._backbone[0]
        for p in backbone.parameters():
            p.requires_grad_(not frozen)
        backbone.train(not frozen)

    def on_train_epoch_start(self) -> None:
        self._apply_freeze()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:  # Lightning skips on_train_epoch_start on the first epoch of a resumed run
            self._apply_freeze()

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        features = self(batch[schema.INPUT_KEY])
        labels = batch[schema.LABEL_KEY]
        with torch.autocast(device_type=features.device.type, enabled=False):
            loss = self.criterion(features.float(), labels)
        n = len(labels)
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n)
        for key, value in (getattr(self.criterion, "last_logs", None) or {}).items():
            if key != "loss" and isinstance(value, (int, float)):
                self.log(f"train/{key}", float(value), on_step=False, on_epoch=True, batch_size=n)
        optimizer = self.optimizers(use_pl_optimizer=False)
        self.log("lr", float(optimizer.param_groups[0]["lr"]), on_step=True, on_epoch=False, batch_size=n)
        return loss

    # --- validation ---------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.metrics.reset()

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        embeddings = self(batch[schema.INPUT_KEY]).float()
        self.metrics.update(
            embeddings=embeddings.detach(),
            labels=batch[schema.LABEL_KEY],
            is_query=batch[schema.IS_QUERY_KEY],
            is_gallery=batch[schema.IS_GALLERY_KEY],
            indices=batch[schema.INDEX_KEY],
            categories=batch.get(schema.CATEGORY_KEY),
            sequences=batch.get(schema.SEQUENCE_KEY),
            paths=batch.get(schema.PATH_KEY),
        )

    def on_validation_epoch_end(self) -> None:
        results = self.metrics.compute()
        self.last_results = results
        self.last_flat = flatten_metrics(results)
        self.validated_epoch = self.current_epoch
        for key, value in self.last_flat.items():
            # every rank holds the same gathered values: no sync needed
            self.log(key, value, prog_bar=key == self.main_metric, on_step=False, on_epoch=True)


class MetricLearningData(pl.LightningDataModule):
    """Train / validation loaders; the batch sampler is built per rank (distinct P x K batches per rank)."""

    def __init__(
        self,
        train_dataset: Dataset | None,
        val_dataset: Dataset | None,
        *,
        sampler_factory: Callable[[int, int], Any] | None = None,
        bs_train: int = 64,
        bs_val: int = 128,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.sampler_factory = sampler_factory
        self.bs_train = bs_train
        self.bs_val = bs_val
        self.num_workers = num_workers
        self.seed = seed
        self.epoch_sampler: Any = None

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader_kwargs(self) -> dict:
        return {"num_workers": self.num_workers, "persistent_workers": False,
                "pin_memory": torch.cuda.is_available()}

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        batch_sampler = self.sampler_factory(rank, world) if self.sampler_factory else None
        kwargs = self._loader_kwargs()
        kwargs["generator"] = torch.Generator()
        if batch_sampler is not None:
            self.epoch_sampler = batch_sampler
            return EpochLoader(self._start_epoch, self.train_dataset, batch_sampler=batch_sampler, **kwargs)
        # plain shuffled batches: the order is a pure function of (seed, epoch) on every rank
        sampler = DistributedSampler(self.train_dataset, num_replicas=world, rank=rank, shuffle=True,
                                     seed=self.seed, drop_last=True)
        self.epoch_sampler = sampler
        drop_last = len(sampler) >= self.bs_train
        return EpochLoader(self._start_epoch, self.train_dataset, batch_size=self.bs_train, sampler=sampler,
                           drop_last=drop_last, **kwargs)

    def _start_epoch(self, loader: DataLoader) -> None:
        """Seeds the RNGs, the loader's generator and the sampler from (seed, epoch, rank) before each epoch.

        Every epoch is then a pure function of the weights and optimizer state at its start, so a run resumed
        from its last checkpoint continues exactly as an uninterrupted one. (Runs when the epoch's iterator is
        created, which also happens on resume, unlike Lightning's on_train_epoch_start.)
        """
        trainer = getattr(self, "trainer", None)
        # the count of processed epochs, as Lightning gives samplers: unlike current_epoch, it is already right
        # when a run resumed from an end-of-epoch checkpoint creates its first iterator
        epoch = trainer.fit_loop.epoch_progress.current.processed if trainer is not None else 0
        rank = trainer.global_rank if trainer is not None else 0
        s = epoch_seed(self.seed, epoch, rank)
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)
        if loader.generator is not None:
            loader.generator.manual_seed(s)
        self.set_epoch(epoch)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        # shards may repeat a few items to equal length; EmbeddingMetrics de-duplicates by index
        sampler = DistributedSampler(self.val_dataset, num_replicas=world, rank=rank, shuffle=False) \
            if world > 1 else None
        return DataLoader(self.val_dataset, batch_size=self.bs_val, sampler=sampler, shuffle=False,
                          **self._loader_kwargs())

    def set_epoch(self, epoch: int) -> None:
        if self.epoch_sampler is not None and hasattr(self.epoch_sampler, "set_epoch"):
            self.epoch_sampler.set_epoch(epoch)


class EpochLoader(DataLoader):
    """A DataLoader that calls ``on_iter(self)`` each time an epoch's iterator is created."""

    def __init__(self, on_iter: Callable[[DataLoader], None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_iter = on_iter

    def __iter__(self):
        self.on_iter(self)
        return super().__iter__()


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


class RunRecorder(pl.Callback):
    """Rank zero writes the metrics JSON of every validation, the per-epoch history, and worst-query pictures."""

    def __init__(self, run_dir: Path, *, log_images: bool = False, n_worst_queries: int = 6,
                 image_saver: Callable | None = None, clock: TrainingClock | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.log_images = log_images
        self.n_worst_queries = n_worst_queries
        self.image_saver = image_saver
        self.clock = clock
        self.tag: str | None = None  # set by the pipeline for validations outside fit ("initial", "final")
        self.history_path = self.run_dir / "history.json"
        self.history: dict[str, dict] = {}

    def load_history(self, before_epoch: int | None) -> None:
        """Resume: keep the recorded epochs before ``before_epoch`` (a killed run may have written later ones)."""
        import json

        if self.history_path.is_file():
            data = json.loads(self.history_path.read_text())
            self.history = {k: v for k, v in data.items()
                            if before_epoch is None or not k.isdigit() or int(k) < before_epoch}

    def _entry(self, key: str) -> dict:
        return self.history.setdefault(key, {})

    def _write_history(self) -> None:
        ordered = dict(sorted(self.history.items(), key=lambda kv: (not kv[0].isdigit(), kv[0].zfill(9))))
        write_json_atomic(self.history_path, ordered)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: ExtractorModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or pl_module.last_results is None:
            return
        key = self.tag or str(trainer.current_epoch)
        stem = key if not key.isdigit() else f"epoch_{int(key):03d}"
        payload = {"epoch": key, "global_step": trainer.global_step, "metrics": pl_module.last_results}
        write_json_atomic(self.run_dir / "metrics" / f"{stem}.json", payload)
        write_json_atomic(self.run_dir / "metrics.json", payload)
        self._entry(key)["val"] = pl_module.last_flat
        if self.clock is not None:
            self._entry(key)["train_seconds"] = round(self.clock.seconds, 3)
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
        self._entry(str(trainer.current_epoch))["train"] = train
        self._write_history()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, then renames it into place."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any | None = None) -> None:
        path = Path(path)
        with atomic_path(path, suffix=".ckpt.tmp") as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)

    def remove_checkpoint(self, path) -> None:
        if os.path.exists(path):
            os.remove(path)
