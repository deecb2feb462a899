"""Reading images with Pillow: every Pillow mode to 8-bit RGB, transparency over white, bbox crops, a pixel limit,
and an optional decoded-image cache.

How each Pillow mode becomes 8-bit RGB (one rule for every reader: datasets, `check-data`, `predict`, pictures):

- 8-bit modes (`1`, `L`, `P`, `RGB`, `RGBX`, `CMYK`, `YCbCr`, `LAB`, `HSV`) go through Pillow's own conversion;
  modes with alpha (`RGBA`, `RGBa`, `LA`, `La`, `PA`) and images with a transparency key are composited over
  white, so transparent emoji and logos do not turn black.
- 16-bit integer greyscale (`I;16`, `I;16L`, `I;16B`, `I;16N`): the full 0..65535 range maps to 0..255 by keeping
  the high byte (v // 256), exactly what Pillow does itself for 16-bit RGB/RGBA/LA PNGs (which it opens as 8-bit
  `RGB`/`RGBA`), so greyscale and colour 16-bit files of one dataset agree.
- 32-bit integer (`I`): Pillow widens 16-bit and smaller integer samples into this mode, so values within 0..65535
  are 16-bit samples (v // 256, as above); an image with any value outside 0..65535 is stretched min-max (its
  smallest value -> 0, its largest -> 255).
- 32-bit float (`F`): values within [0, 1] map to 0..255 (v * 255, rounded); otherwise min-max over the finite
  values. NaN becomes 0; +inf / -inf become 255 / 0. A constant image outside [0, 1] becomes black.
- Any other mode is refused with a `DatasetError` naming the file and the mode (never a silent guess).

Before the pixels are decoded, the image size from the header is checked against a pixel limit (`max_pixels`,
default 50 megapixels, or the environment variable `LOOKALIKE_MAX_PIXELS`: a number, or `none` for no limit): a
larger image is refused with a `DatasetError` instead of doubling the memory of a training run.

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
from typing import Literal, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from lookalike.errors import ArgumentError, ConfigError, DatasetError

__all__ = ["read_image", "read_image_array", "to_rgb_array", "image_size", "DecodedImageCache", "BBox",
           "SUPPORTED_MODES", "DEFAULT_MAX_PIXELS", "MAX_PIXELS_ENV", "resolve_max_pixels", "check_pixel_limit"]

BBox = tuple[float, float, float, float]  # (x1, y1, x2, y2) in pixels: left, top, right, bottom
MaxPixels = Union[int, None, Literal["default"]]  # "default": $LOOKALIKE_MAX_PIXELS, else DEFAULT_MAX_PIXELS

DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS_ENV = "LOOKALIKE_MAX_PIXELS"

_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)
_EIGHT_BIT_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_HIGH_DEPTH_MODES = _SIXTEEN_BIT_MODES | {"I", "F"}
#: every Pillow mode `read_image` converts (see the module docstring for how); others are refused
SUPPORTED_MODES = tuple(sorted(_EIGHT_BIT_MODES | _ALPHA_MODES | _HIGH_DEPTH_MODES))


def resolve_max_pixels(max_pixels: MaxPixels = "default") -> int | None:
    """The pixel limit to apply: `max_pixels` itself, or for "default" $LOOKALIKE_MAX_PIXELS (a number, or "none"
    / "0" for no limit), else `DEFAULT_MAX_PIXELS`. None means no limit."""
    if max_pixels == "default":
        raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not raw:
            return DEFAULT_MAX_PIXELS
        if raw.lower() in ("none", "0"):
            return None
        try:
            return resolve_max_pixels(int(float(raw)))
        except (ValueError, ArgumentError):
            raise ConfigError(f"environment variable {MAX_PIXELS_ENV}={raw!r} is not a pixel count; set it to a "
                              "positive number such as 100000000, or to 'none' for no limit.") from None
    if max_pixels is None:
        return None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise ArgumentError(f"max_pixels must be a positive number of pixels, None (no limit) or 'default'; got "
                            f"{max_pixels!r}")
    return int(max_pixels)


def _allow_in_pillow(limit: int | None) -> None:
    """Raise Pillow's own decompression-bomb limit to ours when ours is higher (it only ever goes up), so the
    limit the user chose is the one that applies."""
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and (limit is None or limit > current):
        Image.MAX_IMAGE_PIXELS = limit


def check_pixel_limit(path: str | os.PathLike, size: tuple[int, int], max_pixels: MaxPixels = "default") -> None:
    """`DatasetError` when an image of `size` = (width, height) has more pixels than the limit."""
    limit = resolve_max_pixels(max_pixels)
    width, height = size
    if limit is not None and width * height > limit:
        raise DatasetError(
            f"image {path} is {width} x {height} = {width * height:,} pixels, above the limit of {limit:,} "
            f"pixels (decoding it needs {width * height * 3 / 1e9:.1f} GB); shrink the image, or raise the limit "
            f"with the environment variable {MAX_PIXELS_ENV}=<pixels> ('none' for no limit), "
            "`check-data --max-pixels N`, or the max_pixels argument of the data functions."
        )


def _stretch(values: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Min-max over the finite values to 0..255 (float); a constant image becomes 0."""
    low, high = float(values[finite].min()), float(values[finite].max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return (values.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))


