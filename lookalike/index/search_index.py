"""`SearchIndex`: embeddings with their manifest rows, searchable by embeddings or images, changed item by item,
saved atomically and made durable by a write-ahead journal.

The folder (see docs/search.md):

- ``index.json``: the commit record: format, generation, backend and its arguments, distance, count, the model
  identity, recall of an approximate backend, the SHA-256 of the faiss file. It is written last, atomically;
- ``gen-<generation>/``: the embeddings store (``embeddings.npy``, ``manifest.csv``, ``embeddings.json``) and,
  for faiss backends, ``faiss.index``. A save writes a new generation beside the old one and then replaces
  ``index.json``: a crash leaves the old generation named by the old ``index.json``, or the new one;
- ``journal-<generation>.log``: the adds and removes made since that generation was saved, one fsynced record
  each (`lookalike.index.journal`); `load` replays it, `save` folds it into the next generation.

In memory the state is one immutable object (the saved *base* arrays with an alive mask, plus a small *delta*
of added items searched exactly); `add` and `remove` build a new state and swap the reference, so a concurrent
`search` sees the old state or the new one, never a mix. Writes are serialised by a lock.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from lookalike.index.backends import APPROXIMATE, check_backend, make_searcher, measure_recall
from lookalike.index.errors import (DuplicateItemError, IndexFormatError, NoEmbedderError, SearchIndexError,
                                    UnknownItemError)
from lookalike.index.journal import Journal, decode_embeddings, encode_embeddings
from lookalike.io import atomic_path, fsync_dir, sha256_file, write_json_atomic
from lookalike.retrieval import ExactSearch
from lookalike.retrieval.base import check_distance, sort_by_distance_then_index
from lookalike.store import EmbeddingsStore, StoreError

__all__ = ["SearchIndex", "Hit", "INDEX_FILE", "FORMAT"]

INDEX_FILE = "index.json"
FAISS_FILE = "faiss.index"
FORMAT = "lookalike-index/1"
ID, PATH = "id", "path"
_GEN = "gen-"
_JOURNAL = "journal-"


@dataclass
class Hit:
    """One search result: the item's ``id``, its ``distance`` to the query (smaller is closer) and its manifest
    ``row`` (``id``, ``path`` and every other column; missing values are None)."""

    id: str
    distance: float
    row: dict = field(repr=False)

    @property
    def path(self) -> str | None:
        return self.row.get(PATH)


@dataclass(frozen=True)
class _State:
    """One immutable version of the index content (replaced as a whole by every change)."""

    base: np.ndarray            # (N, D) float32: the saved generation's embeddings
    base_t: torch.Tensor        # the same memory as a tensor (what the backends search)
    base_manifest: pd.DataFrame  # N rows
    base_ids: pd.Index          # unique ids of the N rows (vectorised lookups)
    alive: np.ndarray           # (N,) bool: False for removed base items
    searcher: Any               # the backend, fitted on base
    delta: np.ndarray           # (M, D) float32: items added since the base was saved
    delta_ids: tuple[str, ...] = ()
    delta_rows: tuple[dict, ...] = ()
    delta_pos: Mapping[str, int] = field(default_factory=dict)  # id -> delta position

    @property
    def n_removed(self) -> int:
        return int(len(self.alive) - np.count_nonzero(self.alive))

    def __len__(self) -> int:
        return len(self.alive) - self.n_removed + len(self.delta_ids)

    def locate(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per id: its base position (-1 if none or removed) and its delta position (-1 if none)."""
        base = self.base_ids.get_indexer(list(ids)) if len(self.base_ids) else np.full(len(ids), -1)
        base = np.where((base >= 0) & self.alive[np.clip(base, 0, None)] if len(self.alive) else False, base, -1)
        delta = np.array([self.delta_pos.get(i, -1) for i in ids], dtype=np.int64)
        return base.astype(np.int64), delta


