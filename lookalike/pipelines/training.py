"""The training pipeline: config -> data, extractor, criterion, optimizer -> Lightning fit with periodic
validation, best / last checkpoints, metrics JSON, curves; resumable from the last checkpoint.

``train()`` reads as its steps: find the resume point, load the config, build the datasets, the module, the
run folder and its callbacks, the trainer; fit; report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from lookalike.errors import CheckpointError, ConfigError
from lookalike.pipelines.config import load_config
from lookalike.pipelines.loading import HELD_OUT_FILE
from lookalike.pipelines.runs import (
    RUN_DIR_ENV,
    launched_rank,
    new_run_dir,
    resume_target,
    save_config,
)
from lookalike.pipelines.trainer import quiet_lightning, several_processes, trainer_kwargs

__all__ = ["train", "TrainingInterrupted"]


def train(config: Mapping | str | Path | None = None, overrides: Iterable[str] = (), *,
          resume: str | Path | bool | None = None, trust_config: bool = False) -> dict:
    """Train an extractor from a config (dict, YAML path, shipped name or run folder) plus ``key=value`` overrides.

    ``resume``: a run folder or its ``.ckpt`` (or True with a run folder as ``config``) continues that run from its
    last checkpoint with the optimizer, scheduler and sampler state. ``trust_config``: follow the import paths of a
    run folder's config (see docs/safety.md). Returns ``{"run_dir", "metrics" (nested,
    of the last validation), "metrics_flat", "initial_metrics", "best_checkpoint", "best_score",
    "last_checkpoint"}``.
    """
    quiet_lightning()
    config, run_dir, ckpt_path = _resume_point(config, resume)
    cfg, _ = load_config(config, overrides, pipeline="train", trust_config=trust_config)

    import lightning.pytorch as pl

    from lookalike.pipelines.loading import build_datasets

    pl.seed_everything(cfg["seed"], workers=True, verbose=False)
    data = build_datasets(cfg, train=True)
    probe = _sampler_probe(cfg, data)
    module = _build_module(cfg, data)
    completed_epochs = _check_resume(module, ckpt_path)
    datamodule = _build_datamodule(cfg, data)
    run = _prepare_run_folder(cfg, run_dir, data)
    trainer = _build_trainer(cfg, run, _batches_per_epoch(cfg, data, probe))
    initial = _fit(cfg, trainer, module, datamodule, run, ckpt_path, completed_epochs)
    return _report(cfg, trainer, module, run, initial)


# --- steps -------------------------------------------------------------------------------------------------
def _resume_point(config: Any, resume: Any) -> tuple[Any, Path | None, Path | None]:
    """(config, run folder, checkpoint) of a resumed run; (config, None, None) for a new one."""
    if not resume:
        return config, None, None
    if resume is True:
        if not isinstance(config, (str, Path)) or not Path(config).is_dir():
            raise ConfigError("resume=True needs a run folder as the config; or pass resume=<run folder>.")
        resume = config
    run_dir, ckpt_path = resume_target(resume)
    return (run_dir if config is None else config), run_dir, ckpt_path


def _sampler_probe(cfg: Mapping, data):
    """The rank-0 batch sampler, built once so that an impossible P x K fails before any model is built."""
    from lookalike.pipelines import builders

    return builders.build_sampler(cfg, data.train.labels, data.label2category)


def _check_embedding_trains(cfg: Mapping, extractor) -> None:
    """Refuses an `embed_from` whose stages are all in `freeze_layers`: the embedding would never change, and the
    checkpoint picked by the validation metric would be arbitrary."""
    from lookalike.pipelines.lightning_parts import named_submodules

    stages = getattr(extractor, "embedding_stages", None) or []
    if not stages or not cfg["freeze_layers"]:
        return
    frozen = {id(p) for module in named_submodules(extractor, cfg["freeze_layers"]) for p in module.parameters()}
    used = [p for name in stages for p in extractor.get_submodule(name).parameters()]
    if used and all(id(p) in frozen for p in used):
        raise ConfigError(f"extractor.args.embed_from: every stage up to {extractor.embed_from!r} is in "
                          "freeze_layers, so training would never change the embedding; name a later stage, or "
                          "freeze fewer layers.")


def _build_module(cfg: Mapping, data):
    """The LightningModule: extractor, criterion (sized from the extractor and the training labels), metrics,
    optimizer and scheduler factories, the frozen-backbone warm-up."""
    import torch

    from lookalike.pipelines import builders
    from lookalike.pipelines.lightning_parts import ExtractorModule

    extractor = builders.build_extractor(cfg)
    # the loss sees `training_features` (the embeddings themselves unless extractor.args.embed_from)
    if hasattr(extractor, "training_features") != hasattr(extractor, "training_dim"):
        raise ConfigError(f"extractor: {cfg['extractor']['name']} has only one of `training_features` and "
                          "`training_dim`; give both (what the loss sees and its size) or neither.")
    feat_dim = getattr(extractor, "training_dim", getattr(extractor, "feat_dim", None))
    if isinstance(feat_dim, bool) or not isinstance(feat_dim, int) or feat_dim < 1:
        raise ConfigError(f"extractor: {cfg['extractor']['name']} has no `feat_dim` (the size of its embeddings, a "
                          f"positive int; got {feat_dim!r}; `training_dim` where the loss sees other features), "
                          "which sizes the criterion; give the class a `feat_dim` attribute or property, or "
                          "subclass lookalike.models.Extractor.")
    _check_embedding_trains(cfg, extractor)
    criterion = builders.build_criterion(cfg, feat_dim, data.train.labels, data.label2category)
    if not isinstance(criterion, torch.nn.Module):
        raise ConfigError(f"criterion: {cfg['criterion']['name']} must be a torch.nn.Module with "
                          "forward(features, labels).")
    backbone = builders.backbone_of(extractor)
    if cfg["freeze_backbone_epochs"] > 0 and backbone is extractor and not any(
        True for _ in criterion.parameters()
    ):
        raise ConfigError("freeze_backbone_epochs: the extractor has no `backbone` part and the criterion has no "
                          "parameters, so nothing would train while frozen; set freeze_backbone_epochs: 0.")
    if cfg["backbone_lr"] is not None and backbone is extractor:
        raise ConfigError(f"backbone_lr: the extractor ({cfg['extractor']['name']}) has no `backbone` part, so its "
                          "head cannot get another learning rate; set backbone_lr: null (or give the class a "
                          "`backbone` attribute).")
    module = ExtractorModule(
        extractor,
        criterion,
        metrics=builders.build_metrics(cfg),
        optimizer_factory=lambda params: builders.build_optimizer(cfg, params),
        scheduler_factory=lambda opt: builders.build_scheduler(cfg, opt),
        freeze_backbone_epochs=cfg["freeze_backbone_epochs"],
        freeze_layers=cfg["freeze_layers"],
        backbone=backbone,
        backbone_lr=cfg["backbone_lr"],
        main_metric=cfg["metric_for_checkpointing"],
        channels_last=cfg["channels_last"],
        trunk_cache=_trunk_cache(cfg, extractor, data),
        mixstyle=_mixstyle(cfg),
    )
    if not any(p.requires_grad for p in module.parameters()):
        raise ConfigError("freeze_layers: they freeze every parameter of the extractor and the criterion has none, "
                          "so nothing would train; leave some layers out of freeze_layers.")
    return module


def _mixstyle(cfg: Mapping):
    """(MixStyle, layer names) of ``mixstyle_layers`` (None when empty)."""
    layers = list(cfg["mixstyle_layers"])
    if not layers:
        return None
    if cfg["cache_frozen_trunk"]:  # a layer in, inside or around the cached stages would never act, or act once
        def overlaps(a: str, b: str) -> bool:
            return a == b or a.startswith(b + ".") or b.startswith(a + ".")

        clash = sorted({m for m in layers for f in cfg["freeze_layers"] if overlaps(m, f)})
        if clash:
            raise ConfigError("mixstyle_layers: with cache_frozen_trunk the frozen layers run once, before training, "
                              f"so MixStyle cannot act on {clash}; name layers after them.")
    from lookalike.errors import LookalikeError
    from lookalike.models.mixstyle import MixStyle

    try:
        return MixStyle(cfg["mixstyle_p"], cfg["mixstyle_alpha"]), layers
    except LookalikeError as exc:
        raise ConfigError(str(exc)) from None


def _trunk_cache(cfg: Mapping, extractor, data):
    """The frozen trunk's feature-map cache of ``cache_frozen_trunk`` (None when off)."""
    if not cfg["cache_frozen_trunk"]:
        return None
    if data.modality != "image":
        raise ConfigError("cache_frozen_trunk: caches the feature maps of images; a text extractor has none.")
    from lookalike.pipelines.trunk_cache import build_trunk_cache

    return build_trunk_cache(cfg, extractor, data.train.table)


