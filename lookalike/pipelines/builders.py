"""Components built from resolved config blocks, with the sizes the pipeline infers from data and model.

Each builder takes the resolved config (see ``lookalike.pipelines.config``) and plain values (labels, the
extractor's ``feat_dim``, ...); components receive keyword arguments only, never the config itself.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Mapping

from lookalike.errors import CheckpointError, ConfigError, LookalikeError
from lookalike.pipelines.config_schema import INFERRED_ARGS, NESTED_BLOCKS
from lookalike.pipelines.registry import REGISTRIES, import_object, signature_without

__all__ = [
    "build_component",
    "build_transforms",
    "build_extractor",
    "build_sampler",
    "build_criterion",
    "build_optimizer",
    "build_scheduler",
    "build_logger",
    "build_metrics",
    "load_extractor_weights",
    "backbone_of",
]


def build_component(block: str, spec: Mapping[str, Any], where: str | None = None, **context: Any) -> Any:
    """Instantiate ``spec = {name, args}`` from the registry of ``block``; ``context`` holds inferable values."""
    where = where or block
    if block == "criterion" and spec.get("name") == "sum":
        return _build_sum(spec, where, context)
    registry = REGISTRIES[block]
    fn, fixed = registry.resolve(spec["name"], f"{where}.name")
    params = signature_without(registry.signature_callable(spec["name"], f"{where}.name"), fixed).parameters
    user_args = dict(spec.get("args") or {})
    kwargs: dict[str, Any] = dict(fixed)
    for arg, value in user_args.items():
        nested = NESTED_BLOCKS.get((block, arg))
        if nested and isinstance(value, (dict, str)):
            value = {"name": value, "args": {}} if isinstance(value, str) else value
            value = build_component(nested, value, f"{where}.args.{arg}")
        kwargs[arg] = value
    for arg, policy in INFERRED_ARGS.get(block, {}).items():
        if arg not in params or arg not in context:
            continue
        given = user_args.get(arg, inspect.Parameter.empty)
        required = params[arg].default is inspect.Parameter.empty
        if (
            policy == "owned"
            or (policy == "absent" and (given is inspect.Parameter.empty or given == "auto"))
            or (policy == "auto" and (given == "auto" or (given is inspect.Parameter.empty and required)))
        ):
            kwargs[arg] = context[arg]
    leftover = [a for a, v in kwargs.items() if isinstance(v, str) and v == "auto" and a in INFERRED_ARGS.get(block, {})]
    if leftover:
        raise ConfigError(f"{where}.args.{leftover[0]}: 'auto' cannot be inferred in this pipeline; give a value.")
    return _call(fn, kwargs, where, spec["name"])


def _call(fn: Callable, kwargs: Mapping[str, Any], where: str, name: str) -> Any:
    try:
        return fn(**kwargs)
    except LookalikeError as exc:
        raise type(exc)(f"{where} ({name}): {exc}") from exc
    except (ValueError, TypeError) as exc:
        shown = {k: v for k, v in kwargs.items() if k not in ("params", "labels", "label2category", "optimizer")}
        raise ConfigError(f"{where} ({name}) rejected its arguments {shown}: {exc}") from exc


def build_transforms(cfg: Mapping, which: str = "transforms_val") -> Callable:
    return build_component(which, cfg[which], image_size=cfg["image_size"])


def build_extractor(cfg: Mapping):
    """The extractor of ``cfg['extractor']``, with weights from ``cfg['checkpoint']`` when it is set."""
    extractor = build_component("extractor", cfg["extractor"], image_size=cfg["image_size"])
    if cfg.get("checkpoint"):
        load_extractor_weights(extractor, cfg["checkpoint"])
    return extractor


def backbone_of(extractor):
    """The part ``freeze_backbone_epochs`` freezes: ``extractor.backbone`` when it exists, else the extractor."""
    backbone = getattr(extractor, "backbone", None)
    return backbone if backbone is not None and hasattr(backbone, "parameters") else extractor


def load_extractor_weights(extractor, checkpoint: str | Path) -> None:
    """Loads weights into ``extractor`` from a training run's ``.ckpt`` (its ``extractor.*`` entries) or a weights
    file (state dict / safetensors); safe loading only (``weights_only``)."""
    from lookalike.models.checkpoints import load_into, load_weights

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint: file {str(path)!r} not found; give the path of a run's "
                              "checkpoints/best.ckpt or of a weights file.")
    state = None
    if path.suffix == ".ckpt":
        try:
            state = load_weights(path, prefix="extractor.")
        except CheckpointError as exc:
            if "prefix" not in str(exc):
                raise
    try:
        load_into(extractor, state if state is not None else path)
    except CheckpointError as exc:
        if "does not match" not in str(exc):  # refused or unreadable: the extractor's arguments are not the cause
            raise
        raise CheckpointError(f"checkpoint {path}: {exc} (compare extractor.args with the training config)") \
            from None


def build_sampler(cfg: Mapping, labels, label2category: Mapping | None, rank: int = 0, world_size: int = 1):
    if cfg.get("sampler") is None:
        return None
    return build_component("sampler", cfg["sampler"], labels=labels, label2category=label2category,
                           rank=rank, world_size=world_size, seed=cfg["seed"])


def build_criterion(cfg: Mapping, feat_dim: int, labels, label2category: Mapping | None):
    """The criterion; ArcFace-like ones get ``in_features`` (feat_dim), ``num_classes`` and the label ids."""
    import numpy as np

    labels = np.unique(np.asarray(labels)).tolist()
    context = {"in_features": feat_dim, "num_classes": len(labels), "labels": labels,
               "label2category": label2category}
    return build_component("criterion", cfg["criterion"], **context)


def _build_sum(spec: Mapping[str, Any], where: str, context: Mapping[str, Any]) -> Any:
    """``criterion: sum``: each term of ``args.criteria`` is a criterion block, sized from ``context`` like a
    top-level one (the nested-block mechanism passes no inferred values)."""
    from lookalike.losses.combined import WeightedSumLoss

    args = dict(spec.get("args") or {})
    terms = args.pop("criteria", None)
    if not isinstance(terms, list) or not terms:
        raise ConfigError(f"{where}.args.criteria: give a list of criterion blocks, e.g. [{{name: arcface, args: {{}}}}, "
                          "{name: triplet_with_miner, args: {miner: hard_triplets}}].")
    built = []
    for i, term in enumerate(terms):
        term = {"name": term, "args": {}} if isinstance(term, str) else term
        if not isinstance(term, Mapping) or "name" not in term or term["name"] == "sum":
            raise ConfigError(f"{where}.args.criteria[{i}]: expected a criterion block {{name, args}} other than "
                              f"sum, got {term!r}.")
        built.append(build_component("criterion", term, f"{where}.args.criteria[{i}]", **context))
    return _call(WeightedSumLoss, {"criteria": built, **args}, where, "sum")


def build_optimizer(cfg: Mapping, params):
    """The optimizer block over ``params``. A torch optimizer with a fused implementation (Adam, AdamW, SGD, ...)
    uses it unless the block sets ``fused`` or ``foreach``: one kernel over all parameters instead of a Python
    loop over them (the same update up to float rounding; benchmarks/RESULTS.md, training section)."""
    params = list(params)
    spec = cfg["optimizer"]
    args = dict(spec.get("args") or {})
    # not under fp16 loss scaling: Lightning's scaler cannot clip the gradients of a fused optimizer
    fp16 = cfg.get("precision") in (16, "16", "16-mixed")
    if "fused" not in args and "foreach" not in args and not fp16 and _fusable(spec["name"], params):
        spec = {**spec, "args": {**args, "fused": True}}
    return build_component("optimizer", spec, params=params)


def _fusable(name: str, params: list) -> bool:
    """Whether the registered optimizer ``name`` is torch's Adam, AdamW or SGD (the fused kernels measured in
    benchmarks/RESULTS.md; others may reject e.g. sparse gradients) and every parameter is a floating-point
    tensor on a CPU or CUDA device (where torch has fused kernels)."""
    try:
        fn, _ = REGISTRIES["optimizer"].resolve(name, "optimizer.name")
    except Exception:  # noqa: BLE001 - the builder reports a bad name with its own message
        return False
    import torch

    if fn not in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
        return False
    if "fused" not in inspect.signature(fn).parameters:
        return False
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    return bool(tensors) and all(t.device.type in ("cpu", "cuda") and t.is_floating_point() for t in tensors)


def build_scheduler(cfg: Mapping, optimizer) -> dict | None:
    """A Lightning ``lr_scheduler`` config dict, or None."""
    spec = cfg.get("scheduler")
    if spec is None:
        return None
    before = [group["lr"] for group in optimizer.param_groups]
    scheduler = build_component("scheduler", spec, optimizer=optimizer)
    after = [group["lr"] for group in optimizer.param_groups]
    if len(set(before)) > 1 and len(set(after)) == 1 and after[0] != 0:  # (a warm-up from 0 tells nothing)
        # e.g. one_cycle with one max_lr: every group would run at the same rate, backbone_lr silently lost
        raise ConfigError(f"scheduler: {spec['name']} sets one learning rate for every parameter group, which "
                          f"overrides backbone_lr ({cfg.get('backbone_lr')}); give it one value per group, "
                          "backbone first (e.g. max_lr: [3.0e-4, 1.0e-3]), or set backbone_lr: null.")
    out = {"scheduler": scheduler, "interval": spec["interval"], "frequency": spec["frequency"]}
    if spec.get("monitor"):
        out["monitor"] = spec["monitor"]
    elif type(scheduler).__name__ == "ReduceLROnPlateau":
        out["monitor"] = cfg["metric_for_checkpointing"]
    return out


def build_logger(cfg: Mapping, run_dir: Path):
    spec = cfg.get("logger")
    if spec is None:
        return False
    spec = {"name": spec["name"], "args": dict(spec.get("args") or {})}
    if spec["name"] == "wandb":
        spec["args"].setdefault("offline", True)
    if spec["name"] == "mlflow" and not spec["args"].get("tracking_uri"):
        # a store inside the run folder, offline; MLflow 3 keeps its file store only behind this opt-in
        import os

        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        spec["args"]["tracking_uri"] = f"file:{Path(run_dir) / 'mlruns'}"
    return build_component("logger", spec, save_dir=str(run_dir))


def build_metrics(cfg: Mapping):
    """``EmbeddingMetrics`` with ``cfg['metric_args']`` and the ``postprocessor`` block (if any)."""
    cls = import_object("lookalike.metrics:EmbeddingMetrics", "metric_args")
    args = dict(cfg.get("metric_args") or {})
    if cfg.get("postprocessor") is not None:
        args["postprocessor"] = build_component("postprocessor", cfg["postprocessor"])
    return _call(cls, args, "metric_args", "EmbeddingMetrics")
