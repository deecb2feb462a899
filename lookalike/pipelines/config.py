"""Run configs: the schema (single source of truth for keys, types, defaults and docs), loading, overrides and
validation before anything runs.

A config is one YAML mapping. Component blocks are ``{name: ..., args: {...}}`` resolved through the registries
in ``lookalike.pipelines.registry``; everything is checked up front and every problem is reported in one
``ConfigError`` whose lines name the config key path.
"""

from __future__ import annotations

import copy
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from lookalike.errors import ConfigError, suggest
from lookalike.pipelines.registry import REGISTRIES, signature_without

__all__ = [
    "SCHEMA",
    "Key",
    "CONFIGS_DIR",
    "REQUIRED",
    "shipped_configs",
    "read_config",
    "parse_overrides",
    "apply_overrides",
    "resolve_config",
    "check_components",
    "load_config",
    "yaml_load",
    "yaml_dump",
    "INFERRED_ARGS",
]

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


# --- YAML: floats like 3e-4 are floats (YAML 1.1 reads them as strings) ------------------------
class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """YAML with scientific-notation floats (``3e-4``) read as floats."""
    return yaml.load(text, Loader=_Loader)


def yaml_dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)


# --- types ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Type:
    """An accepted value type: a check and the words used in messages and docs."""

    words: str
    check: Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


INT = Type("int", _is_int)
NUM = Type("float", _is_num)
STR = Type("str", lambda v: isinstance(v, str))
BOOL = Type("bool", lambda v: isinstance(v, bool))
INT_LIST = Type("list of int", lambda v: isinstance(v, list) and all(_is_int(x) for x in v))
DICT = Type("mapping", lambda v: isinstance(v, dict))
COMPONENT = Type("component block {name, args}", lambda v: isinstance(v, (dict, str)))
NULL = Type("null", lambda v: v is None)


@dataclass(frozen=True)
class Key:
    """One top-level config key."""

    name: str
    types: tuple[Type, ...]
    default: Any
    doc: str
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    registry: str | None = None  # component block resolved through REGISTRIES[registry]
    block_extras: Mapping[str, tuple[tuple[Type, ...], Any, tuple[Any, ...]]] = field(default_factory=dict)
    section: str = "general"

    @property
    def nullable(self) -> bool:
        return NULL in self.types

    def type_words(self) -> str:
        return " | ".join(t.words for t in self.types)


def _k(name: str, types_: Sequence[Type], default: Any, doc: str, **kw: Any) -> Key:
    return Key(name, tuple(types_), default, doc, **kw)


_SCHEDULER_EXTRAS = {
    "interval": ((STR,), "epoch", ("epoch", "step")),
    "frequency": ((INT,), 1, ()),
    "monitor": ((STR, NULL), None, ()),
}

PRECISIONS = (32, 64, 16, "32", "32-true", "64-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true")

