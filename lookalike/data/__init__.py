"""Layer 1: the dataset CSV format and its checks, datasets of item dicts, images, transforms, samplers.

Names are imported lazily (on first use), so `lookalike.data.validation` and the `check-data` command do not
pay for importing torch and torchvision.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from lookalike.data.datasets import ImageDataset, train_and_validation_datasets
    from lookalike.data.images import DecodedImageCache, read_image
    from lookalike.data.samplers import BalanceSampler, CategoryBalanceSampler, DistinctCategoryBalanceSampler
    from lookalike.data.texts import PadCollate, TextDataset
    from lookalike.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, get_transforms
    from lookalike.data.validation import DatasetSummary, check_dataset, format_summary, load_dataset_table

_WHERE = {
    "BalanceSampler": "samplers",
    "CategoryBalanceSampler": "samplers",
    "DistinctCategoryBalanceSampler": "samplers",
    "DatasetSummary": "validation",
    "check_dataset": "validation",
    "format_summary": "validation",
    "load_dataset_table": "validation",
    "DecodedImageCache": "images",
    "read_image": "images",
    "ImageDataset": "datasets",
    "TextDataset": "texts",
    "PadCollate": "texts",
    "train_and_validation_datasets": "datasets",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "denormalize": "transforms",
    "get_transforms": "transforms",
}

__all__ = sorted([*_WHERE, "example_dataset_root", "example_texts_root"])


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'lookalike.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lookalike.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def example_dataset_root() -> Path:
    """The built-in example dataset (200 emoji labels, 64x64 PNGs, df.csv) shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "assets" / "emoji_mini"


def example_texts_root() -> Path:
    """The built-in text dataset (emoji names, aliases and names in 7 more languages; df.csv) in the package."""
    return Path(__file__).resolve().parent.parent / "assets" / "emoji_texts"
