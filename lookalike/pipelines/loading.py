"""Dataset tables and datasets for the pipelines, built with the data layer from the config's data keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from lookalike.data import schema
from lookalike.errors import ConfigError, DatasetError

if TYPE_CHECKING:  # imported where used: the CLI starts without them
    import numpy as np
    import pandas as pd

__all__ = ["dataset_root", "load_table", "split_table", "HELD_OUT_FILE", "holdout_labels", "train_rows",
           "make_dataset", "label_to_category", "Datasets",
           "build_datasets", "extractor_modality", "text_tokenizer", "refuse_texts"]


def extractor_modality(cfg: Mapping) -> str:
    """"text" when the config's extractor takes texts (its class says ``modality = "text"``), else "image"."""
    from lookalike.pipelines.registry import EXTRACTORS_REGISTRY

    block = cfg.get("extractor")
    if not isinstance(block, Mapping) or not block.get("name"):  # e.g. a partial config of a helper
        return "image"
    cls, _ = EXTRACTORS_REGISTRY.resolve(block["name"], "extractor.name")
    return "text" if getattr(cls, "modality", "image") == "text" else "image"


def text_tokenizer(cfg: Mapping):
    """The tokenizer of the config's text extractor (built from its arguments, without loading the weights)."""
    from lookalike.pipelines.registry import EXTRACTORS_REGISTRY

    cls, fixed = EXTRACTORS_REGISTRY.resolve(cfg["extractor"]["name"], "extractor.name")
    make = getattr(cls, "tokenizer_for", None)
    if make is None:
        raise ConfigError(f"extractor: {cfg['extractor']['name']} takes texts but has no tokenizer_for(**args) "
                          "class method, which the text datasets tokenise with.")
    from lookalike.errors import LookalikeError

    try:
        return make(**{**fixed, **dict(cfg["extractor"].get("args") or {})})
    except LookalikeError as exc:  # as build_component reports the extractor's own errors
        raise type(exc)(f"extractor ({cfg['extractor']['name']}): {exc}") from None


def refuse_texts(cfg: Mapping, what: str) -> None:
    """A ConfigError when the config's extractor takes texts: ``what`` works on images only."""
    if extractor_modality(cfg) == "text":
        raise ConfigError(f"{what} works on images only, and this run's extractor "
                          f"({cfg['extractor']['name']}) takes texts; text runs support train, validate, predict, "
                          "index, search and serve.")


def dataset_root(cfg: Mapping) -> Path:
    """``cfg['dataset_root']``, or the built-in example data when it is null (texts for a text extractor)."""
    if cfg.get("dataset_root") is None:
        from lookalike.data import example_dataset_root, example_texts_root

        return Path(example_texts_root() if extractor_modality(cfg) == "text" else example_dataset_root())
    root = Path(cfg["dataset_root"]).expanduser()
    if root.is_file():
        raise ConfigError(f"dataset_root: {str(root)!r} is a file, but a folder is expected: point it at the folder "
                          f"holding {cfg.get('csv', 'df.csv')} and the images (here probably {str(root.parent)!r}; "
                          "name the CSV with the csv key).")
    if not root.is_dir():
        raise ConfigError(f"dataset_root: folder {str(root)!r} does not exist; point it at the folder holding "
                          f"{cfg.get('csv', 'df.csv')} (or set dataset_root: null for the built-in example data).")
    return root


def load_table(cfg: Mapping, modality: str | None = None):
    """The validated dataset table of ``dataset_root/csv`` (column ``text`` for a text extractor, else ``path``
    with its images checked)."""
    from lookalike.data.validation import load_dataset_table

    return load_dataset_table(dataset_root(cfg), cfg["csv"], check_images=cfg["check_images"],
                              max_pixels=max_pixels(cfg), modality=modality or extractor_modality(cfg))


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


#: the run-folder file that records the held-out labels of a run trained with ``holdout_labels``
HELD_OUT_FILE = "holdout_labels.json"


def holdout_labels(train_part: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """The train labels held out from extractor training (``holdout_labels`` of the config): a seeded draw of
    ``round(fraction * n_labels)`` of them (at least 2), a pure function of (labels, fraction, seed) so that
    training and ``train-pairwise`` agree."""
    import numpy as np

    labels = np.unique(train_part[schema.LABEL].to_numpy(np.int64))
    n = int(round(float(fraction) * len(labels)))
    if n < 2:
        raise ConfigError(f"holdout_labels: {fraction} of the {len(labels)} train labels is {n}; a re-ranker needs "
                          "at least 2 held-out labels to mine pairs from: raise the fraction (0.2 is typical).")
    if n >= len(labels) - 1:
        raise ConfigError(f"holdout_labels: {fraction} holds out {n} of the {len(labels)} train labels, leaving "
                          "fewer than 2 to train on; lower the fraction (0.2 is typical).")
    return np.sort(np.random.default_rng([int(seed), 0x401D]).choice(labels, size=n, replace=False))


def train_rows(table: pd.DataFrame, cfg: Mapping, origin: str, *, held_out: bool = False) -> pd.DataFrame:
    """The train split without its held-out labels (``held_out=False``: what the extractor trains on) or only
    them (``held_out=True``: what ``train-pairwise`` mines)."""
    part = split_table(table, "train", origin)
    fraction = float(cfg.get("holdout_labels") or 0.0)
    if fraction <= 0:
        if held_out:
            raise ConfigError("holdout_labels: the run held out no train labels, so there are none to mine; "
                              "train the extractor with holdout_labels: 0.2, or set mine_from: train.")
        return part
    keep = part[schema.LABEL].isin(holdout_labels(part, fraction, cfg["seed"]))
    return part[keep if held_out else ~keep].reset_index(drop=True)


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
    modality: str = "image"
    held_out: Any = None  # the train labels left out of training (holdout_labels), else None


def build_datasets(cfg: Mapping, *, train: bool) -> Datasets:
    """The validation dataset (transforms_val) and, with ``train``, the training dataset (transforms_train) and
    its label -> category map, from one load of ``dataset_root/csv``. For a text extractor: `TextDataset`s
    tokenised by its tokenizer (the transforms do not apply)."""
    from lookalike.pipelines.builders import build_transforms

    modality = extractor_modality(cfg)
    table = load_table(cfg, modality)
    origin = str(dataset_root(cfg) / cfg["csv"])
    if modality == "text":
        from lookalike.data.texts import TextDataset

        tokenizer = text_tokenizer(cfg)

        def make(part, which):
            return TextDataset(part, tokenizer)
    else:
        def make(part, which):
            return make_dataset(part, build_transforms(cfg, which), cfg)
    train_ds = make(train_rows(table, cfg, origin), "transforms_train") if train else None
    val_ds = make(split_table(table, "validation", origin), "transforms_val")
    held_out = None
    if train and float(cfg.get("holdout_labels") or 0.0) > 0:
        held_out = holdout_labels(split_table(table, "train", origin), cfg["holdout_labels"], cfg["seed"])
    return Datasets(train_ds, val_ds, origin, label_to_category(train_ds) if train_ds is not None else None,
                    modality, held_out)
