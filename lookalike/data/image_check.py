"""Checking image files before a run: is each one an image lookalike can read, within the pixel limit?

Levels (the `check_images` argument of `load_dataset_table`, `check-data --images`):

- "exists": the file exists (a stat per file; nothing is opened).
- "quick": the header parses, the size is within the pixel limit, the mode is one `read_image` converts, and
  the pixels decode at reduced size where the format allows it (JPEG decodes at 1/8 scale through
  `Image.draft`; PNG, TIFF, GIF, WebP decode in full, but without the RGB conversion). Truncated and corrupt
  files fail here. Results are cached on disk keyed by path, modification time and file size, so a second run
  over the same files only stats them.
- "decode": the full decode and RGB conversion every reader does (`read_image`), not cached.

The cache folder is `$LOOKALIKE_IMAGE_CHECK_CACHE` (`off` disables the cache), else
`$XDG_CACHE_HOME/lookalike/image-checks`, else `~/.cache/lookalike/image-checks`: one small JSON file per
dataset CSV, holding only files that passed. A cache that cannot be read or written is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG

from PIL import Image

from lookalike.data.images import SUPPORTED_MODES, MaxPixels, _allow_in_pillow, read_image, resolve_max_pixels
from lookalike.errors import DatasetError

__all__ = ["CHECK_LEVELS", "CACHE_ENV", "ImageCheckReport", "check_image_files", "default_cache_folder",
           "inspect_image"]

CHECK_LEVELS = ("none", "exists", "quick", "decode")
CACHE_ENV = "LOOKALIKE_IMAGE_CHECK_CACHE"
_CACHE_FORMAT = "lookalike-image-checks/1"
_SUPPORTED = frozenset(SUPPORTED_MODES)
_DRAFT_SCALE = 8  # JPEG decodes at 1/8 of its size: enough to read every byte of the entropy-coded data


@dataclass
class ImageCheckReport:
    """What a check of the image files found; `sizes` holds (width, height) of every file that was opened."""

    level: str
    max_pixels: int | None
    n_files: int = 0
    n_cached: int = 0
    missing: list[str] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)  # path -> why it cannot be read
    too_large: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (width, height)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def largest(self) -> tuple[int, int] | None:
        """(width, height) of the image with the most pixels among those opened."""
        return max(self.sizes.values(), key=lambda s: s[0] * s[1], default=None)


def default_cache_folder() -> Path | None:
    """Where check results are cached (see the module docstring); None when the cache is switched off."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return None if env.lower() in ("off", "none", "0", "false") else Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lookalike" / "image-checks"


def inspect_image(path: str, level: str, max_pixels: int | None) -> tuple[tuple[int, int] | None, str | None]:
    """(size, None) when `path` passes `level` ("quick" or "decode"), else (size or None, why it fails).

    A size above `max_pixels` fails with why = "too large" before any pixel is decoded.
    """
    try:
        with Image.open(path) as opened:
            size = opened.size
            if max_pixels is not None and size[0] * size[1] > max_pixels:
                return size, "too large"
            if opened.mode not in _SUPPORTED:
                return size, f"Pillow mode {opened.mode!r} cannot be converted to RGB"
            if level == "quick":
                if opened.format == "JPEG":
                    opened.draft(opened.mode, (max(1, size[0] // _DRAFT_SCALE), max(1, size[1] // _DRAFT_SCALE)))
                opened.load()
                return size, None
        read_image(path, max_pixels=None)  # "decode": the readers' full decode and conversion
        return size, None
    except DatasetError as error:
        return None, str(error).split(": ", 1)[-1].split(";")[0]
    except Image.DecompressionBombError as error:
        return None, f"too large for Pillow: {error}"
    except Exception as error:  # any decoder failure is a problem of that file
        return None, f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class _Cache:
    """Files that passed a check, as {path: [mtime_ns, file size, width, height]} in one JSON file."""

    def __init__(self, folder: Path | None, key: str) -> None:
        self.path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json" if folder else None
        self.entries: dict[str, list[int]] = {}
        self.changed = False
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("format") == _CACHE_FORMAT and isinstance(data.get("entries"), dict):
                    self.entries = data["entries"]
            except (OSError, ValueError, AttributeError):
                self.entries = {}

    def get(self, path: str, stat: os.stat_result) -> tuple[int, int] | None:
        entry = self.entries.get(path)
        if isinstance(entry, list) and len(entry) == 4 and entry[:2] == [stat.st_mtime_ns, stat.st_size]:
            return int(entry[2]), int(entry[3])
        return None

    def put(self, path: str, stat: os.stat_result, size: tuple[int, int]) -> None:
        self.entries[path] = [stat.st_mtime_ns, stat.st_size, int(size[0]), int(size[1])]
        self.changed = True

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        from lookalike.io import atomic_path

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path, suffix=".json", durable=False) as tmp:
                Path(tmp).write_text(json.dumps({"format": _CACHE_FORMAT, "entries": self.entries}))
        except OSError:
            pass  # a cache we cannot write only costs speed


def _stat(path: str) -> os.stat_result | None:
    """The file's stat, or None when it is missing or not a regular file (one system call)."""
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return None
    return stat if S_ISREG(stat.st_mode) else None


def check_image_files(paths: list[str], level: str, *, max_pixels: MaxPixels = "default",
                      cache: str | os.PathLike | bool = True, cache_key: str = "") -> ImageCheckReport:
    """Check distinct image `paths` at `level` (see the module docstring); `cache`: True for the default folder,
    False for none, or a folder. `cache_key` names the cache file (e.g. the CSV's path)."""
    if level not in CHECK_LEVELS:
        from lookalike.errors import unknown_choice

        raise DatasetError(unknown_choice("check_images level", level, CHECK_LEVELS))
    limit = resolve_max_pixels(max_pixels)
    report = ImageCheckReport(level=level, max_pixels=limit, n_files=len(paths))
    if level == "none":
        return report
    stats = {p: _stat(p) for p in paths}
    report.missing = [p for p, s in stats.items() if s is None]
    if level == "exists":
        return report
    _allow_in_pillow(limit)
    folder = default_cache_folder() if cache is True else (Path(cache) if cache else None)
    store = _Cache(folder if level == "quick" else None, cache_key)
    to_open = []
    for path, stat in stats.items():
        size = store.get(path, stat) if stat is not None else None
        if size is None:
            if stat is not None:
                to_open.append(path)
        elif limit is not None and size[0] * size[1] > limit:
            report.too_large[path] = size  # cached as readable, but above today's limit
        else:
            report.sizes[path] = size
            report.n_cached += 1
    workers = min(8, os.cpu_count() or 1) if len(to_open) > 64 else 1
    with ThreadPoolExecutor(workers) as pool:  # Pillow releases the GIL while decoding
        results = pool.map(lambda p: inspect_image(p, level, limit), to_open, chunksize=32)
        for path, (size, why) in zip(to_open, results):
            if why == "too large":
                report.too_large[path] = size
            elif why is not None:
                report.broken[path] = why
            else:
                report.sizes[path] = size
                store.put(path, stats[path], size)
    store.save()
    return report
