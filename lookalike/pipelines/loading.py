"""Dataset tables and datasets for the pipelines, built with the data layer from the config's data keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from lookalike.data import schema
from lookalike.errors import ConfigError, DatasetError

__all__ = ["dataset_root", "load_table", "split_table", "make_dataset", "label_to_category", "Datasets",
           "build_datasets"]


def dataset_root(cfg: Mapping) -> Path:
    """``cfg['dataset_root']``, or the built-in example data when it is null."""
    if cfg.get("dataset_root") is None:
        from lookalike.data import example_dataset_root

        return Path(example_dataset_root())
    root = Path(cfg["dataset_root"]).expanduser()
    if root.is_file():
        raise ConfigError(f"dataset_root: {str(root)!r} is a file, but a folder is expected: point it at the folder "
                          f"holding {cfg.get('csv', 'df.csv')} and the images (here probably {str(root.parent)!r}; "
                          "name the CSV with the csv key).")
    if not root.is_dir():
        raise ConfigError(f"dataset_root: folder {str(root)!r} does not exist; point it at the folder holding "
                          f"{cfg.get('csv', 'df.csv')} (or set dataset_root: null for the built-in example data).")
    return root


def load_table(cfg: Mapping):
    """The validated dataset table of ``dataset_root/csv``."""
    from lookalike.data.validation import load_dataset_table

    return load_dataset_table(dataset_root(cfg), cfg["csv"], check_images=cfg["check_images"],
                              max_pixels=max_pixels(cfg))


def max_pixels(cfg: Mapping):
    """The data layer's pixel limit for ``cfg['max_pixels']`` (null: its default, 0: none)."""
    value = cfg.get("max_pixels")
    return "default" if value is None else (None if value == 0 else int(value))


def split_table(table, split: str, origin: str):
    """Rows of one split, renumbered from 0; DatasetError when the split is empty."""
    part = table[table[schema.SPLIT] == split].reset_index(drop=True)
    if len(part) == 0:
        raise DatasetError(f"{origin}: no rows with {schema.SPLIT}={split!r}; the pipeline needs both "
                           f"{schema.SPLIT_TRAIN!r} and {schema.SPLIT_VALIDATION!r} rows.")
    return part


def make_dataset(table, transform, cfg: Mapping, *, cache: bool | None = None):
    from lookalike.data.datasets import ImageDataset

    return ImageDataset(table, transform=transform, cache_images=cfg["cache_images"] if cache is None else cache,
                        max_pixels=max_pixels(cfg))


def label_to_category(dataset: Any) -> dict | None:
    mapping = getattr(dataset, "label_to_category", None)
    return dict(mapping) if mapping else None


@dataclass
class Datasets:
    """The datasets of a train or validate run: ``train`` is None for validation only."""

    train: Any
    val: Any
    origin: str  # dataset_root/csv, for messages
    label2category: dict | None = None


def build_datasets(cfg: Mapping, *, train: bool) -> Datasets:
    """The validation dataset (transforms_val) and, with ``train``, the training dataset (transforms_train) and
    its label -> category map, from one load of ``dataset_root/csv``."""
    from lookalike.pipelines.builders import build_transforms

    table = load_table(cfg)
    origin = str(dataset_root(cfg) / cfg["csv"])
    train_ds = None
    if train:
        train_ds = make_dataset(split_table(table, "train", origin), build_transforms(cfg, "transforms_train"), cfg)
    val_ds = make_dataset(split_table(table, "validation", origin), build_transforms(cfg, "transforms_val"), cfg)
    return Datasets(train_ds, val_ds, origin, label_to_category(train_ds) if train_ds is not None else None)
