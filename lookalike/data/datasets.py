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
from lookalike.data.images import BBox, DecodedImageCache, MaxPixels, read_image_array, resolve_max_pixels
from lookalike.data.validation import load_dataset_table, parse_bool

__all__ = ["LabelledRows", "ImageDataset", "train_and_validation_datasets", "row_bboxes"]

DEFAULT_CACHE_BYTES = 2 * 1024**3


def row_bboxes(table: pd.DataFrame) -> list[BBox | None]:
    """Per row (x1, y1, x2, y2), or None where the row has no box (or the table has no box columns)."""
    if not set(schema.BBOX_COLUMNS) <= set(table.columns):
        return [None] * len(table)
    columns = [schema.X1, schema.Y1, schema.X2, schema.Y2]
    boxes = table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    present = ~np.isnan(boxes).any(axis=1)
    return [tuple(box) if ok else None for box, ok in zip(boxes.tolist(), present)]


def _flags(table: pd.DataFrame, column: str) -> np.ndarray:
    """A boolean column as a numpy bool array: False where the column is absent or the cell is empty."""
    if column not in table.columns:
        return np.zeros(len(table), dtype=bool)
    values = table[column]
    if values.dtype == bool:
        return values.to_numpy(dtype=bool)
    return parse_bool(values)[0]  # a table not made by load_dataset_table: "False" must not become True


class LabelledRows(Dataset):
    """The columns every dataset of a table shares (label, query/gallery flags, category, sequence) and the item
    dict they make; `ImageDataset` and `lookalike.data.texts.TextDataset` add their ``input`` and source."""

    def __init__(self, table: pd.DataFrame) -> None:
        self.table = table.reset_index(drop=True)
        self.labels: np.ndarray = self.table[schema.LABEL].to_numpy(dtype=np.int64)
        self.is_query = _flags(self.table, schema.IS_QUERY)
        self.is_gallery = _flags(self.table, schema.IS_GALLERY)
        self.categories: np.ndarray | None = (self.table[schema.CATEGORY].astype(str).to_numpy(dtype=object)
                                              if schema.CATEGORY in self.table.columns else None)
        self.sequences: np.ndarray | None = (self.table[schema.SEQUENCE].astype(str).to_numpy(dtype=object)
                                             if schema.SEQUENCE in self.table.columns else None)
        self.label_to_category: dict[int, str] | None = (
            dict(zip(self.labels.tolist(), self.categories.tolist())) if self.categories is not None else None
        )

    def __len__(self) -> int:
        return len(self.table)

    def item(self, index: int, value, source_key: str, source: str) -> dict:
        """The item dict of row ``index``: its ``input`` and where it came from (``path`` or ``text``), with the
        row's label, query/gallery flags, category and sequence."""
        item = {
            schema.INPUT_KEY: value,
            schema.LABEL_KEY: int(self.labels[index]),
            schema.INDEX_KEY: index,
            source_key: source,
            schema.IS_QUERY_KEY: bool(self.is_query[index]),
            schema.IS_GALLERY_KEY: bool(self.is_gallery[index]),
        }
        if self.categories is not None:
            item[schema.CATEGORY_KEY] = self.categories[index]
        if self.sequences is not None:
            item[schema.SEQUENCE_KEY] = self.sequences[index]
        return item


class ImageDataset(LabelledRows):
    """Images of a dataset table (as returned by `load_dataset_table`), one item dict per row.

    Items: `input` (the transformed image; a float CxHxW tensor in [0, 1] without a transform), `label`,
    `index` (row position), `path`, `is_query`, `is_gallery` (False on train rows), and `category` /
    `sequence` when the table has those columns. A transform receives a uint8 `tv_tensors.Image` (CxHxW).
    `cache_images` keeps decoded images in memory up to `cache_max_bytes` (see `DecodedImageCache`; call
    `preload()` before a DataLoader with workers starts). `max_pixels` is the pixel limit of `read_image`
    (an image above it raises `DatasetError` before it is decoded).
    """

    def __init__(self, table: pd.DataFrame, transform: Callable | None = None, *, cache_images: bool = False,
                 cache_max_bytes: int = DEFAULT_CACHE_BYTES, max_pixels: MaxPixels = "default") -> None:
        super().__init__(table)
        self.transform = transform
        self.paths: list[str] = self.table[schema.PATH].astype(str).tolist()
        self.bboxes = row_bboxes(self.table)
        self.max_pixels = resolve_max_pixels(max_pixels)
        self.cache = (DecodedImageCache(self.paths, self.bboxes, cache_max_bytes, max_pixels=self.max_pixels)
                      if cache_images else None)

    def preload(self) -> "ImageDataset":
        """Decode every image into the cache now (no-op without `cache_images`); returns self."""
        if self.cache is not None:
            self.cache.preload()
        return self

    def read(self, index: int) -> tv_tensors.Image:
        """The decoded (cropped) image of row `index` as a uint8 CxHxW image tensor (from the cache if on)."""
        if self.cache is not None:
            pixels = self.cache.get(index).copy()  # the cached array stays untouched by any transform
        else:
            pixels = read_image_array(self.paths[index], self.bboxes[index], max_pixels=self.max_pixels)
        return tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1))

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += len(self)
        image = self.read(index)
        if self.transform is not None:
            image = self.transform(image)
        else:
            image = image.as_subclass(torch.Tensor).float().div_(255)
        return self.item(index, image, schema.PATH_KEY, self.paths[index])


def train_and_validation_datasets(
    root: str | os.PathLike, csv: str | os.PathLike = "df.csv", transforms_train: Callable | None = None,
    transforms_val: Callable | None = None, *, cache_images: bool = False,
    cache_max_bytes: int = DEFAULT_CACHE_BYTES, check_images: str = "exists", queries_without_gallery: str = "error",
) -> tuple[ImageDataset, ImageDataset]:
    """The train and validation datasets of `root/csv`, validated first (see `load_dataset_table`)."""
    table = load_dataset_table(Path(root), csv, check_images=check_images,
                               queries_without_gallery=queries_without_gallery)
    split = table[schema.SPLIT]
    kwargs = dict(cache_images=cache_images, cache_max_bytes=cache_max_bytes)
    train = ImageDataset(table[split == schema.SPLIT_TRAIN], transforms_train, **kwargs)
    val = ImageDataset(table[split == schema.SPLIT_VALIDATION], transforms_val, **kwargs)
    return train, val