SCHEMA: dict[str, Key] = {
    k.name: k
    for k in [
        # data
        _k("dataset_root", (STR, NULL), None, "dataset folder; null = the built-in example data (emoji)", section="data"),
        _k("csv", (STR,), "df.csv", "dataset CSV, relative to dataset_root or absolute", section="data"),
        _k("check_images", (STR,), "exists", "image check when loading the CSV", choices=("exists", "decode", "none"),
           section="data"),
        _k("image_size", (INT,), 224, "side of the square images the transforms produce", minimum=1, section="data"),
        _k("cache_images", (BOOL,), False, "keep decoded images in memory (small images)", section="data"),
        _k("num_workers", (INT,), 0, "DataLoader worker processes", minimum=0, section="data"),
        _k("bs_train", (INT,), 64, "training batch size when sampler is null", minimum=1, section="data"),
        _k("bs_val", (INT,), 128, "validation / prediction batch size", minimum=1, section="data"),
        _k("predict_source", (STR, NULL), None,
           "predict: a CSV (column `path`) or a folder of images; null = every row of dataset_root/csv",
           section="data"),
        # components
        _k("transforms_train", (COMPONENT,), {"name": "train", "args": {}}, "training transforms",
           registry="transforms_train", section="components"),
        _k("transforms_val", (COMPONENT,), {"name": "val", "args": {}}, "validation / prediction transforms",
           registry="transforms_val", section="components"),
        _k("extractor", (COMPONENT,), REQUIRED, "the model: images -> embeddings", registry="extractor",
           section="components"),
        _k("sampler", (COMPONENT, NULL), None, "batch sampler; null = shuffled batches of bs_train",
           registry="sampler", section="components"),
        _k("criterion", (COMPONENT, NULL), None,
           "loss `forward(features, labels)`, miner inside (`args.miner`); required for training",
           registry="criterion", section="components"),
        _k("optimizer", (COMPONENT,), {"name": "adamw", "args": {"lr": 1e-3}},
           "optimizer over extractor + criterion parameters", registry="optimizer", section="components"),
        _k("scheduler", (COMPONENT, NULL), None, "lr scheduler; extra block keys: interval (epoch or step), frequency, monitor",
           registry="scheduler", block_extras=_SCHEDULER_EXTRAS, section="components"),
        _k("logger", (COMPONENT, NULL), {"name": "csv", "args": {}}, "Lightning logger; null = none",
           registry="logger", section="components"),
        # training
        _k("seed", (INT,), 0, "seed of weights, sampler order and augmentations", minimum=0, section="training"),
        _k("max_epochs", (INT,), 10, "training epochs (an epoch of a balance sampler = a pass over the labels)",
           minimum=1, section="training"),
        _k("max_minutes", (NUM, NULL), None,
           "training-time budget in minutes, validation excluded (stops inside an epoch, then validates); null = none",
           section="training"),
        _k("limit_train_batches", (INT, NUM, NULL), None, "cap on batches per training epoch (int) or fraction",
           section="training"),
        _k("freeze_backbone_epochs", (INT,), 0,
           "epochs during which the extractor's `backbone` (or the whole extractor) is frozen", minimum=0,
           section="training"),
        _k("gradient_clip_val", (NUM, NULL), None, "clip gradient norm to this value", section="training"),
        _k("precision", (INT, STR), 32, "32, bf16-mixed, 16-mixed, ...", choices=PRECISIONS, section="training"),
        _k("channels_last", (BOOL,), False,
           "run convolutions in NHWC layout (faster CNNs on CPUs and with mixed precision on GPUs)",
           section="training"),
        _k("accelerator", (STR,), "auto", "cpu, gpu, mps or auto", section="training"),
        _k("devices", (INT, STR, INT_LIST), 1, "number of devices, a list of ids, or auto", section="training"),
        _k("strategy", (STR,), "auto", "Lightning strategy: auto, ddp, ddp_spawn, ...", section="training"),
        _k("checkpoint", (STR, NULL), None,
           "extractor weights: validate/predict evaluate them, train starts from them (a .ckpt of a run or a "
           "weights file)", section="training"),
        # validation
        _k("valid_period", (INT,), 1, "validate every this many epochs (and after the last one)", minimum=1,
           section="validation"),
        _k("validate_before_training", (BOOL,), False, "also validate the untrained model", section="validation"),
        _k("metric_args", (DICT,), {}, "keyword arguments of EmbeddingMetrics (cmc_top_k, map_top_k, ...)",
           section="validation"),
        _k("postprocessor", (COMPONENT, NULL), None,
           "re-ranker of the retrieved lists before the metrics (e.g. query_expansion); null = none",
           registry="postprocessor", section="validation"),
        _k("metric_for_checkpointing", (STR,), "OVERALL/cmc/1",
           "metric that picks the best checkpoint: <OVERALL or category>/<metric>/<k>", section="validation"),
        _k("mode", (STR,), "max", "whether the metric is better when larger (max) or smaller (min)",
           choices=("max", "min"), section="validation"),
        _k("log_images", (BOOL,), False, "save pictures of the worst queries at each validation", section="validation"),
        _k("n_worst_queries", (INT,), 6, "how many worst queries the pictures show", minimum=1, section="validation"),
        # output
        _k("output_dir", (STR,), "runs", "folder holding run folders", section="output"),
        _k("run_name", (STR, NULL), None, "run folder name inside output_dir; null = a timestamp", section="output"),
        _k("progress_bar", (BOOL,), True, "show progress bars", section="output"),
        # inference runtime (lookalike export writes the ONNX file)
        _k("runtime", (STR,), "torch", "predict: run the extractor in torch, or its exported ONNX file in "
           "onnxruntime", choices=("torch", "onnx"), section="inference"),
        _k("onnx_model", (STR, NULL), None,
           "runtime onnx: the .onnx file; null = <run folder>/export/model.onnx", section="inference"),
    ]
}

