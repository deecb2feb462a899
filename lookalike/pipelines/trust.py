"""The config trust model: which configs may make lookalike import code that is not in its registries.

A component block may name any callable by import path (``name: my_pkg.models:MyNet``); importing a module runs
its code. Such paths are followed when they come from the user: a config dict in Python, a YAML file the user
passes, a shipped config, or a ``key=value`` override. A config that a run wrote (a run folder's
``config.yaml``, also found through ``--resume``, or any file carrying the header lookalike writes into run
folders) may have been shared by someone else, so its import paths are refused unless the user vouches for it:
``--trust-config`` / ``trust_config=True``, or the modules are listed in ``LOOKALIKE_TRUSTED_IMPORTS``
(comma-separated module names or package prefixes; ``*`` trusts every module). Registered names (including
names a user's own code registered) are always allowed: the registries only hold code already imported.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator, Mapping

from lookalike.errors import ConfigError
from lookalike.pipelines.config_schema import NESTED_BLOCKS, SCHEMA
from lookalike.pipelines.registry import REGISTRIES

__all__ = ["TRUST_ENV", "RUN_CONFIG_HEADER", "foreign_imports", "env_allows", "check_trust"]

#: environment variable: comma-separated modules (or package prefixes) whose import paths any config may name
TRUST_ENV = "LOOKALIKE_TRUSTED_IMPORTS"

#: first line of the config a run writes into its folder (marks a config as a run's, wherever it was copied)
RUN_CONFIG_HEADER = "# resolved config written by lookalike"


def _block_name(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return value.get("name")
    return None


def foreign_imports(cfg: Mapping) -> Iterator[tuple[str, str]]:
    """(key path, import path) of every component a config names by import path rather than a registered name."""
    for block, key in SCHEMA.items():
        if not key.registry or block not in cfg:
            continue
        value = cfg[block]
        yield from _foreign(block, block, value)
        args = value.get("args") if isinstance(value, Mapping) else None
        for (outer, arg), nested in NESTED_BLOCKS.items():
            if outer == block and isinstance(args, Mapping) and arg in args:
                yield from _foreign(nested, f"{block}.args.{arg}", args[arg])


def _foreign(registry: str, where: str, value: Any) -> Iterator[tuple[str, str]]:
    name = _block_name(value)
    if isinstance(name, str) and ":" in name and name not in REGISTRIES[registry]:
        yield f"{where}.name", name


def env_allows(path: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``LOOKALIKE_TRUSTED_IMPORTS`` lists the module of ``path`` (or a package above it, or ``*``)."""
    env = os.environ if env is None else env
    allowed = [p.strip() for p in env.get(TRUST_ENV, "").split(",") if p.strip()]
    module = path.partition(":")[0]
    return any(p == "*" or module == p or module.startswith(p + ".") for p in allowed)


def check_trust(cfg: Mapping, *, trusted_source: bool, origin: str, from_overrides: Iterable[str] = (),
                trust_config: bool = False) -> None:
    """Refuses (ConfigError, before anything is imported) import paths of an untrusted config that neither the
    command line, ``trust_config`` nor ``LOOKALIKE_TRUSTED_IMPORTS`` vouches for."""
    if trusted_source or trust_config:
        return
    vouched = set(from_overrides)
    refused = [(where, path) for where, path in foreign_imports(cfg) if path not in vouched and not env_allows(path)]
    if not refused:
        return
    listed = ", ".join(f"{where}: {path}" for where, path in refused)
    modules = ",".join(dict.fromkeys(path.partition(":")[0] for _, path in refused))
    raise ConfigError(
        f"config {origin} was written by a lookalike run (it may come from someone else's run folder) and names "
        f"code outside lookalike's registries ({listed}); importing it would run that code, so it was not "
        "imported. If you trust this run folder, pass --trust-config (Python: trust_config=True), or allow these "
        f"modules with the environment variable {TRUST_ENV}={modules}, or name the component yourself on the "
        "command line (e.g. extractor.name=...)."
    )