def _build_datamodule(cfg: Mapping, data):
    from lookalike.pipelines import builders
    from lookalike.pipelines.lightning_parts import MetricLearningData

    def sampler_factory(rank: int, world: int):
        return builders.build_sampler(cfg, data.train.labels, data.label2category, rank, world)

    train_rows = data.train
    if cfg["cache_frozen_trunk"]:  # row positions only: the images were encoded once, by the trunk cache
        from lookalike.pipelines.trunk_cache import RowsOnly

        train_rows = RowsOnly(data.train.table)
    return MetricLearningData(
        train_rows,
        data.val,
        sampler_factory=sampler_factory if cfg["sampler"] is not None else None,
        bs_train=cfg["bs_train"],
        bs_val=cfg["bs_val"],
        num_workers=cfg["num_workers"],
        seed=cfg["seed"],
    )


@dataclass
class _Run:
    """The run folder and the callbacks that write into it."""

    dir: Path
    is_main: bool
    clock: Any
    schedule: Any
    recorder: Any
    best: Any
    last: Any

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"


def _prepare_run_folder(cfg: Mapping, run_dir: Path | None, data) -> _Run:
    """A new (or the resumed) run folder with its config, and the clock, recorder and checkpoint callbacks."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lookalike.pipelines.callbacks import (
        RunRecorder,
        TrainingClock,
        ValidationSchedule,
    )

    if run_dir is None:
        if cfg.get("num_nodes", 1) > 1 and not cfg.get("run_name"):
            raise ConfigError("run_name: a run on several nodes needs a run_name, so that every node finds the same "
                              "run folder (on storage all nodes share); set run_name=<name>.")
        run_dir = new_run_dir(cfg)
    is_main = launched_rank() == 0
    if is_main:
        save_config(cfg, run_dir / "config.yaml")
        if data.held_out is not None:  # what train-pairwise mines; it checks that it draws the same labels
            from lookalike.io import write_json_atomic

            write_json_atomic(run_dir / HELD_OUT_FILE, {"fraction": cfg["holdout_labels"], "seed": cfg["seed"],
                                                        "labels": [int(x) for x in data.held_out]})
    ckpt_dir = run_dir / "checkpoints"
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=cfg["metric_for_checkpointing"],
                           mode=cfg["mode"], save_top_k=1, auto_insert_metric_name=False,
                           enable_version_counter=False, save_on_train_epoch_end=False)
    # "last" is the newest epoch-end state (monitor=None keeps the latest one), the file `--resume` continues from
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                           save_on_train_epoch_end=True, enable_version_counter=False)
    clock = TrainingClock(cfg["max_minutes"])
    recorder = RunRecorder(run_dir, log_images=cfg["log_images"], n_worst_queries=cfg["n_worst_queries"],
                           image_saver=_image_saver(cfg, data.val), clock=clock)
    return _Run(run_dir, is_main, clock, ValidationSchedule(cfg["valid_period"]), recorder, best, last)


def _image_saver(cfg: Mapping, val_dataset):
    """Saves the worst-query picture of the last validation (drawn by lookalike.viz)."""

    def save(module, path: Path, trainer) -> None:
        from lookalike.pipelines.pictures import save_worst_queries, shown_items

        items, as_text = shown_items(val_dataset)
        save_worst_queries(module.metrics, items, path, n_queries=cfg["n_worst_queries"],
                           metric=cfg["metric_for_checkpointing"], loggers=trainer.loggers,
                           step=trainer.global_step, tag=path.stem, as_text=as_text)

    return save


def _batches_per_epoch(cfg: Mapping, data, probe) -> int:
    n_batches = len(probe) if probe is not None else max(1, len(data.train) // cfg["bs_train"])
    if isinstance(cfg["limit_train_batches"], int):
        n_batches = max(1, min(n_batches, cfg["limit_train_batches"]))
    return n_batches


def _build_trainer(cfg: Mapping, run: _Run, n_batches: int):
    import lightning.pytorch as pl

    from lookalike.pipelines import builders
    from lookalike.pipelines.checkpoint_io import AtomicCheckpointIO

    return pl.Trainer(
        **_training_trainer_kwargs(cfg),
        max_epochs=cfg["max_epochs"],
        logger=builders.build_logger(cfg, run.dir),
        callbacks=[run.clock, run.schedule, run.recorder, run.best, run.last],  # clock before schedule: it stops
        check_val_every_n_epoch=1,  # ValidationSchedule sets it per epoch
        accumulate_grad_batches=cfg["accumulate_grad_batches"],
        limit_train_batches=cfg["limit_train_batches"],
        gradient_clip_val=cfg["gradient_clip_val"],
        log_every_n_steps=max(1, min(50, n_batches)),
        default_root_dir=run.dir,
        plugins=[AtomicCheckpointIO()],
    )


def _training_trainer_kwargs(cfg: Mapping) -> dict:
    """trainer_kwargs, with DDP told to expect unused parameters while the backbone is frozen (they get no
    gradient then; plain DDP would stop with "parameters that were not used in producing the loss")."""
    kwargs = trainer_kwargs(cfg)
    strategy = kwargs["strategy"]
    if cfg["freeze_backbone_epochs"] > 0 and isinstance(strategy, str) and "find_unused" not in strategy:
        if strategy in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
            kwargs["strategy"] = f"{strategy}_find_unused_parameters_true"
        elif strategy == "auto" and several_processes(cfg):
            kwargs["strategy"] = "ddp_find_unused_parameters_true"  # what auto picks for several devices
    return kwargs


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a training run; the message says how to continue it (the CLI prints it and exits 130)."""

    def __init__(self, run_dir: Path) -> None:
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            message = (f"training stopped; {run_dir} keeps every finished epoch. Continue it with: "
                       f"lookalike train --resume {run_dir}")
        else:
            message = f"training stopped before its first epoch ended, so there is nothing to resume in {run_dir}"
        super().__init__(message)
        self.run_dir = run_dir