#: arguments the pipeline fills in per block: "owned" = always set by the pipeline (a user value is an error),
#: "absent" = filled when the user leaves it out or writes `auto`, "auto" = filled only when required or `auto`.
INFERRED_ARGS: dict[str, dict[str, str]] = {
    "transforms_train": {"image_size": "absent"},
    "transforms_val": {"image_size": "absent"},
    "extractor": {},
    "sampler": {"labels": "owned", "label2category": "owned", "rank": "owned", "world_size": "owned",
                "seed": "absent"},
    "criterion": {"in_features": "absent", "num_classes": "absent", "labels": "absent", "label2category": "auto"},
    "miner": {},
    "optimizer": {"params": "owned"},
    "scheduler": {"optimizer": "owned"},
    "logger": {"save_dir": "absent"},
    "postprocessor": {},
}

#: nested component blocks allowed inside a block's args: (block, arg name) -> registry key
NESTED_BLOCKS: dict[tuple[str, str], str] = {("criterion", "miner"): "miner"}


# --- reading ----------------------------------------------------------------------------------------
def shipped_configs() -> dict[str, Path]:
    """Ready-made configs shipped with lookalike, by name (``default``, ``triplet``, ...)."""
    return {p.stem: p for p in sorted(CONFIGS_DIR.glob("*.yaml"))}


@dataclass
class ConfigSource:
    """A raw config and where it came from (a file, a shipped name, a run folder or a dict)."""

    raw: dict
    origin: str
    run_dir: Path | None = None


def read_config(config: Mapping | str | Path | None) -> ConfigSource:
    """Raw mapping of a config given as a dict, a YAML path, a run folder, a shipped name, or None (default)."""
    if config is None:
        config = "default"
    if isinstance(config, Mapping):
        return ConfigSource(copy.deepcopy(dict(config)), "<dict>")
    if not isinstance(config, (str, Path)):
        raise ConfigError(f"config: expected a dict or a path to a YAML file, got {type(config).__name__}.")
    path = Path(config).expanduser()
    run_dir = None
    if path.is_dir():
        run_dir = path
        path = path / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"config: {run_dir} is a folder without config.yaml; pass a YAML file or a run folder.")
    elif not path.is_file():
        shipped = shipped_configs()
        name = path.name[:-5] if path.name.endswith(".yaml") else path.name
        if str(config) in shipped or (name in shipped and str(path.parent) == "."):
            path = shipped[name]
        else:
            raise ConfigError(
                f"config: file {str(config)!r} not found{suggest(name, shipped)}. Pass a YAML file, a run folder, "
                f"or a shipped config name: {', '.join(shipped)}."
            )
    try:
        raw = yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: the top level must be a mapping of keys, got {type(raw).__name__}.")
    return ConfigSource(raw, str(path), run_dir)


_KEY_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def parse_overrides(overrides: Iterable[str]) -> list[tuple[list[str], Any]]:
    """``['optimizer.args.lr=3e-4', 'sampler=null']`` -> key paths and YAML-parsed values."""
    parsed = []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(
                f"override {item!r}: expected key=value with a dotted key path, e.g. optimizer.args.lr=3e-4."
            )
        key, _, text = item.partition("=")
        key = key.strip()
        if not _KEY_PATH.match(key):
            raise ConfigError(f"override {item!r}: {key!r} is not a dotted key path like optimizer.args.lr.")
        try:
            value = yaml_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc}).") from None
        parsed.append((key.split("."), value))
    return parsed


