"""Config-driven pipelines (the only place that knows YAML configs, registries and Lightning).

    from lookalike.pipelines import train, validate, predict
    result = train("triplet", ["dataset_root=/data/cars", "max_epochs=5"])

Importing this package is light: the pipelines (and Lightning) load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["train", "validate", "predict", "load_config", "registry_listing"]

_WHERE = {
    "train": "lookalike.pipelines.training",
    "validate": "lookalike.pipelines.validation",
    "predict": "lookalike.pipelines.prediction",
    "load_config": "lookalike.pipelines.config",
    "registry_listing": "lookalike.pipelines.commands",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'lookalike.pipelines' has no attribute {name!r}")
