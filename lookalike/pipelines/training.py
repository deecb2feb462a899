"""The training pipeline: config -> data, extractor, criterion, optimizer -> Lightning fit with periodic
validation, best / last checkpoints, metrics JSON, curves; resumable from the last checkpoint."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

from lookalike.errors import ConfigError
from lookalike.pipelines.config import load_config
from lookalike.pipelines.runs import RUN_DIR_ENV, launched_rank, new_run_dir, resume_target, save_config
from lookalike.pipelines.trainer import quiet_lightning, trainer_kwargs

__all__ = ["train"]


def _image_saver(cfg: Mapping, val_dataset):
    """Saves the worst-query picture of the last validation (drawn by lookalike.viz)."""

    def save(module, path: Path, trainer) -> None:
        from lookalike.pipelines.pictures import save_worst_queries

        save_worst_queries(module.metrics, val_dataset.paths, path, n_queries=cfg["n_worst_queries"],
                           metric=cfg["metric_for_checkpointing"], loggers=trainer.loggers,
                           step=trainer.global_step, tag=path.stem)

    return save


def train(config: Mapping | str | Path | None = None, overrides: Iterable[str] = (), *,
          resume: str | Path | bool | None = None) -> dict:
    """Train an extractor from a config (dict, YAML path, shipped name or run folder) plus ``key=value`` overrides.

    ``resume``: a run folder or its ``.ckpt`` (or True with a run folder as ``config``) continues that run from its
    last checkpoint with the optimizer, scheduler and sampler state. Returns ``{"run_dir", "metrics" (nested,
    of the last validation), "metrics_flat", "initial_metrics", "best_checkpoint", "best_score",
    "last_checkpoint"}``.
    """
    quiet_lightning()
    ckpt_path = None
    run_dir = None
    if resume:
        if resume is True:
            if not isinstance(config, (str, Path)) or not Path(config).is_dir():
                raise ConfigError("resume=True needs a run folder as the config; or pass resume=<run folder>.")
            resume = config
        run_dir, ckpt_path = resume_target(resume)
        if config is None:
            config = run_dir
    cfg, source = load_config(config, overrides, pipeline="train")

    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lookalike.pipelines import builders, loading
    from lookalike.pipelines.lightning_parts import (
        AtomicCheckpointIO,
        ExtractorModule,
        MetricLearningData,
        RunRecorder,
        TrainingClock,
        finish_distributed,
    )
    from lookalike.pipelines.report import metrics_table, plot_history

    pl.seed_everything(cfg["seed"], workers=True, verbose=False)

    # --- data ---------------------------------------------------------------------------------------
    table = loading.load_table(cfg)
    origin = str(loading.dataset_root(cfg) / cfg["csv"])
    train_table = loading.split_table(table, "train", origin)
    val_table = loading.split_table(table, "validation", origin)
    train_ds = loading.make_dataset(train_table, builders.build_transforms(cfg, "transforms_train"), cfg)
    val_ds = loading.make_dataset(val_table, builders.build_transforms(cfg, "transforms_val"), cfg)
    label2category = loading.label_to_category(train_ds)
    probe = builders.build_sampler(cfg, train_ds.labels, label2category)  # fails early on an impossible P x K

    # --- model ----------------------------------------------------------------------------------------
    extractor = builders.build_extractor(cfg)
    feat_dim = int(extractor.feat_dim)
    criterion = builders.build_criterion(cfg, feat_dim, train_ds.labels, label2category)
    if not isinstance(criterion, torch.nn.Module):
        raise ConfigError(f"criterion: {cfg['criterion']['name']} must be a torch.nn.Module with "
                          "forward(features, labels).")
    backbone = builders.backbone_of(extractor)
    if cfg["freeze_backbone_epochs"] > 0 and backbone is extractor and not any(
        True for _ in criterion.parameters()
    ):
        raise ConfigError("freeze_backbone_epochs: the extractor has no `backbone` part and the criterion has no "
                          "parameters, so nothing would train while frozen; set freeze_backbone_epochs: 0.")
    module = ExtractorModule(
        extractor,
        criterion,
        metrics=builders.build_metrics(cfg),
        optimizer_factory=lambda params: builders.build_optimizer(cfg, params),
        scheduler_factory=lambda opt: builders.build_scheduler(cfg, opt),
        freeze_backbone_epochs=cfg["freeze_backbone_epochs"],
        backbone=backbone,
        main_metric=cfg["metric_for_checkpointing"],
        channels_last=cfg["channels_last"],
    )
    datamodule = MetricLearningData(
        train_ds,
        val_ds,
        sampler_factory=(lambda rank, world: builders.build_sampler(cfg, train_ds.labels, label2category,
                                                                    rank, world))
        if cfg["sampler"] is not None else None,
        bs_train=cfg["bs_train"],
        bs_val=cfg["bs_val"],
        num_workers=cfg["num_workers"],
        seed=cfg["seed"],
    )

    # --- run folder -------------------------------------------------------------------------------
    if run_dir is None:
        run_dir = new_run_dir(cfg)
    is_main = launched_rank() == 0
    if is_main:
        save_config(cfg, run_dir / "config.yaml")
        os.environ[RUN_DIR_ENV] = str(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    best_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=cfg["metric_for_checkpointing"],
                              mode=cfg["mode"], save_top_k=1, auto_insert_metric_name=False,
                              enable_version_counter=False, save_on_train_epoch_end=False)
    # "last" is the newest epoch-end state (monitor=None keeps the latest one), the file `--resume` continues from
    last_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                              save_on_train_epoch_end=True, enable_version_counter=False)
    clock = TrainingClock(cfg["max_minutes"])
    recorder = RunRecorder(run_dir, log_images=cfg["log_images"], n_worst_queries=cfg["n_worst_queries"],
                           image_saver=_image_saver(cfg, val_ds), clock=clock)
    n_batches = len(probe) if probe is not None else max(1, len(train_ds) // cfg["bs_train"])
    if isinstance(cfg["limit_train_batches"], int):
        n_batches = max(1, min(n_batches, cfg["limit_train_batches"]))
    trainer = pl.Trainer(
        **trainer_kwargs(cfg),
        max_epochs=cfg["max_epochs"],
        logger=builders.build_logger(cfg, run_dir),
        callbacks=[clock, recorder, best_cb, last_cb],
        check_val_every_n_epoch=cfg["valid_period"],
        limit_train_batches=cfg["limit_train_batches"],
        gradient_clip_val=cfg["gradient_clip_val"],
        log_every_n_steps=max(1, min(50, n_batches)),
        default_root_dir=run_dir,
        plugins=[AtomicCheckpointIO()],
    )

    initial = None
    try:
        if ckpt_path is None and cfg["validate_before_training"]:
            recorder.tag = "initial"
            trainer.validate(module, datamodule=datamodule, verbose=False)
            recorder.tag = None
            initial = module.last_results
        if ckpt_path is not None:
            recorder.load_history(before_epoch=_checkpoint_epoch(ckpt_path))
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        last_epoch = trainer.current_epoch - 1
        if module.validated_epoch != last_epoch and last_epoch >= 0 and not trainer.interrupted:
            recorder.tag = str(last_epoch)  # the last epoch is always validated
            trainer.validate(module, datamodule=datamodule, verbose=False)
            recorder.tag = None
    finally:
        if is_main:
            os.environ.pop(RUN_DIR_ENV, None)
    run_dir = Path(finish_distributed(trainer, str(run_dir)))

    if trainer.is_global_zero:
        plot_history(recorder.history, run_dir / "curves.png")
        if module.last_results is not None:
            print(f"\nvalidation after epoch {last_epoch + 1} ({run_dir}):\n{metrics_table(module.last_results)}")
            if initial is not None:
                key = cfg["metric_for_checkpointing"]
                before = module_flat(initial).get(key)
                after = module.last_flat.get(key)
                if before is not None and after is not None:
                    print(f"{key}: {before:.4f} before training -> {after:.4f}")
    return {
        "run_dir": run_dir,
        "metrics": module.last_results,
        "metrics_flat": dict(module.last_flat),
        "initial_metrics": initial,
        "best_checkpoint": Path(best_cb.best_model_path) if best_cb.best_model_path else None,
        "best_score": float(best_cb.best_model_score) if best_cb.best_model_score is not None else None,
        "last_checkpoint": ckpt_dir / "last.ckpt",
    }


def module_flat(results: Mapping) -> dict[str, float]:
    from lookalike.pipelines.lightning_parts import flatten_metrics

    return flatten_metrics(results)


def _checkpoint_epoch(ckpt_path: Path) -> int | None:
    import torch

    try:
        return int(torch.load(ckpt_path, map_location="cpu", weights_only=True)["epoch"]) + 1
    except Exception:
        return None