def apply_overrides(cfg: dict, overrides: Iterable[str]) -> dict:
    """Sets dotted key paths in ``cfg`` (in place) and returns it; missing or null parents become mappings."""
    for path, value in parse_overrides(overrides):
        node = cfg
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, str) and i == 0 and part in SCHEMA and SCHEMA[part].registry:
                child = node[part] = {"name": child, "args": {}}  # shorthand block: expand before setting into it
            elif not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(
                    f"override {'.'.join(path)}={value!r}: {where} holds {child!r}, not a mapping, so it has no "
                    f"key {path[i + 1]!r}."
                )
            node = child
        node[path[-1]] = value
    return cfg


# --- schema validation ---------------------------------------------------------------------------------
def _type_ok(key: Key, value: Any) -> bool:
    return any(t.check(value) for t in key.types)


def _normalise_block(key: Key, value: Any, errors: list[str]) -> Any:
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


def resolve_config(raw: Mapping, overrides: Iterable[str] = (), origin: str = "<dict>") -> dict:
    """Defaults + raw config + overrides, checked against SCHEMA (keys, types, choices); component names and
    arguments are checked later by ``check_components``. Raises one ConfigError listing every problem."""
    cfg = copy.deepcopy(dict(raw))
    for name, key in SCHEMA.items():
        if name not in cfg and key.default is not REQUIRED:
            cfg[name] = copy.deepcopy(key.default)
    apply_overrides(cfg, overrides)
    errors: list[str] = []
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
        if key.minimum is not None and _is_num(value) and value < key.minimum:
            errors.append(f"{name}: must be >= {key.minimum:g}, got {value!r}.")
            continue
        if key.registry:
            value = _normalise_block(key, value, errors)
        out[name] = value
    if errors:
        raise _config_error(origin, errors)
    return out


def _config_error(origin: str, errors: list[str]) -> ConfigError:
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
        return _is_int(value)
    if annotation is float:
        return _is_num(value)
    if annotation is str:
        return isinstance(value, str)
    seq_origins = (list, tuple, typing.Sequence, __import__("collections.abc").abc.Sequence)
    if annotation in (list, tuple) or origin in seq_origins:
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if len(set(map(repr, args))) == 1:
            inner = [_annotation_ok(args[0], v) for v in value]
            return False if any(v is False for v in inner) else (True if all(inner) else None)
        return True
    if annotation in (dict,) or origin in (dict, typing.Mapping, __import__("collections.abc").abc.Mapping):
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
        if _annotation_ok(hints.get(arg, params[arg].annotation), value) is False:
            ann = hints.get(arg, params[arg].annotation)
            ann_words = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
            errors.append(f"{where}.{arg}: {name} expects {ann_words}, got {value!r} ({type(value).__name__}).")
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
        raise _config_error(origin, errors)


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


def load_config(config: Mapping | str | Path | None, overrides: Iterable[str] = (), *,
                pipeline: str = "train") -> tuple[dict, ConfigSource]:
    """Read, override, schema-check and component-check a config for ``pipeline`` (train, validate, predict)."""
    source = read_config(config)
    cfg = resolve_config(source.raw, list(overrides), source.origin)
    check_components(cfg, pipeline, source.origin)
    return cfg, source


def schema_markdown() -> str:
    """The config reference table of docs/pipelines.md, generated from SCHEMA (one row per key)."""
    lines = []
    section = None
    for key in SCHEMA.values():
        if key.section != section:
            section = key.section
            lines += ["", f"**{section}**", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        if key.default is REQUIRED:
            default = "*required*"
        else:
            text = yaml.safe_dump(key.default, default_flow_style=True, width=1000, sort_keys=False).strip()
            default = f"`{text.removesuffix('...').strip()}`"
        choices = f" (one of: {', '.join(dict.fromkeys(map(str, key.choices)))})" if key.choices else ""
        doc = key.doc.replace("|", "/")
        lines.append(f"| `{key.name}` | {key.type_words().replace('|', 'or')} | {default} | {doc}{choices} |")
    return "\n".join(lines[1:])