def _clean(value: Any) -> Any:
    """A manifest value as a plain Python value (NaN -> None)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _clean_row(row: Mapping) -> dict:
    return {str(k): _clean(v) for k, v in row.items()}


def _as_queries(x: Any, dim: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim == 1:
        t = t[None, :]
    if t.ndim != 2 or not t.is_floating_point():
        raise SearchIndexError(f"queries must be a float array (queries x {dim}) or a list of images, got "
                               f"{'dtype ' + str(t.dtype) if t.ndim == 2 else 'shape ' + str(tuple(t.shape))}.")
    if t.shape[1] != dim:
        raise SearchIndexError(f"queries have dimension {t.shape[1]} but the index holds dimension {dim}: embed "
                               "them with the model the index was built with.")
    return t.detach().to("cpu", torch.float32).contiguous()


def _check_k(top_k: Any) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise SearchIndexError(f"top_k must be a positive integer, got {top_k!r}.")
    return int(top_k)


def _generation_of(name: str, prefix: str, suffix: str = "") -> int | None:
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return None
    digits = name[len(prefix):len(name) - len(suffix)] if suffix else name[len(prefix):]
    return int(digits) if digits.isdigit() else None


class SearchIndex:
    """Searchable embeddings with one manifest row each (see the module docstring for the folder and the
    guarantees). Build one with `build` (or `lookalike index`), open one with `load`."""

    def __init__(self, state: _State, info: dict, *, folder: Path | None = None, embedder: Any = None,
                 journal: Journal | None = None, pending: int = 0):
        self._state = state
        self._info = info
        self.folder = folder
        self.embedder = embedder
        self._journal = journal
        self._pending = pending
        self._write_lock = threading.RLock()

    # --- construction -------------------------------------------------------------------------------------
    @classmethod
    def build(cls, store: EmbeddingsStore, *, backend: str = "exact", backend_args: dict | None = None,
              distance: str = "cosine", model: dict | None = None, embedder: Any = None,
              recall_k: int = 10, recall_sample: int = 1000, holds_texts: bool = False) -> "SearchIndex":
        """An index over ``store`` (nothing written until `save`). Approximate backends (faiss_ivf, faiss_hnsw)
        measure their recall@``recall_k`` against exact search on ``recall_sample`` items, print it and keep
        it in ``info['recall']``. ``holds_texts``: the items are texts (manifest column ``text``), searched by
        text."""
        distance = check_distance(distance)
        args = check_backend(backend, backend_args, len(store))
        searcher, base_t = cls._fit(store.embeddings, backend, args, distance)
        recall = None
        if backend in APPROXIMATE:
            recall = measure_recall(searcher, base_t, distance, k=recall_k, sample=recall_sample)
            if recall["recall"] is not None:
                print(f"{backend} recall@{recall['k']} against exact search on {recall['sample']} indexed items: "
                      f"{recall['recall']:.4f}")
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        info = {"format": FORMAT, "generation": 0, "backend": backend, "backend_args": args, "distance": distance,
                "count": len(store), "dim": store.dim, "model": dict(model or {}), "recall": recall,
                "created": now, "saved": None, "holds_texts": bool(holds_texts), "files": {}}
        state = cls._new_state(np.ascontiguousarray(store.embeddings, dtype=np.float32), base_t, store.manifest,
                               searcher)
        return cls(state, info, embedder=embedder)

    @staticmethod
    def _fit(embeddings: np.ndarray, backend: str, args: Mapping, distance: str) -> tuple[Any, torch.Tensor]:
        base = np.ascontiguousarray(embeddings, dtype=np.float32)
        base_t = torch.from_numpy(base)
        searcher = make_searcher(backend, args, distance)
        if backend != "exact" and len(base):
            searcher.fit(base_t)
        return searcher, base_t

    @staticmethod
    def _new_state(base: np.ndarray, base_t: torch.Tensor, manifest: pd.DataFrame, searcher: Any) -> _State:
        manifest = manifest.reset_index(drop=True)
        return _State(base=base, base_t=base_t, base_manifest=manifest, base_ids=pd.Index(manifest[ID].astype(str)),
                      alive=np.ones(len(base), dtype=bool), searcher=searcher,
                      delta=np.zeros((0, base.shape[1]), np.float32))

    @classmethod
    def load(cls, folder: str | os.PathLike, *, embedder: Any = None) -> "SearchIndex":
        """The index saved in ``folder``, with the changes of its journal replayed."""
        folder = Path(folder).expanduser().resolve()
        info = read_info(folder)
        gen = int(info["generation"])
        data = folder / f"{_GEN}{gen:06d}"
        try:
            store = EmbeddingsStore.load(data)
        except StoreError as exc:
            raise IndexFormatError(f"index {folder}: its saved data is damaged ({exc}).") from None
        if len(store) != info.get("count") or (len(store) and store.dim != info.get("dim")):
            raise IndexFormatError(f"index {folder}: {INDEX_FILE} says {info.get('count')} x {info.get('dim')} but "
                                   f"{data.name} holds {len(store)} x {store.dim}; the folder was edited by hand.")
        backend, args, distance = info["backend"], info.get("backend_args") or {}, info["distance"]
        base = np.ascontiguousarray(store.embeddings, dtype=np.float32)
        base_t = torch.from_numpy(base)
        searcher = make_searcher(backend, args, distance)
        if backend != "exact" and len(base):
            faiss_file = data / FAISS_FILE
            expected = (info.get("files") or {}).get(f"{data.name}/{FAISS_FILE}")
            if not faiss_file.is_file():
                raise IndexFormatError(f"index {folder}: {data.name}/{FAISS_FILE} is missing; build the index "
                                       "again with `lookalike index`.")
            if expected and sha256_file(faiss_file) != expected:
                raise IndexFormatError(f"index {folder}: {data.name}/{FAISS_FILE} does not match the SHA-256 in "
                                       f"{INDEX_FILE}; build the index again.")
            searcher.read(str(faiss_file))
            if int(searcher.index.ntotal) != len(base):
                raise IndexFormatError(f"index {folder}: the faiss file holds {searcher.index.ntotal} vectors, "
                                       f"the store {len(base)}; build the index again.")
        index = cls(cls._new_state(base, base_t, store.manifest, searcher), info, folder=folder, embedder=embedder,
                    journal=Journal(folder / f"{_JOURNAL}{gen:06d}.log"))
        records = index._journal.read()
        for n, record in enumerate(records, 1):
            try:
                index._replay(record)
            except SearchIndexError as exc:
                raise IndexFormatError(f"index {folder}: journal record {n} cannot be applied ({exc}).") from None
        index._pending = len(records)
        return index

    # --- reading ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._state)

    def __repr__(self) -> str:
        return (f"SearchIndex({len(self)} items, dim {self.dim}, backend {self.backend!r}, "
                f"distance {self.distance!r}, folder {str(self.folder) if self.folder else None!r})")

    @property
    def dim(self) -> int:
        return int(self._state.base.shape[1])

    @property
    def distance(self) -> str:
        return self._info["distance"]

    @property
    def backend(self) -> str:
        return self._info["backend"]

    @property
    def holds_texts(self) -> bool:
        """Whether the items are texts (searched by text) rather than images."""
        return bool(self._info.get("holds_texts"))

    @property
    def info(self) -> dict:
        """The index.json content, with the current ``count`` and ``pending_changes`` (journal records)."""
        return {**self._info, "count": len(self), "pending_changes": self._pending}

    @property
    def ids(self) -> list[str]:
        s = self._state
        return s.base_ids[s.alive].tolist() + list(s.delta_ids)

    @property
    def manifest(self) -> pd.DataFrame:
        """Every item's manifest row, in index order (saved items first, then added ones)."""
        s = self._state
        live = s.base_manifest[s.alive]
        if not s.delta_rows:
            return live.reset_index(drop=True)
        return pd.concat([live, pd.DataFrame(list(s.delta_rows))], ignore_index=True)

    @property
    def embeddings(self) -> np.ndarray:
        """Every item's embedding, in index order (a copy)."""
        s = self._state
        return np.concatenate([s.base[s.alive], s.delta])

    def __contains__(self, item_id: object) -> bool:
        b, d = self._state.locate([str(item_id)])
        return bool(b[0] >= 0 or d[0] >= 0)

    def get(self, item_id: str) -> dict:
        """The manifest row of ``item_id`` (an `UnknownItemError` if the index does not hold it)."""
        s = self._state
        b, d = s.locate([str(item_id)])
        if b[0] >= 0:
            return _clean_row(s.base_manifest.iloc[int(b[0])].to_dict())
        if d[0] >= 0:
            return _clean_row(s.delta_rows[int(d[0])])
        raise UnknownItemError(f"no item with id {item_id!r} in this index ({len(s)} items).", [str(item_id)])

    def embedding(self, item_id: str) -> np.ndarray:
        """The embedding of ``item_id`` (a copy)."""
        s = self._state
        b, d = s.locate([str(item_id)])
        if b[0] >= 0:
            return s.base[int(b[0])].copy()
        if d[0] >= 0:
            return s.delta[int(d[0])].copy()
        raise UnknownItemError(f"no item with id {item_id!r} in this index ({len(s)} items).", [str(item_id)])

    def image_path(self, item_id: str) -> Path:
        """The absolute path of the item's image file as the manifest names it (relative paths are taken
        against the index folder); the file itself is not checked."""
        path = self.get(item_id).get(PATH)
        if not path:
            raise UnknownItemError(f"item {item_id!r} has no image file (its manifest row has no path).",
                                   [str(item_id)])
        path = Path(str(path)).expanduser()
        if not path.is_absolute():
            path = (self.folder or Path.cwd()) / path
        return path

    # --- search -------------------------------------------------------------------------------------------
    def search(self, queries: Any, top_k: int = 5) -> list[list[Hit]]:
        """The ``top_k`` nearest items of each query, closest first. ``queries``: a float array (Q, dim) of
        embeddings, a list of PIL images, or for an index of texts a list of strings (embedded with
        ``self.embedder``)."""
        top_k = _check_k(top_k)
        state = self._state  # one snapshot for the whole search
        q = self._embed_queries(queries)
        distances, positions = self._search_state(state, q, top_k)
        return self._hits(state, distances, positions)

    def similar(self, item_id: str, top_k: int = 5) -> list[Hit]:
        """The ``top_k`` nearest other items of an indexed item (the item itself is left out)."""
        top_k = _check_k(top_k)
        state = self._state
        b, d = state.locate([str(item_id)])
        if b[0] < 0 and d[0] < 0:
            raise UnknownItemError(f"no item with id {item_id!r} in this index ({len(state)} items).",
                                   [str(item_id)])
        vector = state.base[int(b[0])] if b[0] >= 0 else state.delta[int(d[0])]
        distances, positions = self._search_state(state, torch.from_numpy(vector[None, :].copy()), top_k + 1)
        hits = [h for h in self._hits(state, distances, positions)[0] if h.id != str(item_id)]
        return hits[:top_k]

    def _embed_queries(self, queries: Any) -> torch.Tensor:
        if _looks_like_texts(queries):
            if self.embedder is None:
                raise NoEmbedderError("this index has no embedder, so it cannot search by text: open it with "
                                      "lookalike.pipelines.indexing.open_index(folder), or pass embeddings.")
            if not self.holds_texts:
                raise SearchIndexError("this index holds images: search it with images (or embeddings), not texts.")
            texts = [queries] if isinstance(queries, str) else list(queries)
            return _as_queries(self.embedder.embed_texts(texts), self.dim)
        if _looks_like_images(queries):
            if self.holds_texts:
                raise SearchIndexError("this index holds texts: search it with texts (strings) or embeddings, not "
                                       "images.")
            if self.embedder is None:
                raise NoEmbedderError("this index has no embedder, so it cannot search by image: open it with "
                                      "lookalike.pipelines.indexing.open_index(folder), or pass embeddings.")
            images = [queries] if not isinstance(queries, (list, tuple)) else list(queries)
            return _as_queries(self.embedder.embed_images(images), self.dim)
        return _as_queries(queries, self.dim)

    def _search_state(self, s: _State, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances, global positions) (Q, k): base positions 0..N-1, delta positions N.., padding (+inf, -1)."""
        parts_d, parts_i = [], []
        n_base = len(s.alive)
        n_alive = n_base - s.n_removed
        if n_alive > 0 and len(q):
            exclude = None
            if s.n_removed:
                exclude = (torch.zeros(len(q), dtype=torch.int64),
                           torch.from_numpy(np.where(s.alive, -1, 0).astype(np.int64)))
            kb = min(k, n_alive)
            if s.searcher.__class__.__name__ == "FaissSearch":
                d, i = s.searcher.query(q, kb, exclude=exclude)
            else:
                d, i = s.searcher.search(q, s.base_t, kb, exclude=exclude)
            parts_d.append(d)
            parts_i.append(i)
        if len(s.delta_ids) and len(q):
            d, i = ExactSearch(self.distance).search(q, torch.from_numpy(s.delta), min(k, len(s.delta_ids)))
            parts_d.append(d)
            parts_i.append(torch.where(i >= 0, i + n_base, i))
        if not parts_d:
            return torch.full((len(q), 0), float("inf")), torch.full((len(q), 0), -1, dtype=torch.int64)
        d, i = sort_by_distance_then_index(torch.cat(parts_d, 1), torch.cat(parts_i, 1))
        return d[:, :k], i[:, :k]

    def _hits(self, s: _State, distances: torch.Tensor, positions: torch.Tensor) -> list[list[Hit]]:
        n_base = len(s.alive)
        pos = positions.numpy()
        valid = pos >= 0
        flat = pos[valid]
        base_sel = flat[flat < n_base]
        base_rows = s.base_manifest.iloc[base_sel].to_dict("records") if len(base_sel) else []
        base_ids = s.base_ids[base_sel].tolist() if len(base_sel) else []
        out: list[list[Hit]] = []
        b = 0
        dist = distances.numpy()
        for qi in range(len(pos)):
            hits = []
            for j in np.flatnonzero(valid[qi]):
                p = int(pos[qi, j])
                if p < n_base:
                    hits.append(Hit(base_ids[b], float(dist[qi, j]), _clean_row(base_rows[b])))
                    b += 1
                else:
                    hits.append(Hit(s.delta_ids[p - n_base], float(dist[qi, j]), _clean_row(s.delta_rows[p - n_base])))
            out.append(hits)
        return out

    # --- changes ------------------------------------------------------------------------------------------
    def add(self, ids: Sequence[str], embeddings: np.ndarray, rows: Sequence[Mapping] | None = None) -> None:
        """Add items (``ids`` new and unique, ``embeddings`` (n, dim), ``rows`` their manifest fields). Once
        this returns the change is in the journal on disk (for an index with a folder)."""
        ids = [str(i) for i in ids]
        x = self._check_new(ids, embeddings, rows)
        rows = [_clean_row({**dict(r or {}), ID: i}) for i, r in zip(ids, rows or [{}] * len(ids))]
        with self._write_lock:
            self._check_unknown(ids)
            self._log({"op": "add", "ids": ids, "rows": rows, "dim": self.dim, "embeddings": encode_embeddings(x)})
            self._state = self._added(self._state, ids, x, rows)

    def remove(self, ids: Sequence[str]) -> None:
        """Remove items by id (an `UnknownItemError` naming the ids the index does not hold); durable once it
        returns, like `add`."""
        ids = [str(i) for i in ids]
        with self._write_lock:
            self._check_known(ids)
            self._log({"op": "remove", "ids": ids})
            self._state = self._removed(self._state, ids)

    def _check_new(self, ids: list[str], embeddings: Any, rows: Sequence | None) -> np.ndarray:
        if not ids:
            raise SearchIndexError("add: no ids given.")
        if any(not i for i in ids):
            raise SearchIndexError("add: ids must be non-empty strings.")
        seen, repeated = set(), []
        for i in ids:
            if i in seen:
                repeated.append(i)
            seen.add(i)
        if repeated:
            raise DuplicateItemError(f"add: ids given more than once: {', '.join(map(repr, repeated[:10]))}.",
                                     repeated)
        x = np.asarray(embeddings.detach().cpu().numpy() if isinstance(embeddings, torch.Tensor) else embeddings)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape != (len(ids), self.dim) or not np.issubdtype(x.dtype, np.floating):
            raise SearchIndexError(f"add: embeddings must be a float array ({len(ids)} ids x {self.dim}), got "
                                   f"{x.dtype} {tuple(x.shape)}.")
        if not np.isfinite(x).all():
            raise SearchIndexError("add: embeddings contain NaN or inf.")
        if rows is not None and len(rows) != len(ids):
            raise SearchIndexError(f"add: {len(rows)} rows for {len(ids)} ids; give one row (dict) per id.")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _check_unknown(self, ids: list[str]) -> None:
        b, d = self._state.locate(ids)
        known = [i for i, x, y in zip(ids, b, d) if x >= 0 or y >= 0]
        if known:
            raise DuplicateItemError(f"add: the index already holds {len(known)} of these ids: "
                                     f"{', '.join(map(repr, known[:10]))}; remove them first or pick new ids.", known)

    def _check_known(self, ids: list[str]) -> None:
        if not ids:
            raise SearchIndexError("remove: no ids given.")
        b, d = self._state.locate(ids)
        unknown = [i for i, x, y in zip(ids, b, d) if x < 0 and y < 0]
        if unknown or len(set(ids)) != len(ids):
            unknown = unknown or [i for i in ids if ids.count(i) > 1]
            raise UnknownItemError(f"remove: the index does not hold {', '.join(map(repr, unknown[:10]))} (or "
                                   "an id is given twice).", unknown)

    @staticmethod
    def _added(s: _State, ids: list[str], x: np.ndarray, rows: list[dict]) -> _State:
        n = len(s.delta_ids)
        return replace(s, delta=np.concatenate([s.delta, x]), delta_ids=s.delta_ids + tuple(ids),
                       delta_rows=s.delta_rows + tuple(rows),
                       delta_pos={**s.delta_pos, **{i: n + j for j, i in enumerate(ids)}})

    @staticmethod
    def _removed(s: _State, ids: list[str]) -> _State:
        b, d = s.locate(ids)
        alive = s.alive
        if (b >= 0).any():
            alive = alive.copy()
            alive[b[b >= 0]] = False
        if (d >= 0).any():
            keep = np.ones(len(s.delta_ids), dtype=bool)
            keep[d[d >= 0]] = False
            delta_ids = tuple(v for v, k in zip(s.delta_ids, keep) if k)
            return replace(s, alive=alive, delta=s.delta[keep], delta_ids=delta_ids,
                           delta_rows=tuple(v for v, k in zip(s.delta_rows, keep) if k),
                           delta_pos={i: j for j, i in enumerate(delta_ids)})
        return replace(s, alive=alive)

    def _log(self, record: dict) -> None:
        if self._journal is not None:
            self._check_generation()
            self._journal.append(record)
        self._pending += 1

    def _check_generation(self) -> None:
        on_disk = read_info(self.folder).get("generation")
        if on_disk != self._info["generation"]:
            raise SearchIndexError(f"index {self.folder} was saved by another process since it was loaded "
                                   f"(generation {on_disk}, this one {self._info['generation']}); load it again.")

    def _replay(self, record: dict) -> None:
        op = record.get("op")
        ids = [str(i) for i in record.get("ids") or []]
        if op == "add":
            x = decode_embeddings(record["embeddings"], len(ids), int(record["dim"]))
            self._check_new(ids, x, record.get("rows"))
            self._check_unknown(ids)
            self._state = self._added(self._state, ids, x, [dict(r) for r in record["rows"]])
        elif op == "remove":
            self._check_known(ids)
            self._state = self._removed(self._state, ids)
        else:
            raise IndexFormatError(f"unknown journal operation {op!r}")

    # --- saving -------------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike | None = None) -> Path:
        """Write the whole index (changes folded in) to ``folder`` (default: the folder it was loaded from or
        last saved to) as a new generation, then commit it by replacing ``index.json``. Atomic as a whole."""
        if folder is None and self.folder is None:
            raise SearchIndexError("save: this index has no folder yet; give one: index.save('my_index').")
        target = Path(folder).expanduser().resolve() if folder is not None else self.folder
        with self._write_lock:
            s = self._state
            if target == self.folder and self._pending == 0 and (target / INDEX_FILE).is_file():
                return target  # nothing changed since the last save
            target.mkdir(parents=True, exist_ok=True)
            gen = max([self._info["generation"], *_generations(target)]) + 1
            data = target / f"{_GEN}{gen:06d}"
            if data.exists():
                shutil.rmtree(data)
            changed = s.n_removed > 0 or len(s.delta_ids) > 0
            if changed:
                embeddings, manifest = self.embeddings, self.manifest
                searcher, base_t = self._fit(embeddings, self.backend, self._info["backend_args"], self.distance)
            else:
                embeddings, manifest, searcher, base_t = s.base, s.base_manifest, s.searcher, s.base_t
            info = dict(self._info)
            header = {"distance": self.distance, "extractor": (info.get("model") or {}).get("identity"),
                      "source": "lookalike index"}
            EmbeddingsStore(embeddings, manifest, header).save(data)
            files = {}
            if self.backend != "exact" and len(embeddings):
                with atomic_path(data / FAISS_FILE, suffix=".index") as tmp:
                    searcher.write(str(tmp))
                    files[f"{data.name}/{FAISS_FILE}"] = sha256_file(tmp)
            fsync_dir(data)
            if changed and self.backend in APPROXIMATE:
                info["recall"] = measure_recall(searcher, base_t, self.distance,
                                                k=(info.get("recall") or {}).get("k", 10))
            info.update(generation=gen, count=len(embeddings), dim=int(embeddings.shape[1]), files=files,
                        saved=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            write_json_atomic(target / INDEX_FILE, info)  # the commit point
            _remove_other_generations(target, gen)
            new_state = self._new_state(np.ascontiguousarray(embeddings, dtype=np.float32), base_t, manifest,
                                        searcher)
            self._state, self._info, self.folder = new_state, info, target
            self._journal = Journal(target / f"{_JOURNAL}{gen:06d}.log")
            self._pending = 0
        return target


def _looks_like_texts(x: Any) -> bool:
    return isinstance(x, str) or (isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(t, str) for t in x))


def _looks_like_images(x: Any) -> bool:
    from PIL import Image

    if isinstance(x, Image.Image):
        return True
    return isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], Image.Image)


def read_info(folder: Path) -> dict:
    """The ``index.json`` of ``folder``, checked to be a lookalike index."""
    import json

    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        hint = (" (it looks like an embeddings store: build an index with `lookalike index`)"
                if (Path(folder) / "embeddings.npy").is_file() else "")
        raise IndexFormatError(f"{folder} is not a search index: it has no {INDEX_FILE}{hint}. Build one with "
                               "`lookalike index <run> source=<images>`.")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise IndexFormatError(f"{path} is not valid JSON ({exc}); build the index again.") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not a lookalike index description (format "
                               f"{info.get('format') if isinstance(info, dict) else None!r}, expected {FORMAT!r}).")
    missing = [k for k in ("generation", "backend", "distance", "count", "dim") if k not in info]
    if missing:
        raise IndexFormatError(f"{path} lacks {', '.join(missing)}; build the index again.")
    return info


def _generations(folder: Path) -> list[int]:
    gens = []
    for p in folder.iterdir() if folder.is_dir() else []:
        g = _generation_of(p.name, _GEN) if p.is_dir() else _generation_of(p.name, _JOURNAL, ".log")
        if g is not None:
            gens.append(g)
    return gens


def _remove_other_generations(folder: Path, keep: int) -> None:
    """After a commit: the older generations and journals (and any left by a crashed save) go."""
    for p in folder.iterdir():
        if p.is_dir() and _generation_of(p.name, _GEN) not in (None, keep):
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file() and _generation_of(p.name, _JOURNAL, ".log") not in (None, keep):
            p.unlink(missing_ok=True)
    fsync_dir(folder)
