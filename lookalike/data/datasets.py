"""Datasets over a validated dataset table: each item is a dict (see `lookalike.data.schema` for the keys)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from lookalike.data import schema
from lookalike.data.images import BBox, DecodedImageCache, read_image
from lookalike.data.validation import load_dataset_table

__all__ = ["ImageDataset", "train_and_validation_datasets"]


def _bboxes(table: pd.DataFrame) -> list[BBox | None]:
    """Per row (x1, y1, x2, y2), or None where the row has no box (or the table has no box columns)."""
    if not set(schema.BBOX_COLUMNS) <= set(table.columns):
        return [None] * len(table)
    boxes = table[[schema.X1, schema.Y1, schema.X2, schema.Y2]].to_numpy(dtype=float)
    present = ~np.isnan(boxes).any(axis=1)
    return [tuple(box) if ok else None for box, ok in zip(boxes.tolist(), present)]


class ImageDataset(Dataset):
    """Images of a dataset table (as returned by `load_dataset_table`), one item dict per row.

    Items: `input` (the transformed image; a float CxHxW tensor in [0, 1] without a transform), `label`,
    `index` (row position), `path`, `is_query`, `is_gallery`, and `category` / `sequence` when the table
    has those columns. `cache_images` keeps decoded images in memory (see `DecodedImageCache`).
    """

    def __init__(self, table: pd.DataFrame, transform: Callable | None = None, *, cache_images: bool = False,
                 cache_max_bytes: int = 2 * 1024**3) -> None:
        self.table = table.reset_index(drop=True)
        self.transform = transform
        self.paths = self.table[schema.PATH].astype(str).tolist()
        self.labels = self.table[schema.LABEL].to_numpy(dtype=np.int64)
        n = len(self.table)
        self.is_query = self._bool_column(schema.IS_QUERY, n)
        self.is_gallery = self._bool_column(schema.IS_GALLERY, n)
        self.categories = (self.table[schema.CATEGORY].astype(str).to_numpy()
                           if schema.CATEGORY in self.table.columns else None)
        self.sequences = (self.table[schema.SEQUENCE].astype(str).to_numpy()
                          if schema.SEQUENCE in self.table.columns else None)
        self.label_to_category = (dict(zip(self.labels.tolist(), self.categories.tolist()))
                                  if self.categories is not None else None)
        self.bboxes = _bboxes(self.table)
        self.cache = DecodedImageCache(self.paths, self.bboxes, cache_max_bytes) if cache_images else None

    def _bool_column(self, column: str, n: int) -> np.ndarray:
        if column not in self.table.columns:
            return np.zeros(n, dtype=bool)
        return self.table[column].fillna(False).astype(bool).to_numpy()

    def __len__(self) -> int:
        return len(self.table)

    def read(self, index: int) -> tv_tensors.Image:
        """The decoded (cropped) image of row `index` as a uint8 CxHxW image tensor (from the cache if on)."""
        if self.cache is not None:
            return tv_tensors.Image(self.cache.get(index))
        pixels = np.array(read_image(self.paths[index], self.bboxes[index]), dtype=np.uint8)
        return tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1))

    def __getitem__(self, index: int) -> dict:
        image = self.read(index)
        if self.transform is not None:
            image = self.transform(image)
        else:
            image = image.as_subclass(torch.Tensor).float().div(255)
        item = {
            schema.INPUT_KEY: image,
            schema.LABEL_KEY: int(self.labels[index]),
            schema.INDEX_KEY: int(index),
            schema.PATH_KEY: self.paths[index],
            schema.IS_QUERY_KEY: bool(self.is_query[index]),
            schema.IS_GALLERY_KEY: bool(self.is_gallery[index]),
        }
        if self.categories is not None:
            item[schema.CATEGORY_KEY] = self.categories[index]
        if self.sequences is not None:
            item[schema.SEQUENCE_KEY] = self.sequences[index]
        return item


def train_and_validation_datasets(
    root: str | os.PathLike, csv: str = "df.csv", transforms_train: Callable | None = None,
    transforms_val: Callable | None = None, *, cache_images: bool = False, check_images: str = "exists",
) -> tuple[ImageDataset, ImageDataset]:
    """The train and validation datasets of `root/csv`, validated first."""
    table = load_dataset_table(Path(root), csv, check_images=check_images)
    split = table[schema.SPLIT]
    train = ImageDataset(table[split == schema.SPLIT_TRAIN], transforms_train, cache_images=cache_images)
    val = ImageDataset(table[split == schema.SPLIT_VALIDATION], transforms_val, cache_images=cache_images)
    return train, val
