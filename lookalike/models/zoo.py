"""The model zoo: named checkpoints with their download address and SHA-256, cached locally after one download.

An entry says which extractor to build and where its weights live. Downloads go to a temporary file, are
hash-checked, then renamed into the cache (`$LOOKALIKE_CACHE` or `~/.cache/lookalike/checkpoints`), so a
killed download never leaves a half file behind and a cached file is reused only while its hash matches.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookalike.errors import CheckpointError, LookalikeError, unknown_choice

__all__ = ["ZooEntry", "ZOO", "register", "cache_dir", "download_checkpoint", "zoo_checkpoint_path", "from_zoo"]


@dataclass(frozen=True)
class ZooEntry:
    """A named checkpoint: the extractor class (in lookalike.models) and its kwargs, the URL and SHA-256."""

    extractor: str
    url: str
    sha256: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def file_name(self) -> str:
        return f"{self.sha256[:16]}-{Path(self.url).name}"


# Our own trained checkpoints are published here as they are released (none yet: weights must be trained and
# hosted first). Add with `register(name, ZooEntry(...))`.
ZOO: dict[str, ZooEntry] = {}


def register(name: str, entry: ZooEntry) -> None:
    ZOO[name] = entry


def cache_dir() -> Path:
    return Path(os.environ.get("LOOKALIKE_CACHE", Path.home() / ".cache" / "lookalike" / "checkpoints"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_checkpoint(url: str, sha256: str, cache: str | os.PathLike | None = None,
                        file_name: str | None = None, progress: bool = True) -> Path:
    """The cached file for `url`, downloading it first when absent or when its hash does not match."""
    folder = Path(cache) if cache is not None else cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (file_name or f"{sha256[:16]}-{Path(url).name}")
    if target.is_file() and _sha256(target) == sha256:
        return target
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {target.name}", leave=False)
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        actual = _sha256(Path(tmp))
        if actual != sha256:
            raise CheckpointError(f"download of {url} has SHA-256 {actual}, expected {sha256}; the file was "
                                  "discarded. Try again, or check the address.")
        os.replace(tmp, target)
    except OSError as error:  # urllib.error.URLError is an OSError
        raise CheckpointError(f"cannot download {url} ({error}); check the network, or put the file in "
                              f"{folder} yourself") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise LookalikeError(unknown_choice("zoo model", name, sorted(ZOO)) if ZOO else
                             f"unknown zoo model {name!r}: the zoo has no published checkpoints yet")
    return ZOO[name]


def zoo_checkpoint_path(name: str) -> Path:
    """The local file of the zoo checkpoint `name` (downloaded once)."""
    entry = _entry(name)
    return download_checkpoint(entry.url, entry.sha256, file_name=entry.file_name)


def from_zoo(name: str):
    """The extractor of zoo entry `name`, with its weights loaded."""
    import lookalike.models as models

    entry = _entry(name)
    return getattr(models, entry.extractor)(**entry.kwargs, weights=f"zoo:{name}")
