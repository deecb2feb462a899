"""Lightning pieces of the pipelines: the module (extractor + criterion, validated with ``EmbeddingMetrics``) and
the data module (P x K batches per rank, each epoch seeded so that a resumed run equals an uninterrupted one).
The callbacks are in ``callbacks.py``, the checkpoint writer in ``checkpoint_io.py``.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Mapping, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lookalike.data import schema
from lookalike.pipelines.report import flatten_metrics

__all__ = [
    "finish_distributed",
    "ExtractorModule",
    "MetricLearningData",
    "EpochLoader",
    "epoch_seed",
]


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


def named_submodules(extractor: torch.nn.Module, names: Sequence[str], key: str = "freeze_layers"
                     ) -> list[torch.nn.Module]:
    """The extractor's submodules named by ``names`` (config ``key``: ``freeze_layers``, ``mixstyle_layers``; e.g.
    ``backbone.net.blocks.0``); ConfigError for a name that is not a module, listing the modules at that level."""
    from lookalike.errors import ConfigError

    named = dict(extractor.named_modules())
    for name in names:
        if not name or name not in named:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            parent = parent if parent in named else ""
            level = [n for n in named if n and (n.rsplit(".", 1)[0] if "." in n else "") == parent]
            raise ConfigError(f"{key}: {name!r} is not a module of the extractor; modules "
                              f"{'in ' + repr(parent) if parent else 'at the top'}: {', '.join(level[:16])}"
                              f"{' ...' if len(level) > 16 else ''}.")
    return [named[name] for name in names]


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
        freeze_layers: Sequence[str] = (),
        backbone: torch.nn.Module | None = None,
        backbone_lr: float | None = None,
        main_metric: str = "OVERALL/cmc/1",
        channels_last: bool = False,
        trunk_cache: Any = None,
        mixstyle: Any = None,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        if channels_last:  # NHWC: faster convolutions on CPUs (oneDNN) and on GPUs with mixed precision
            extractor = extractor.to(memory_format=torch.channels_last)
        self.extractor = extractor
        self.criterion = criterion
        self._metrics = [metrics]  # a list keeps it out of the module tree (and out of checkpoints)
        # `cache_frozen_trunk`: training batches carry row positions, embedded from cached trunk maps (its modules
        # are the extractor's: kept out of the module tree too)
        self._trunk_cache = [trunk_cache]
        # (MixStyle, layer names): a parameterless submodule, so it follows this module's train / eval switching
        self.mixstyle = None
        if mixstyle is not None:
            from lookalike.models.mixstyle import attach_mixstyle

            self.mixstyle, layers = mixstyle
            self._mixstyle_hooks = attach_mixstyle(named_submodules(extractor, layers, "mixstyle_layers"),
                                                   self.mixstyle)
        self.optimizer_factory = optimizer_factory
        self.scheduler_factory = scheduler_factory
        self.freeze_backbone_epochs = int(freeze_backbone_epochs)
        self.frozen_modules = named_submodules(extractor, freeze_layers)
        for module in self.frozen_modules:  # before any DDP wrapping: DDP then never expects their gradients
            module.requires_grad_(False)
        self._backbone = [backbone if backbone is not None else extractor]
        self.backbone_lr = backbone_lr
        self.main_metric = main_metric
        self.last_results: dict | None = None
        self.last_flat: dict[str, float] = {}
        self.validated_epoch: int | None = None

    def teardown(self, stage: str) -> None:
        """Removes the MixStyle hooks after the fit (the extractor outlives it and may be reused); not after the
        validation that may precede the fit, which is another stage of the same module."""
        if stage != "fit":
            return
        for handle in getattr(self, "_mixstyle_hooks", ()):
            handle.remove()
        self._mixstyle_hooks = []

    @property
    def metrics(self):
        return self._metrics[0]

    def forward(self, images: Any) -> torch.Tensor:
        """Extractor output of a batch input: an image tensor, or a text batch dict (input_ids, attention_mask)."""
        return self.extractor(self._layout(images))

    def training_features(self, images: Any) -> torch.Tensor:
        """What the loss sees: the extractor's `training_features` where it has them (its head's output under
        `embed_from`), else its embeddings."""
        extract = getattr(self.extractor, "training_features", self.extractor)
        return extract(self._layout(images))

    def _layout(self, images: Any) -> Any:
        if self.channels_last and isinstance(images, torch.Tensor) and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    # --- training ---------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.extractor.parameters()]
        if self.criterion is not None:
            params += [p for p in self.criterion.parameters()]
        if self.backbone_lr is not None:  # two groups: the (pretrained) backbone at its own lr, the rest the optimizer's
            in_backbone = {id(p) for p in self._backbone[0].parameters()}
            groups = [{"params": [p for p in params if id(p) in in_backbone], "lr": float(self.backbone_lr)},
                      {"params": [p for p in params if id(p) not in in_backbone]}]
            params = [group for group in groups if group["params"]]
        optimizer = self.optimizer_factory(params)
        scheduler = self.scheduler_factory(optimizer) if self.scheduler_factory else None
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _apply_freeze(self) -> None:
        """Freezes the backbone during the first ``freeze_backbone_epochs`` epochs, and the ``freeze_layers``
        always (weights and BN statistics)."""
        if self.freeze_backbone_epochs > 0:
            frozen = self.current_epoch < self.freeze_backbone_epochs
            backbone = self._backbone[0]
            for p in backbone.parameters():
                p.requires_grad_(not frozen)
            backbone.train(not frozen)
        for module in self.frozen_modules:
            module.requires_grad_(False)
            module.eval()

    def on_train_epoch_start(self) -> None:
        self._apply_freeze()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:  # Lightning skips on_train_epoch_start on the first epoch of a resumed run
            self._apply_freeze()

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        cache = self._trunk_cache[0]
        inputs = batch[schema.INPUT_KEY]
        features = self.training_features(inputs) if cache is None else cache.features(inputs, self.device)
        labels = batch[schema.LABEL_KEY]
        self._report_progress(batch_idx)
        with torch.autocast(device_type=features.device.type, enabled=False):
            loss = self.criterion(features.float(), labels)
        n = len(labels)
        # several ranks: the logged values are means over all ranks' batches, as one process would log them
        sync = self.trainer.world_size > 1 if self._trainer is not None else False
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=n, sync_dist=sync)
        for key, value in (getattr(self.criterion, "last_logs", None) or {}).items():
            if key != "loss" and isinstance(value, (int, float)):
                self.log(f"train/{key}", float(value), on_step=False, on_epoch=True, batch_size=n, sync_dist=sync)
        optimizer = self.optimizers(use_pl_optimizer=False)
        # "lr" is the optimizer's own rate (the last group: the head and criterion when backbone_lr splits groups)
        self.log("lr", float(optimizer.param_groups[-1]["lr"]), on_step=True, on_epoch=False, batch_size=n)
        if len(optimizer.param_groups) > 1:
            self.log("lr_backbone", float(optimizer.param_groups[0]["lr"]), on_step=True, on_epoch=False,
                     batch_size=n)
        return loss

    def _report_progress(self, batch_idx: int) -> None:
        """The criterion's `set_epoch` (if it has one) gets the fractional epoch: schedules inside a loss
        (ArcFace's margin warm-up) follow the steps, and a resumed run restarts them where it stopped."""
        set_epoch = getattr(self.criterion, "set_epoch", None)
        if not callable(set_epoch):
            return
        batches = self.trainer.num_training_batches if self._trainer is not None else float("inf")
        fraction = batch_idx / batches if math.isfinite(batches) and batches > 0 else 0.0
        set_epoch(self.current_epoch + fraction)

    # --- validation ---------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.metrics.reset()
        self._same_buffers_on_all_ranks()

    def _same_buffers_on_all_ranks(self) -> None:
        """Rank 0's buffers (BatchNorm running statistics, which each DDP rank updates from its own batches) on
        every rank, so that all ranks validate the model rank 0 saves in its checkpoints."""
        if self._trainer is None or self.trainer.world_size <= 1:
            return
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            for buffer in self.extractor.buffers():
                dist.broadcast(buffer, src=0)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        embeddings = self(batch[schema.INPUT_KEY]).float()
        # the metrics read the batch keys they are configured with (metric_args categories_key, sequences_key, ...)
        self.metrics.update_from_batch(embeddings.detach(), batch)

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

    def _loader_kwargs(self, dataset: Any = None) -> dict:
        """DataLoader arguments; a dataset with its own ``collate_fn`` (texts: padding per batch) brings it."""
        return {"num_workers": self.num_workers, "persistent_workers": False,
                "pin_memory": torch.cuda.is_available(), "collate_fn": getattr(dataset, "collate_fn", None)}

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        batch_sampler = self.sampler_factory(rank, world) if self.sampler_factory else None
        kwargs = self._loader_kwargs(self.train_dataset)
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
                          **self._loader_kwargs(self.val_dataset))

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