def _high_depth_to_grey(image: Image.Image) -> np.ndarray:
    """uint8 HxW pixels of a 16-bit, 32-bit integer or 32-bit float image, by the rules of the module docstring."""
    values = np.asarray(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        return (values.astype(np.uint16) >> 8).astype(np.uint8)
    if values.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    if image.mode == "I":
        if values.min() >= 0 and values.max() <= 65535:
            return (values >> 8).astype(np.uint8)
        scaled = _stretch(values, np.ones(values.shape, dtype=bool))
    else:  # "F"
        finite = np.isfinite(values)
        if not finite.any():
            scaled = np.zeros(values.shape, dtype=np.float32)
        elif values[finite].min() >= 0.0 and values[finite].max() <= 1.0:
            scaled = values.astype(np.float32) * np.float32(255.0)
        else:
            scaled = _stretch(values, finite)
        scaled = np.where(np.isnan(values), 0.0, np.where(np.isposinf(values), 255.0,
                                                          np.where(np.isneginf(values), 0.0, scaled)))
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def _over_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(image: Image.Image, where: str = "an image in memory") -> Image.Image:
    """A new 8-bit RGB image (see the module docstring for each mode); transparency goes over white."""
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        grey = _high_depth_to_grey(image)
        key = image.info.get("transparency")
        if isinstance(key, (int, float)) and not isinstance(key, bool):  # a transparent grey value (tRNS)
            grey = np.where(np.asarray(image) == key, np.uint8(255), grey)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode not in _EIGHT_BIT_MODES and mode not in _ALPHA_MODES:
        raise DatasetError(f"{where} has the Pillow mode {mode!r}, which lookalike cannot convert to RGB "
                           f"(supported: {', '.join(SUPPORTED_MODES)}); save it as 8-bit or 16-bit RGB or "
                           "greyscale (PNG, JPEG or TIFF) first.")
    if mode == "La":  # premultiplied alpha: Pillow converts it only to LA
        image = image.convert("LA")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _over_white(image)
    return image.convert("RGB")


def read_image(path: str | os.PathLike, bbox: BBox | None = None, *,
               max_pixels: MaxPixels = "default") -> Image.Image:
    """The image at `path` as 8-bit RGB, cropped to `bbox` = (x1, y1, x2, y2) when given; `DatasetError` if
    unusable or larger than `max_pixels` (checked from the header, before decoding; None = no limit)."""
    limit = resolve_max_pixels(max_pixels)
    _allow_in_pillow(limit)
    try:
        with Image.open(path) as opened:
            check_pixel_limit(path, opened.size, limit)
            image = _to_rgb(opened, f"image {path}")  # always a new, fully decoded image (convert copies)
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}; check the 'path' column and the dataset root") from None
    except IsADirectoryError:
        raise DatasetError(f"image path {path} is a folder, not a file; fix the 'path' column") from None
    except Image.DecompressionBombError as error:
        raise DatasetError(f"image {path} is too large to decode ({error}); shrink it or raise the pixel limit "
                           f"with {MAX_PIXELS_ENV}=<pixels>") from None
    except _DECODE_ERRORS as error:
        raise DatasetError(
            f"cannot decode image {path}: {error}; the file is corrupt or not an image: "
            "replace it or drop its row from the CSV"
        ) from None
    if bbox is not None:
        image = image.crop(tuple(int(round(float(v))) for v in bbox))
    return image


def read_image_array(path: str | os.PathLike, bbox: BBox | None = None, *,
                     max_pixels: MaxPixels = "default") -> np.ndarray:
    """`read_image` as a uint8 HxWx3 numpy array."""
    return np.array(read_image(path, bbox, max_pixels=max_pixels), dtype=np.uint8)  # a writable copy


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
    `max_pixels` is the pixel limit of `read_image`.
    """

    def __init__(self, paths: Sequence[str], bboxes: Sequence[BBox | None] | None = None,
                 max_bytes: int = 2 * 1024**3, *, max_pixels: MaxPixels = "default") -> None:
        self.paths = [str(p) for p in paths]
        self.bboxes = list(bboxes) if bboxes is not None else [None] * len(self.paths)
        if len(self.bboxes) != len(self.paths):
            raise ArgumentError(f"DecodedImageCache: {len(self.paths)} paths but {len(self.bboxes)} bboxes; pass "
                                "one bbox (or None) per path")
        self.max_bytes = int(max_bytes)
        self.max_pixels = resolve_max_pixels(max_pixels)
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
        array = read_image_array(self.paths[index], self.bboxes[index], max_pixels=self.max_pixels)
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
