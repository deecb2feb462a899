"""The model zoo: named checkpoints with their download address and SHA-256, cached locally after one download.

Structure of an entry (`ZooEntry`): which extractor to build (`extractor`, a class of `lookalike.models` by
name or a class) with which keyword arguments (`kwargs`), where its weights live (`url`: https://, or file://
for a local mirror), their `sha256`, and the cached `file_name`. Register one with `register(name, entry)`;
`from_zoo(name)` builds the extractor and loads the weights, `weights="zoo:<name>"` loads them into any
extractor of the same shape.

Downloads go to a temporary file in the cache folder (`cache_dir=`, else `$LOOKALIKE_CACHE`, else
`~/.cache/lookalike/checkpoints`), are hash-checked, then renamed into place: a killed or corrupted download
never leaves a file under the final name, and a cached file is reused only while its hash matches.

No entries are published yet (weights must be trained and hosted first).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookalike.errors import CheckpointError, LookalikeError, unknown_choice
from lookalike.io import atomic_path, sha256_file

__all__ = ["ZooEntry", "ZOO", "register", "default_cache_dir", "download_checkpoint", "zoo_checkpoint_path",
           "from_zoo"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ZooEntry:
    """A named checkpoint: the extractor (class or its name in lookalike.models) and its kwargs, URL, SHA-256."""

    extractor: str | type
    url: str
    sha256: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    file_name: str | None = None  # default: "<first 16 hex of sha256>-<last part of the URL>"
    description: str = ""

    @property
    def cached_name(self) -> str:
        return self.file_name or _default_file_name(self.url, self.sha256)


#: name -> entry; our trained checkpoints are added here as they are published.
ZOO: dict[str, ZooEntry] = {}


def register(name: str, entry: ZooEntry) -> None:
    """Add (or replace) a zoo entry, e.g. a company-internal mirror of trained weights."""
    ZOO[name] = entry


def default_cache_dir() -> Path:
    """`$LOOKALIKE_CACHE` when set, else `~/.cache/lookalike/checkpoints`."""
    env = os.environ.get("LOOKALIKE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lookalike" / "checkpoints"


def _default_file_name(url: str, sha256: str) -> str:
    name = Path(urllib.parse.urlparse(url).path).name or "checkpoint"
    return f"{sha256.lower()[:16]}-{name}"


def download_checkpoint(url: str, sha256: str, cache_dir: str | os.PathLike | None = None,
                        file_name: str | None = None, progress: bool = True) -> Path:
    """The cached file for `url`: reused when present with the right SHA-256, else downloaded (temporary file,
    hash check, rename). A hash mismatch deletes the download and raises `CheckpointError`."""
    sha256 = sha256.strip().lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise CheckpointError(f"zoo: {sha256!r} is not a SHA-256 (64 hex digits) for {url}.")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = folder / (file_name or _default_file_name(url, sha256))
    if target.is_file() and sha256_file(target) == sha256:
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"cannot write to the checkpoint cache {folder} ({error}); set LOOKALIKE_CACHE to "
                              "a writable folder.") from None
    try:
        # the download lands under a temporary name and is renamed only after its hash matched
        with atomic_path(target, suffix=".part") as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                from tqdm import tqdm

                with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {target.name}", leave=False,
                          disable=not progress) as bar:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
            actual = sha256_file(tmp)
            if actual != sha256:
                raise CheckpointError(f"download of {url} has SHA-256 {actual}, expected {sha256}; the file was "
                                      "discarded. Try again; if it persists the address serves another file.")
    except (OSError, ValueError) as error:  # urllib.error.URLError is an OSError; a malformed URL a ValueError
        raise CheckpointError(f"cannot download {url} ({error}); check the address and the network, or put the "
                              f"file (SHA-256 {sha256}) at {target} yourself.") from None
    return target


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        if ZOO:
            raise LookalikeError(unknown_choice("zoo model", name, sorted(ZOO)))
        raise LookalikeError(f"unknown zoo model {name!r}: the zoo has no published checkpoints yet; give a "
                             "local weights file instead, or register an entry with lookalike.models.zoo.register.")
    return ZOO[name]


def zoo_checkpoint_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local file of the zoo checkpoint `name` (downloaded once)."""
    entry = _entry(name)
    return download_checkpoint(entry.url, entry.sha256, cache_dir=cache_dir, file_name=entry.cached_name)


def from_zoo(name: str, **overrides: Any):
    """The extractor of zoo entry `name` with its weights loaded; `overrides` change kwargs that do not alter
    the weights' shapes (e.g. `normalise=False`)."""
    import lookalike.models as models

    entry = _entry(name)
    cls = entry.extractor
    if isinstance(cls, str):
        if not hasattr(models, cls):
            raise LookalikeError(f"zoo entry {name!r}: {unknown_choice('extractor', cls, models.__all__)}")
        cls = getattr(models, cls)
    from lookalike.models.checkpoints import load_into

    model = cls(**{**entry.kwargs, **overrides})
    load_into(model, zoo_checkpoint_path(name))
    return model
