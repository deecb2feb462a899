"""Run configs: reading (a dict, a YAML file, a run folder or a shipped name), ``key=value`` overrides, defaults,
and the checks before anything runs (``load_config``).

A config is one YAML mapping. Component blocks are ``{name: ..., args: {...}}`` resolved through the registries
in ``lookalike.pipelines.registry``; everything is checked up front and every problem is reported in one
``ConfigError`` whose lines name the config key path. The keys themselves are ``config_schema.SCHEMA``; the
checks are ``config_checks``.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from lookalike.errors import ConfigError, suggest
from lookalike.pipelines.config_checks import (
    check_args,
    check_components,
    check_values,
    config_error,
)
from lookalike.pipelines.config_schema import (  # re-exported: the schema is part of this module's interface
    INFERRED_ARGS,
    INPUT_PATH_KEYS,
    NESTED_BLOCKS,
    PATH_KEYS,
    REQUIRED,
    SCHEMA,
    Key,
    schema_markdown,
)
from lookalike.pipelines.trust import RUN_CONFIG_HEADER, check_trust, foreign_imports

__all__ = [
    "SCHEMA",
    "Key",
    "CONFIGS_DIR",
    "REQUIRED",
    "ConfigSource",
    "shipped_configs",
    "read_config",
    "parse_overrides",
    "apply_overrides",
    "resolve_config",
    "check_args",
    "check_components",
    "load_config",
    "yaml_load",
    "yaml_dump",
    "INFERRED_ARGS",
    "NESTED_BLOCKS",
    "schema_markdown",
]

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


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


# --- reading ------------------------------------------------------------------------------------------
def shipped_configs() -> dict[str, Path]:
    """Ready-made configs shipped with lookalike, by name (``default``, ``triplet``, ...)."""
    return {p.stem: p for p in sorted(CONFIGS_DIR.glob("*.yaml"))}


@dataclass
class ConfigSource:
    """A raw config and where it came from (a file, a shipped name, a run folder or a dict)."""

    raw: dict
    origin: str
    run_dir: Path | None = None
    #: False for a config a run wrote (a run folder's config.yaml, or a file with its header): it may come from
    #: someone else, so its import paths are followed only when the user vouches for it (see ``trust``)
    trusted: bool = True
    #: the folder of the YAML file (relative input paths in it are relative to this folder); None for a dict
    folder: Path | None = None


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
        text = path.read_text(encoding="utf-8")
        raw = yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: the top level must be a mapping of keys, got {type(raw).__name__}.")
    written_by_a_run = run_dir is not None or text.startswith(RUN_CONFIG_HEADER)
    return ConfigSource(raw, str(path), run_dir.resolve() if run_dir is not None else None,
                        trusted=not written_by_a_run, folder=path.resolve().parent)


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
        if key in PATH_KEYS and not text.strip():
            raise ConfigError(f"override {item!r}: empty path (an unset shell variable?); give a path, or write "
                              f"{key}=null for the default ({SCHEMA[key].doc}).")
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


def _yaml_types(value: Any) -> Any:
    """Tuples as lists, nested: a config given as a Python dict is saved as YAML with the run, and YAML (safe
    dump) has lists, not tuples."""
    if isinstance(value, dict):
        return {k: _yaml_types(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_types(v) for v in value]
    return value


def resolve_config(raw: Mapping, overrides: Iterable[str] = (), origin: str = "<dict>") -> dict:
    """Defaults + raw config + overrides, checked against SCHEMA (keys, types, choices); component names and
    arguments are checked later by ``check_components``. Raises one ConfigError listing every problem."""
    cfg = _yaml_types(copy.deepcopy(dict(raw)))
    for name, key in SCHEMA.items():
        if name not in cfg and key.default is not REQUIRED:
            cfg[name] = copy.deepcopy(key.default)
    apply_overrides(cfg, overrides)
    errors: list[str] = []
    out = check_values(cfg, errors)
    if errors:
        raise config_error(origin, errors)
    return out


def anchor_paths(raw: Mapping, folder: Path | None) -> dict:
    """``raw`` with its relative input paths (dataset_root, checkpoint, predict_source) made relative to the
    folder of the YAML file that names them, so a config works from any working directory."""
    out = dict(raw)
    if folder is None:
        return out
    for key in INPUT_PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value.strip() and not Path(value).expanduser().is_absolute():
            out[key] = str(folder / value)
    return out


def absolute_paths(cfg: dict, origin: str = "<dict>") -> dict:
    """Every path key made absolute (relative ones against the working directory), in place; an empty path is
    an error, never a silent default."""
    for key in PATH_KEYS:
        value = cfg.get(key)
        if not isinstance(value, str):
            continue
        if not value.strip():
            raise ConfigError(f"config {origin}: {key} is an empty string; give a path, or null for the default "
                              f"({SCHEMA[key].doc}).")
        cfg[key] = os.path.abspath(os.path.expanduser(value))
    return cfg


def load_config(config: Mapping | str | Path | None, overrides: Iterable[str] = (), *,
                pipeline: str = "train", trust_config: bool = False) -> tuple[dict, ConfigSource]:
    """Read, override, schema-check and component-check a config for ``pipeline`` (train, validate, predict).

    Import paths (``name: module:attr``) of a config a run wrote are refused before anything is imported unless
    ``trust_config``, the command line or ``LOOKALIKE_TRUSTED_IMPORTS`` vouches for them (see ``trust``). Paths
    come out absolute: relative input paths of a YAML file against its folder, the rest against the working
    directory."""
    overrides = list(overrides)
    source = read_config(config)
    cfg = resolve_config(anchor_paths(source.raw, source.folder), overrides, source.origin)
    absolute_paths(cfg, source.origin)
    check_trust(cfg, trusted_source=source.trusted, origin=source.origin, trust_config=trust_config,
                from_overrides=[path for _, path in foreign_imports(apply_overrides({}, overrides))])
    check_components(cfg, pipeline, source.origin)
    return cfg, source
