"""Reading images with Pillow: RGB, transparency over white, bbox crops, and an optional decoded-image cache.

Small images (thumbnails, crops, 64 px emoji) cost more to decode than to train on; `DecodedImageCache` keeps
them decoded as uint8 CxHxW tensors so each file is decoded once (and the transforms then run on tensors). Call `preload()` in the main process before a
DataLoader starts its workers: forked workers then share the decoded arrays copy-on-write instead of each
decoding (and holding) its own copy.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from lookalike.errors import DatasetError

__all__ = ["read_image", "image_size", "DecodedImageCache", "BBox"]

BBox = tuple[float, float, float, float]  # (x1, y1, x2, y2) in pixels


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited over white (so transparent emoji do not turn black)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def read_image(path: str | os.PathLike, bbox: BBox | None = None) -> Image.Image:
    """The image at `path` as RGB, cropped to `bbox` = (x1, y1, x2, y2) when given."""
    try:
        with Image.open(path) as opened:
            image = _to_rgb(opened)
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}; check the 'path' column and the dataset root") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(
            f"cannot decode image {path}: {error}; the file is corrupt or not an image: "
            "replace it or drop its row from the CSV"
        ) from None
    if bbox is not None:
        image = image.crop(tuple(int(round(v)) for v in bbox))
    return image


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    with Image.open(path) as opened:
        return opened.size


class DecodedImageCache:
    """Decoded (and cropped) images kept in memory as uint8 CxHxW tensors, up to `max_bytes` in all.

    Items beyond the budget are decoded on every read. Each DataLoader worker holds its own copy of what it
    decodes after forking; `preload()` before the workers start avoids that.
    """

    def __init__(self, paths: Sequence[str], bboxes: Sequence[BBox | None] | None = None,
                 max_bytes: int = 2 * 1024**3) -> None:
        self.paths = list(paths)
        self.bboxes = list(bboxes) if bboxes is not None else [None] * len(self.paths)
        self.max_bytes = int(max_bytes)
        self.n_bytes = 0
        self.n_decoded = 0  # how many times a file was decoded (for tests and diagnostics)
        self._arrays: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int) -> torch.Tensor:
        """The decoded image of item `index` as a uint8 CxHxW tensor (shared: do not modify it in place)."""
        array = self._arrays.get(index)
        if array is not None:
            return array
        pixels = np.array(read_image(self.paths[index], self.bboxes[index]), dtype=np.uint8)
        array = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        with self._lock:
            self.n_decoded += 1
            if index not in self._arrays and self.n_bytes + array.numel() <= self.max_bytes:
                self._arrays[index] = array
                self.n_bytes += array.numel()
        return array

    def preload(self) -> "DecodedImageCache":
        """Decode every item now (until the byte budget is reached)."""
        for index in range(len(self.paths)):
            if self.n_bytes >= self.max_bytes:
                break
            self.get(index)
        return self
