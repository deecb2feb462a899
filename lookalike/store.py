"""The embeddings store: one reader and writer for a folder of ``embeddings.npy`` + ``manifest.csv`` +
``embeddings.json``, shared by ``predict`` and everything that reads its output (index, search, export).

- ``embeddings.npy``: float32 ``(N, dim)``, row i belongs to manifest row i;
- ``manifest.csv``: one row per embedding: ``id`` (unique strings), ``path`` and every other column of the source;
- ``embeddings.json``: the header: format version, count, dim, dtype, distance, the extractor's identity (what
  made the vectors), the source, and the SHA-256 of the two data files.

Each file is written atomically and the header last, holding the hashes of the other two; ``load`` checks the
shapes and hashes, so a store whose writing was interrupted between files (old manifest, new embeddings) is
reported as such instead of silently pairing the wrong rows. Layer 1: numpy, pandas and ``lookalike.io`` only.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from lookalike.data import schema
from lookalike.errors import LookalikeError
from lookalike.io import atomic_path, sha256_file, write_json_atomic

__all__ = ["EmbeddingsStore", "StoreError", "EMBEDDINGS_FILE", "MANIFEST_FILE", "HEADER_FILE", "FORMAT"]

EMBEDDINGS_FILE = "embeddings.npy"
MANIFEST_FILE = "manifest.csv"
HEADER_FILE = "embeddings.json"
FORMAT = "lookalike-embeddings/1"
ID = "id"


class StoreError(LookalikeError):
    """An embeddings store folder is missing files, inconsistent or was written by something else."""


def duplicate_ids(ids: pd.Series) -> pd.Series:
    """The rows whose id occurs more than once (all of them, in order)."""
    return ids[ids.duplicated(keep=False)]


@dataclass
class EmbeddingsStore:
    """Embeddings with one manifest row each and a header saying what made them.

    ``embeddings``: float32 ``(N, dim)``; ``manifest``: N rows with a unique string ``id`` column; ``header``:
    free-form facts (``distance``, ``extractor``, ``source``, ...) that are saved with the store.
    """

    embeddings: np.ndarray
    manifest: pd.DataFrame
    header: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.embeddings, np.ndarray):  # keep a memory map a memory map
            self.embeddings = np.asarray(self.embeddings)
        if self.embeddings.ndim != 2:
            raise StoreError(f"embeddings must be a 2-d array (items x dim), got shape {self.embeddings.shape}.")
        if self.embeddings.dtype != np.float32:
            self.embeddings = self.embeddings.astype(np.float32)
        if len(self.manifest) != len(self.embeddings):
            raise StoreError(f"{len(self.embeddings)} embeddings but {len(self.manifest)} manifest rows; "
                             "every embedding needs exactly one manifest row.")
        if ID not in self.manifest.columns:
            raise StoreError(f"the manifest has no {ID!r} column; columns are {', '.join(map(str, self.manifest))}.")
        self.manifest = self.manifest.reset_index(drop=True)
        self.manifest[ID] = self.manifest[ID].astype(str)
        dup = duplicate_ids(self.manifest[ID])
        if len(dup):
            shown = ", ".join(f"{v!r} (rows {', '.join(str(i) for i in dup.index[dup == v][:4])})"
                              for v in dup.unique()[:5])
            raise StoreError(f"{dup.nunique()} id(s) occur more than once: {shown}. Ids must be unique: give the "
                             "source an 'id' column, or remove the repeated rows.")

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def ids(self) -> list[str]:
        return self.manifest[ID].tolist()

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the three files into ``folder`` (created if needed); returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / EMBEDDINGS_FILE, suffix=".npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(self.embeddings, dtype=np.float32))
            emb_hash = sha256_file(tmp)
        with atomic_path(folder / MANIFEST_FILE, suffix=".csv") as tmp:
            self.manifest.to_csv(tmp, index=False)
            man_hash = sha256_file(tmp)
        header = {**self.header, "format": FORMAT, "count": len(self), "dim": self.dim, "dtype": "float32",
                  "created": self.header.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "files": {EMBEDDINGS_FILE: emb_hash, MANIFEST_FILE: man_hash}}
        write_json_atomic(folder / HEADER_FILE, header)
        self.header = header
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, *, mmap: bool = False, verify: bool = True) -> "EmbeddingsStore":
        """The store in ``folder``; ``mmap`` maps the embeddings instead of reading them; ``verify`` checks the
        files' hashes against the header (a few seconds per GB)."""
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise StoreError(f"embeddings store {folder}: no such folder; give the folder `lookalike predict` "
                             "wrote (it holds embeddings.npy and manifest.csv).")
        missing = [n for n in (EMBEDDINGS_FILE, MANIFEST_FILE) if not (folder / n).is_file()]
        if missing:
            raise StoreError(f"embeddings store {folder}: {', '.join(missing)} missing; run `lookalike predict` "
                             "again to write the store.")
        header = _read_header(folder)
        try:
            embeddings = np.load(folder / EMBEDDINGS_FILE, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise StoreError(f"embeddings store {folder}: {EMBEDDINGS_FILE} is not a readable .npy array "
                             f"({exc}); write the store again.") from None
        try:
            # the item columns are read as written: a text "007" or "1e3" (or such a path) is no number
            manifest = pd.read_csv(folder / MANIFEST_FILE, dtype={ID: str, schema.PATH: str, schema.TEXT: str},
                                   keep_default_na=False, na_values=[""])
        except (ValueError, OSError, pd.errors.ParserError) as exc:
            raise StoreError(f"embeddings store {folder}: {MANIFEST_FILE} is not a readable CSV ({exc}); write "
                             "the store again.") from None
        if header is not None:
            _check_against_header(folder, header, embeddings, manifest, verify)
        store = cls(embeddings, manifest, dict(header or {}))
        return store

    def subset(self, rows: np.ndarray | list[int]) -> "EmbeddingsStore":
        """The store restricted to ``rows`` (positions), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return EmbeddingsStore(np.asarray(self.embeddings[rows]), self.manifest.iloc[rows].reset_index(drop=True),
                               dict(self.header))


def _read_header(folder: Path) -> dict | None:
    path = folder / HEADER_FILE
    if not path.is_file():
        return None  # a store written before headers existed: shapes are still checked by the constructor
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise StoreError(f"embeddings store {folder}: {HEADER_FILE} is not valid JSON ({exc}); write the store "
                         "again.") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise StoreError(f"embeddings store {folder}: {HEADER_FILE} is not a lookalike store header (format "
                         f"{header.get('format') if isinstance(header, dict) else None!r}, expected {FORMAT!r}).")
    return header


def _check_against_header(folder: Path, header: Mapping, embeddings: np.ndarray, manifest: pd.DataFrame,
                          verify: bool) -> None:
    expected = (header.get("count"), header.get("dim"))
    if embeddings.ndim != 2 or tuple(embeddings.shape) != expected or len(manifest) != expected[0]:
        raise StoreError(f"embeddings store {folder}: the header says {expected[0]} x {expected[1]} but "
                         f"{EMBEDDINGS_FILE} is {tuple(embeddings.shape)} and {MANIFEST_FILE} has {len(manifest)} "
                         "rows: a write was interrupted or a file was replaced; write the store again.")
    if verify:
        for name, digest in (header.get("files") or {}).items():
            if (folder / name).is_file() and sha256_file(folder / name) != digest:
                raise StoreError(f"embeddings store {folder}: {name} does not match the header's SHA-256 (a write "
                                 "was interrupted or the file was edited); write the store again.")