def _check_resume(module, ckpt_path: Path | None) -> int | None:
    """The number of epochs a resumed run has completed, after the checks validate / predict use on
    checkpoints: refused pickles, truncated or empty files and another architecture end in one CheckpointError
    (before Lightning would read the file)."""
    if ckpt_path is None:
        return None
    import torch

    from lookalike.models.checkpoints import load_into

    try:
        load_into(module, ckpt_path)  # safe load (weights_only); the fit restores the same weights again
    except CheckpointError as exc:
        raise CheckpointError(f"--resume: {exc}") from None
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # already known to load safely
    missing = [key for key in ("epoch", "global_step", "optimizer_states", "loops") if key not in state]
    if missing:
        raise CheckpointError(f"--resume: {ckpt_path} holds weights but no training state ({', '.join(missing)} "
                              "missing), so training cannot continue from it; start a new run with "
                              f"checkpoint={ckpt_path} to begin from these weights.")
    return int(state["epoch"]) + 1


def _fit(cfg: Mapping, trainer, module, datamodule, run: _Run, ckpt_path: Path | None,
         completed_epochs: int | None) -> dict | None:
    """Optional validation before training, the fit (from ``ckpt_path`` when resuming; ValidationSchedule
    validates inside it), and a validation when a resumed run had nothing left to train. Returns the metrics
    before training (or None). Ctrl-C raises TrainingInterrupted."""
    import signal

    recorder = run.recorder
    initial = None
    if run.is_main:
        os.environ[RUN_DIR_ENV] = str(run.dir)  # DDP children re-run the script: they find the folder here
    try:
        if ckpt_path is None and cfg["validate_before_training"]:
            recorder.epoch = 0
            trainer.validate(module, datamodule=datamodule, verbose=False)
            recorder.epoch = None
            initial = module.last_results
        if ckpt_path is not None:
            recorder.load_history(completed_epochs)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        last_epoch = trainer.current_epoch - 1
        if module.validated_epoch != last_epoch and last_epoch >= 0 and not trainer.interrupted:
            recorder.epoch = last_epoch + 1  # e.g. resumed after its last epoch: the run still ends validated
            trainer.validate(module, datamodule=datamodule, verbose=False)
            recorder.epoch = None
    except SystemExit:
        if not trainer.interrupted:
            raise
        # Lightning turns Ctrl-C into exit(1) and ignores further Ctrl-C: restore Python's handler
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise TrainingInterrupted(run.dir) from None
    finally:
        if run.is_main:
            os.environ.pop(RUN_DIR_ENV, None)
    return initial


