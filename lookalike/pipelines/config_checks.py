"""Checks of a config before anything runs: values against the schema (types, choices, minimums, block shape) and
component arguments against the signatures of the callables they name. Problems are appended to a list of
messages that name the key path; the caller raises one ConfigError listing them all."""

from __future__ import annotations

import collections.abc
import copy
import inspect
import types
import typing
from typing import Any, Callable, Mapping

from lookalike.errors import ConfigError, suggest
from lookalike.pipelines.config_schema import (
    INFERRED_ARGS,
    NESTED_BLOCKS,
    SCHEMA,
    Key,
    is_int,
    is_num,
)
from lookalike.pipelines.registry import REGISTRIES, signature_without

__all__ = ["check_values", "normalise_block", "check_args", "check_components", "config_error"]


def _type_ok(key: Key, value: Any) -> bool:
    return any(t.check(value) for t in key.types)


def normalise_block(key: Key, value: Any, errors: list[str]) -> Any:
    """``name`` or ``{name, args, ...}`` -> ``{name, args, **extras}``; structural problems go to errors."""
    where = key.name
    if value is None:
        return None
    if isinstance(value, str):
        value = {"name": value}
    allowed = ["name", "args", *key.block_extras]
    unknown = [k for k in value if k not in allowed]
    for k in unknown:
        errors.append(f"{where}.{k}: unknown key in a component block{suggest(k, allowed)}; allowed: "
                      f"{', '.join(allowed)}.")
    if "name" not in value:
        errors.append(f"{where}.name: missing; a component block is {{name: ..., args: {{...}}}}.")
    args = value.get("args")
    if args is None:
        args = {}
    elif not isinstance(args, dict):
        errors.append(f"{where}.args: expected a mapping of keyword arguments, got {args!r}.")
        args = {}
    out = {"name": value.get("name"), "args": copy.deepcopy(args)}
    for extra, (types_, default, choices) in key.block_extras.items():
        v = value.get(extra, default)
        if not any(t.check(v) for t in types_):
            errors.append(f"{where}.{extra}: expected {' | '.join(t.words for t in types_)}, got {v!r}.")
        elif choices and v not in choices:
            errors.append(f"{where}.{extra}: {v!r} is not one of {', '.join(map(repr, choices))}.")
        out[extra] = v
    return out


def check_values(cfg: Mapping, errors: list[str]) -> dict:
    """The schema-checked config (component blocks normalised to ``{name, args, ...}``): unknown keys, missing
    required keys, wrong types, values outside choices or below a minimum are appended to ``errors``."""
    out: dict[str, Any] = {}
    for name in cfg:
        if name not in SCHEMA:
            errors.append(f"{name}: unknown key{suggest(name, SCHEMA)}. Valid keys are listed in docs/pipelines.md.")
    for name, key in SCHEMA.items():
        if name not in cfg:
            errors.append(f"{name}: required key missing ({key.doc}).")
            continue
        value = cfg[name]
        if not _type_ok(key, value):
            errors.append(f"{name}: expected {key.type_words()}, got {value!r} ({type(value).__name__}).")
            continue
        if key.choices and value not in key.choices:
            errors.append(f"{name}: {value!r} is not one of {', '.join(map(repr, key.choices))}"
                          f"{suggest(str(value), [str(c) for c in key.choices])}.")
            continue
        if key.minimum is not None and is_num(value) and value < key.minimum:
            errors.append(f"{name}: must be >= {key.minimum:g}, got {value!r}.")
            continue
        if key.registry:
            value = normalise_block(key, value, errors)
        out[name] = value
    return out


def config_error(origin: str, errors: list[str]) -> ConfigError:
    """One ConfigError listing every problem of a config."""
    head = f"config {origin} has {len(errors)} problem(s):" if origin != "<dict>" else \
        f"config has {len(errors)} problem(s):"
    return ConfigError(head + "\n  - " + "\n  - ".join(errors))


