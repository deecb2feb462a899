"""Reading images with Pillow: RGB, transparency over white, bbox crops, and an optional decoded-image cache.

Small images (thumbnails, crops, 64 px emoji) cost more to decode than to train on. `DecodedImageCache` keeps
them decoded as uint8 HxWx3 numpy arrays, so each distinct (file, bbox) is decoded once.

Cache and DataLoader workers. A worker process gets a copy of the dataset (and of its cache) when it starts;
whatever a worker decodes afterwards stays in that worker, so with N workers each image would be decoded N
times and held N times. Call `preload()` in the main process before the DataLoader starts its workers: with the
default "fork" start method (Linux) the workers then share the already decoded arrays copy-on-write (the
pixel buffers are never written to, so their memory pages stay shared), and nothing is decoded again. With "spawn" (macOS,
Windows) the preloaded cache is pickled to each worker once instead.

This module imports no torch, so validating a CSV stays fast.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from lookalike.errors import DatasetError

__all__ = ["read_image", "read_image_array", "to_rgb_array", "image_size", "DecodedImageCache", "BBox"]

BBox = tuple[float, float, float, float]  # (x1, y1, x2, y2) in pixels: left, top, right, bottom

_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited over white (so transparent emoji and logos do not turn black)."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def read_image(path: str | os.PathLike, bbox: BBox | None = None) -> Image.Image:
    """The image at `path` as RGB, cropped to `bbox` = (x1, y1, x2, y2) when given; `DatasetError` if unusable."""
    try:
        with Image.open(path) as opened:
            image = _to_rgb(opened)  # always a new, fully decoded image (convert copies)
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}; check the 'path' column and the dataset root") from None
    except IsADirectoryError:
        raise DatasetError(f"image path {path} is a folder, not a file; fix the 'path' column") from None
    except _DECODE_ERRORS as error:
        raise DatasetError(
            f"cannot decode image {path}: {error}; the file is corrupt or not an image: "
            "replace it or drop its row from the CSV"
        ) from None
    if bbox is not None:
        image = image.crop(tuple(int(round(float(v))) for v in bbox))
    return image


def read_image_array(path: str | os.PathLike, bbox: BBox | None = None) -> np.ndarray:
    """`read_image` as a uint8 HxWx3 numpy array."""
    return np.array(read_image(path, bbox), dtype=np.uint8)  # a writable copy


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """A PIL image in any mode as uint8 HxWx3 pixels, by the same rules as `read_image` (for images in memory)."""
    return np.array(_to_rgb(image), dtype=np.uint8)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels (Pillow opens lazily)."""
    with Image.open(path) as opened:
        return opened.size


class DecodedImageCache:
    """Decoded (and cropped) images kept in memory as uint8 HxWx3 arrays, up to `max_bytes` in all.

    `get(i)` returns item `i`'s pixels, decoding its file only the first time; rows that share a file and a
    bbox share one array. Items beyond the byte budget are decoded again on every read. The arrays are
    read-only: copy before modifying. See the module docstring for `preload()` and DataLoader workers.
    """

    def __init__(self, paths: Sequence[str], bboxes: Sequence[BBox | None] | None = None,
                 max_bytes: int = 2 * 1024**3) -> None:
        self.paths = [str(p) for p in paths]
        self.bboxes = list(bboxes) if bboxes is not None else [None] * len(self.paths)
        if len(self.bboxes) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.bboxes)} bboxes")
        self.max_bytes = int(max_bytes)
        self.n_bytes = 0
        self.n_decoded = 0  # how many times a file was decoded (for tests and diagnostics)
        self._arrays: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.paths)

    def _key(self, index: int) -> tuple:
        bbox = self.bboxes[index]
        return (self.paths[index], None if bbox is None else tuple(float(v) for v in bbox))

    def __contains__(self, index: int) -> bool:
        return self._key(index) in self._arrays

    def get(self, index: int) -> np.ndarray:
        """The decoded image of item `index` as a read-only uint8 HxWx3 array."""
        key = self._key(index)
        array = self._arrays.get(key)
        if array is not None:
            return array
        array = read_image_array(self.paths[index], self.bboxes[index])
        array.setflags(write=False)
        with self._lock:
            self.n_decoded += 1
            if key not in self._arrays and self.n_bytes + array.nbytes <= self.max_bytes:
                self._arrays[key] = array
                self.n_bytes += array.nbytes
        return array

    def preload(self) -> "DecodedImageCache":
        """Decode every item now, in this process, until the byte budget is full; returns self."""
        for index in range(len(self.paths)):
            if self.n_bytes >= self.max_bytes:
                break
            self.get(index)
        return self
