"""The validation pipeline: retrieval metrics of an extractor (weights from a checkpoint) on a dataset's
validation split, printed as a table and saved as JSON."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

from lookalike.io import write_json_atomic
from lookalike.pipelines.config import load_config
from lookalike.pipelines.runs import (
    RUN_DIR_ENV,
    default_checkpoint,
    launched_rank,
    output_folder,
    save_config,
)
from lookalike.pipelines.trainer import quiet_lightning, trainer_kwargs

__all__ = ["validate"]


def validate(config: Mapping | str | Path | None = None, overrides: Iterable[str] = (), *,
             trust_config: bool = False) -> dict:
    """Metrics of ``cfg['extractor']`` with weights ``cfg['checkpoint']`` on the validation split.

    ``config`` may be a run folder: its config.yaml is used and, unless ``checkpoint`` is set,
    its checkpoints/best.ckpt (``trust_config``: follow the import paths its config names). Returns ``{"metrics" (nested), "metrics_flat", "output_dir"}``.
    """
    quiet_lightning()
    overrides = list(overrides)
    cfg, source = load_config(config, overrides, pipeline="validate", trust_config=trust_config)
    default_checkpoint(cfg, source)

    import lightning.pytorch as pl

    from lookalike.pipelines import builders
    from lookalike.pipelines.lightning_parts import (
        ExtractorModule,
        MetricLearningData,
        finish_distributed,
    )
    from lookalike.pipelines.loading import build_datasets
    from lookalike.pipelines.report import metrics_table

    pl.seed_everything(cfg["seed"], verbose=False)
    data = build_datasets(cfg, train=False)
    val_ds, origin = data.val, data.origin
    extractor = builders.build_extractor(cfg)
    module = ExtractorModule(extractor, metrics=builders.build_metrics(cfg),
                             main_metric=cfg["metric_for_checkpointing"], channels_last=cfg["channels_last"])
    datamodule = MetricLearningData(None, val_ds, bs_val=cfg["bs_val"], num_workers=cfg["num_workers"])

    out_dir = output_folder(cfg, source, "validation", overrides)
    is_main = launched_rank() == 0
    if is_main:
        os.environ[RUN_DIR_ENV] = str(out_dir)
    trainer = pl.Trainer(**trainer_kwargs(cfg), logger=False, default_root_dir=out_dir)
    try:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    finally:
        if is_main:
            os.environ.pop(RUN_DIR_ENV, None)
    out_dir = Path(finish_distributed(trainer, str(out_dir)))
    results = module.last_results
    if trainer.is_global_zero:
        save_config(cfg, out_dir / "config.yaml")
        write_json_atomic(out_dir / "metrics.json", {"checkpoint": cfg["checkpoint"], "metrics": results})
        if cfg["log_images"]:
            from lookalike.pipelines.pictures import save_worst_queries, shown_items

            items, as_text = shown_items(val_ds)
            save_worst_queries(module.metrics, items, out_dir / "worst_queries.png",
                               n_queries=cfg["n_worst_queries"], metric=cfg["metric_for_checkpointing"],
                               as_text=as_text)
        print(f"\nvalidation of {cfg['checkpoint'] or 'the extractor as built'} on {origin}:\n"
              f"{metrics_table(results)}\nsaved to {out_dir / 'metrics.json'}")
    return {"metrics": results, "metrics_flat": dict(module.last_flat), "output_dir": out_dir}