# --- component checks ---------------------------------------------------------------------------------
def _annotation_ok(annotation: Any, value: Any) -> bool | None:
    """Does a YAML value fit a simple annotation? None when the annotation is too rich to tell."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return None
    if value == "auto":
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_annotation_ok(a, value) for a in typing.get_args(annotation)]
        if any(v is True for v in verdicts):
            return True
        return None if any(v is None for v in verdicts) else False
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return is_int(value)
    if annotation is float:
        return is_num(value)
    if annotation is str:
        return isinstance(value, str)
    seq_origins = (list, tuple, typing.Sequence, collections.abc.Sequence)
    if annotation in (list, tuple) or origin in seq_origins:
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if len(set(map(repr, args))) == 1:
            inner = [_annotation_ok(args[0], v) for v in value]
            return False if any(v is False for v in inner) else (True if all(inner) else None)
        return True
    if annotation in (dict,) or origin in (dict, typing.Mapping, collections.abc.Mapping):
        return isinstance(value, dict)
    return None


def _hints(fn: Callable) -> dict[str, Any]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable string annotations: skip type checks
        return {}


def _describe(fn: Callable) -> str:
    return getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))


def check_args(where: str, fn: Callable, fixed: Mapping[str, Any], args: Mapping[str, Any],
               inferred: Mapping[str, str], errors: list[str]) -> None:
    """Unknown, missing, pipeline-owned and wrongly typed arguments of one component, appended to errors."""
    sig = signature_without(fn, fixed)
    params = {p.name: p for p in sig.parameters.values()
              if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    var_kw = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    hints = _hints(fn)
    name = _describe(fn)
    for arg, value in args.items():
        if arg not in params:
            if not var_kw:
                errors.append(f"{where}.{arg}: {name} has no argument {arg!r}{suggest(arg, params)}; "
                              f"its arguments: {', '.join(params) or '(none)'}.")
            continue
        if inferred.get(arg) == "owned":
            errors.append(f"{where}.{arg}: set by the pipeline from the data / model; remove it from the config.")
            continue
        if isinstance(value, dict) and "name" in value:
            continue  # a nested block, checked by its own registry
        verdict = _annotation_ok(hints.get(arg, params[arg].annotation), value)
        if verdict is False:
            ann = hints.get(arg, params[arg].annotation)
            ann_words = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
            errors.append(f"{where}.{arg}: {name} expects {ann_words}, got {value!r} ({type(value).__name__}).")
        elif verdict is None and isinstance(value, str) and value != "auto" and is_num(params[arg].default):
            # an annotation too rich to check (e.g. float | Tensor): a number by default is not a word
            errors.append(f"{where}.{arg}: {name} expects a number (default {params[arg].default!r}), got "
                          f"{value!r} (str).")
    for p in params.values():
        if p.default is inspect.Parameter.empty and p.name not in args and p.name not in inferred:
            errors.append(f"{where}.{p.name}: required argument of {name} is missing.")


def check_components(cfg: Mapping, pipeline: str, origin: str = "<dict>") -> None:
    """Every component name resolves and its args fit its signature; pipeline-specific requirements hold."""
    errors: list[str] = []
    used = {
        "train": ["transforms_train", "transforms_val", "extractor", "sampler", "criterion", "optimizer",
                  "scheduler", "logger", "postprocessor"],
        "validate": ["transforms_val", "extractor", "postprocessor"],
        "predict": ["transforms_val", "extractor"],
    }[pipeline]
    if pipeline == "train" and cfg.get("criterion") is None:
        errors.append("criterion: required for training, e.g. {name: triplet_with_miner, args: {margin: 0.2, "
                      "miner: {name: hard_triplets}}}.")
    for block in used:
        _check_block(block, block, cfg.get(block), errors)
    if pipeline in ("train", "validate"):
        _check_metric_args(cfg, errors)
    if errors:
        raise config_error(origin, errors)


def _check_block(block: str, where: str, value: Any, errors: list[str]) -> None:
    if value is None:
        return
    registry = REGISTRIES[block]
    try:
        _, fixed = registry.resolve(value.get("name"), f"{where}.name")
        fn = registry.signature_callable(value.get("name"), f"{where}.name")
    except ConfigError as exc:
        errors.append(str(exc))
        return
    args = value.get("args") or {}
    check_args(f"{where}.args", fn, fixed, args, INFERRED_ARGS.get(block, {}), errors)
    for arg, sub in args.items():
        nested = NESTED_BLOCKS.get((block, arg))
        if nested is None:
            continue
        if isinstance(sub, str):
            sub = args[arg] = {"name": sub, "args": {}}
        if sub is None:
            continue
        if not isinstance(sub, dict) or "name" not in sub or set(sub) - {"name", "args"}:
            errors.append(f"{where}.args.{arg}: expected a block {{name: ..., args: {{...}}}}, got {sub!r}.")
            continue
        sub.setdefault("args", {})
        if sub["args"] is None:
            sub["args"] = {}
        _check_block(nested, f"{where}.args.{arg}", sub, errors)


_METRIC_K_ARGS = {"cmc": "cmc_top_k", "precision": "precision_top_k", "map": "map_top_k"}


def _check_metric_args(cfg: Mapping, errors: list[str]) -> None:
    from lookalike.pipelines.registry import import_object

    try:
        metrics_cls = import_object("lookalike.metrics:EmbeddingMetrics", "metric_args")
    except ConfigError as exc:
        errors.append(str(exc))
        return
    args = cfg.get("metric_args") or {}
    if "postprocessor" in args:
        errors.append("metric_args.postprocessor: set the top-level `postprocessor` block instead, e.g. "
                      "postprocessor: {name: query_expansion, args: {n_neighbours: 2}}.")
        args = {k: v for k, v in args.items() if k != "postprocessor"}
    check_args("metric_args", metrics_cls, {}, args, {}, errors)
    metric = cfg.get("metric_for_checkpointing", "")
    parts = metric.split("/")
    if len(parts) < 2 or not all(parts):
        errors.append(f"metric_for_checkpointing: {metric!r} is not <OVERALL or category>/<metric>[/<k>], "
                      "e.g. OVERALL/cmc/1.")
        return
    if parts[0] == "OVERALL" and len(parts) == 3 and parts[1] in _METRIC_K_ARGS:
        arg = _METRIC_K_ARGS[parts[1]]
        ks = args.get(arg)
        if ks is None:
            default = inspect.signature(metrics_cls).parameters.get(arg)
            ks = default.default if default is not None else None
        if ks is not None and parts[2] not in {str(k) for k in ks}:
            errors.append(f"metric_for_checkpointing: {metric!r} is not computed because metric_args.{arg} is "
                          f"{list(ks)}; add {parts[2]} to metric_args.{arg} or pick one of "
                          f"{', '.join(f'OVERALL/{parts[1]}/{k}' for k in ks)}.")