def _report(cfg: Mapping, trainer, module, run: _Run, initial: dict | None) -> dict:
    """Closes the process group, draws the curves, prints the last validation; the result dict of ``train``."""
    from lookalike.pipelines.lightning_parts import finish_distributed
    from lookalike.pipelines.report import flatten_metrics, metrics_table, plot_history

    run_dir = Path(finish_distributed(trainer, str(run.dir)))
    if trainer.is_global_zero:
        plot_history(run.recorder.history, run_dir / "curves.png")
        if module.last_results is not None:
            print(f"\nvalidation after epoch {run.recorder.last_epoch} ({run_dir}):\n"
                  f"{metrics_table(module.last_results)}")
            if initial is not None:
                key = cfg["metric_for_checkpointing"]
                before = flatten_metrics(initial).get(key)
                after = module.last_flat.get(key)
                if before is not None and after is not None:
                    print(f"{key}: {before:.4f} before training -> {after:.4f}")
    best = run.best
    return {
        "run_dir": run_dir,
        "metrics": module.last_results,
        "metrics_flat": dict(module.last_flat),
        "initial_metrics": initial,
        "best_checkpoint": Path(best.best_model_path) if best.best_model_path else None,
        "best_score": float(best.best_model_score) if best.best_model_score is not None else None,
        "last_checkpoint": run.checkpoints / "last.ckpt",
    }
