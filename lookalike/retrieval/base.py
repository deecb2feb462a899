"""The search-backend interface, input checks shared by all backends, and the rule that excludes pairs.

Every backend answers ``search(queries, gallery, k, exclude=...) -> (distances, indices)``, both ``(Nq, k)``,
rows sorted by distance ascending ("smaller is closer"), indices being positions in ``gallery``; where fewer
than ``k`` gallery items are valid for a query the row is padded with index ``-1`` and distance ``+inf``.
"""

from __future__ import annotations

import weakref

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from lookalike.errors import ArgumentError, LookalikeError

__all__ = [
    "DISTANCES",
    "ExcludeSpec",
    "Exclusion",
    "RowSubset",
    "SearchBackend",
    "check_distance",
    "check_k",
    "as_embeddings",
    "sort_by_distance_then_index",
]

DISTANCES = ("cosine", "inner_product", "euclidean")

#: ``None``; a pair ``(query_keys, gallery_keys)`` of integer arrays, or a list of such pairs, where equal
#: non-negative keys mask a (query, gallery) pair; or a callable ``fn(query_pos, gallery_pos) -> bool mask``
#: that receives two int64 tensors of broadcastable shapes and returns a bool tensor of their broadcast shape.
ExcludeSpec = Union[None, Callable[[Tensor, Tensor], Tensor], tuple[Any, Any], Sequence[tuple[Any, Any]]]


def check_distance(distance: str) -> str:
    """Return ``distance`` if it is a known distance name, else raise with the valid names."""
    if distance not in DISTANCES:
        raise LookalikeError(f"Unknown distance {distance!r}; use one of {', '.join(map(repr, DISTANCES))}.")
    return distance


def check_k(k: Any) -> int:
    """``k`` must be a positive integer (bool is refused)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise LookalikeError(f"k (the number of retrieved items per query) must be a positive integer, got {k!r}.")
    return int(k)


def as_embeddings(x: Any, name: str) -> Tensor:
    """A 2-D float32 contiguous CPU tensor of finite values, or a `LookalikeError` that says which rows are bad."""
    t = torch.as_tensor(x) if not isinstance(x, Tensor) else x
    if t.ndim != 2:
        raise LookalikeError(f"{name} must be a 2-D array (items x dim), got shape {tuple(t.shape)}.")
    if not (t.is_floating_point()):
        raise LookalikeError(f"{name} must be a floating-point array, got dtype {t.dtype}.")
    t = t.detach().to("cpu", torch.float32).contiguous()
    if t.shape[1] == 0:
        raise LookalikeError(f"{name} has zero columns: embeddings must have at least one dimension.")
    if bool(torch.isfinite(t.sum(dim=1)).all()):  # cheap test first; NaN/inf propagate into the row sums
        return t
    bad = ~torch.isfinite(t).all(dim=1)
    n_bad = int(bad.sum())
    if n_bad:
        rows = bad.nonzero().squeeze(1)[:5].tolist()
        raise LookalikeError(
            f"{name} contain NaN or inf in {n_bad} of {len(t)} rows (first rows: {rows}); "
            "check the extractor (e.g. a diverged training run or fp16 overflow) before searching."
        )
    return t


def sort_by_distance_then_index(distances: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row by (distance, index) ascending; index ``-1`` (padding) goes last. Rows are short (k)."""
    key = torch.where(indices < 0, torch.iinfo(torch.int64).max, indices)
    order = torch.sort(key, dim=1, stable=True).indices
    distances, indices = distances.gather(1, order), indices.gather(1, order)
    order = torch.sort(distances, dim=1, stable=True).indices
    return distances.gather(1, order), indices.gather(1, order)


class GalleryKey:
    """Identity of one live tensor in one state: equal only to a key of the *same* tensor object (held by a weak
    reference, so a freed tensor's address reused by a new one never matches) with the same storage, shape and
    in-place version."""

    __slots__ = ("_ref", "_state")

    def __init__(self, tensor: Tensor) -> None:
        self._ref = weakref.ref(tensor)
        self._state = (tensor.data_ptr(), tuple(tensor.shape), tensor._version)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GalleryKey) or self._state != other._state:
            return False
        mine = self._ref()
        return mine is not None and mine is other._ref()

    __hash__ = None  # compared, never used as a dict key

    def __reduce__(self):  # a copied or pickled backend starts without a cached gallery
        return (_no_key, ())


def _no_key() -> None:
    return None


def gallery_key(gallery: Any) -> GalleryKey | None:
    """Identity of a float32 CPU tensor (object, storage, shape, in-place version): what a backend may cache about
    a gallery (its checked copy, norms, a built index) is reused only while this is unchanged."""
    if isinstance(gallery, Tensor) and gallery.dtype == torch.float32 and gallery.is_contiguous() \
            and gallery.device.type == "cpu" and not gallery.is_inference():  # inference tensors have no version
        return GalleryKey(gallery)
    return None


class RowSubset:
    """The rows ``rows`` of a 2-D tensor ``base``, read block by block: a gallery that is part of a larger
    embedding table is searched without copying it (``len``, ``shape`` and slicing behave like ``base[rows]``).

    A subset that is one contiguous run of rows becomes a plain view (`as_tensor_or_subset`)."""

    def __init__(self, base: Tensor, rows: Tensor):
        self.base, self.rows = base, rows
        self.shape = torch.Size((len(rows), base.shape[1]))
        self.dtype = base.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: slice) -> Tensor:
        if not isinstance(item, slice):
            raise ArgumentError(f"RowSubset supports slices only, got {type(item).__name__}; use positions() and "
                                "index the base tensor")
        return self.base.index_select(0, self.rows[item])

    def positions(self, pos: Tensor) -> Tensor:
        """Row numbers in ``base`` of the subset's positions ``pos``."""
        return self.rows[pos]


def as_tensor_or_subset(base: Tensor, rows: Tensor | None) -> Tensor | RowSubset:
    """``base`` itself (all rows), a view (one contiguous run of rows) or a `RowSubset` (anything else)."""
    if rows is None or len(rows) == len(base):
        return base if rows is None or bool((rows == torch.arange(len(base))).all()) else RowSubset(base, rows)
    if len(rows) and int(rows[-1]) - int(rows[0]) == len(rows) - 1 and bool((rows.diff() == 1).all()):
        return base[int(rows[0]) : int(rows[0]) + len(rows)]
    return RowSubset(base, rows)


def _check_rows(rows: Any, n: int) -> Tensor:
    t = torch.as_tensor(np.asarray(rows) if not isinstance(rows, Tensor) else rows).cpu()
    if t.dtype == torch.bool:
        if t.shape != (n,):
            raise LookalikeError(f"gallery_rows: a bool mask must have shape ({n},), got {tuple(t.shape)}.")
        return t.nonzero().squeeze(1)
    if t.ndim != 1 or t.is_floating_point():
        raise LookalikeError("gallery_rows must be a 1-D bool mask or integer row positions of the gallery.")
    t = t.to(torch.int64)
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= n):
        raise LookalikeError(f"gallery_rows must be row positions in [0, {n}), got values outside.")
    return t


class SearchBackend(ABC):
    """Top-k nearest gallery items for every query; ``distance`` is one of `DISTANCES` (smaller is closer).

    ``search`` checks its inputs and handles empty sets once for every backend; a backend implements
    ``_search`` on float32 2-d tensors of equal width, with ``k >= 1`` and both sets non-empty. A backend that
    sets ``reads_row_subsets = True`` also accepts a `RowSubset` as the gallery (others get a copy of the rows).
    """

    distance: str = "cosine"
    reads_row_subsets: bool = False

    def search(
        self, queries: Tensor, gallery: Tensor, k: int, *, exclude: ExcludeSpec = None, gallery_rows: Any = None
    ) -> tuple[Tensor, Tensor]:
        """Return ``(distances (Nq, k) float32, indices (Nq, k) int64)``; padding is ``(+inf, -1)``.

        ``gallery_rows`` (bool mask or row positions): search only these rows of ``gallery``, exactly as if
        ``gallery[gallery_rows]`` had been passed (indices and ``exclude`` refer to positions in that subset), but
        without copying them when the backend reads subsets (exact search does)."""
        q = as_embeddings(queries, "queries")
        key = gallery_key(gallery)
        if key is not None and key == getattr(self, "_checked_gallery", None):
            g = gallery  # checked when this very tensor was first searched (an index searched query by query)
        else:
            g = as_embeddings(gallery, "gallery")
            self._checked_gallery = key
        k = check_k(k)
        if q.shape[1] != g.shape[1]:
            raise LookalikeError(
                f"queries have dimension {q.shape[1]} but gallery has {g.shape[1]}: both must come from the "
                "same extractor."
            )
        if gallery_rows is not None:
            g = as_tensor_or_subset(g, _check_rows(gallery_rows, len(g)))
            if isinstance(g, RowSubset) and not self.reads_row_subsets:
                g = g[:]
            gallery = g
        if len(q) == 0 or len(g) == 0:
            self._empty_search(len(q))
            return torch.full((len(q), k), float("inf")), torch.full((len(q), k), -1, dtype=torch.int64)
        with torch.no_grad():
            return self._search(q, g, k, Exclusion(exclude, len(q), len(g)), gallery)

    def _empty_search(self, n_queries: int) -> None:
        """Called instead of ``_search`` when there is nothing to search (resets per-call statistics)."""

    @abstractmethod
    def _search(self, q: Tensor, g: Tensor, k: int, exclusion: "Exclusion", gallery: Any) -> tuple[Tensor, Tensor]:
        """The backend's search on checked inputs; ``gallery`` is the caller's object (e.g. for index caching)."""


def _as_keys(x: Any, n: int, what: str) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    if t.ndim != 1 or len(t) != n:
        raise LookalikeError(f"exclude: {what} keys must be a 1-D array of length {n}, got shape {tuple(t.shape)}.")
    if t.is_floating_point() or t.dtype == torch.bool:
        raise LookalikeError(f"exclude: {what} keys must be integers (factorise other values first), got {t.dtype}.")
    return t.to("cpu", torch.int64)


class Exclusion:
    """A normalised `ExcludeSpec` for ``n_queries`` x ``n_gallery``: which (query, gallery) pairs never match.

    Key pairs are turned into an explicit sorted list of excluded pairs when it is small (the usual case: a query
    is excluded from itself and from its few same-sequence items), which makes masking a block O(pairs in block).
    """

    #: above this many excluded pairs the keys are compared block by block instead
    MAX_SPARSE_PAIRS = 4_000_000

    def __init__(self, exclude: ExcludeSpec, n_queries: int, n_gallery: int):
        self.n_queries, self.n_gallery = n_queries, n_gallery
        self.fn: Callable[[Tensor, Tensor], Tensor] | None = None
        self.keys: list[tuple[Tensor, Tensor]] = []
        self.pairs: tuple[Tensor, Tensor] | None = None  # (query pos, gallery pos) sorted by gallery pos
        self.per_query: Tensor | None = None  # upper bound of excluded items per query (None for a callable)
        if exclude is None:
            self.per_query = torch.zeros(n_queries, dtype=torch.int64)
            return
        if callable(exclude):
            self.fn = exclude
            return
        if isinstance(exclude, tuple) and len(exclude) == 2 and not isinstance(exclude[0], tuple):
            exclude = [exclude]
        for pair in exclude:
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise LookalikeError(
                    "exclude must be None, a callable, a (query_keys, gallery_keys) pair or a list of such pairs."
                )
            self.keys.append((_as_keys(pair[0], n_queries, "query"), _as_keys(pair[1], n_gallery, "gallery")))
        self._build_pairs()

    @property
    def empty(self) -> bool:
        return self.fn is None and not self.keys

    def _build_pairs(self) -> None:
        per_query = torch.zeros(self.n_queries, dtype=torch.int64)
        ranges = []
        for qk, gk in self.keys:
            g_valid = (gk >= 0).nonzero().squeeze(1)
            order = torch.argsort(gk[g_valid], stable=True)
            g_sorted_pos, g_sorted_key = g_valid[order], gk[g_valid][order]
            lo = torch.searchsorted(g_sorted_key, qk, right=False)
            count = torch.searchsorted(g_sorted_key, qk, right=True) - lo
            count = torch.where(qk >= 0, count, torch.zeros_like(count))
            per_query += count
            ranges.append((lo, count, g_sorted_pos))
        self.per_query = per_query
        if not self.keys or int(per_query.sum()) > self.MAX_SPARSE_PAIRS:
            return  # nothing to exclude, or too many pairs: blocks compare keys densely
        qs, gs = [], []
        for lo, count, g_sorted_pos in ranges:
            n = int(count.sum())
            start = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
            pos = torch.arange(n) - start + torch.repeat_interleave(lo, count)
            qs.append(torch.repeat_interleave(torch.arange(self.n_queries), count))
            gs.append(g_sorted_pos[pos])
        q_all, g_all = torch.cat(qs), torch.cat(gs)
        order = torch.argsort(g_all, stable=True)
        self.pairs = (q_all[order], g_all[order])

    def mask(self, query_pos: Tensor, gallery_pos: Tensor) -> Tensor:
        """Bool mask (broadcast shape of the two position tensors): True where the pair is excluded."""
        if self.fn is not None:
            out = torch.as_tensor(self.fn(query_pos, gallery_pos))
            shape = torch.broadcast_shapes(query_pos.shape, gallery_pos.shape)
            try:
                if out.dtype != torch.bool:
                    raise RuntimeError
                return out.expand(shape)
            except RuntimeError:
                raise LookalikeError(
                    f"exclude callable must return a bool tensor broadcastable to {tuple(shape)}, "
                    f"got {out.dtype} {tuple(out.shape)}."
                ) from None
        shape = torch.broadcast_shapes(query_pos.shape, gallery_pos.shape)
        result = torch.zeros(shape, dtype=torch.bool)
        valid_g = gallery_pos >= 0
        gp = gallery_pos.clamp(min=0)
        for qk, gk in self.keys:
            a = qk[query_pos]
            result |= (a == gk[gp]) & (a >= 0) & valid_g
        return result

    def for_queries(self, query_pos: Tensor) -> "ChunkExclusion":
        """The rule restricted to the given (global) query positions, ready to mask score blocks."""
        return ChunkExclusion(self, query_pos)


class ChunkExclusion:
    """Masks blocks ``S[rows, g0:g1]`` of one query chunk (rows = the chunk's query positions)."""

    def __init__(self, exclusion: Exclusion, query_pos: Tensor):
        self.exclusion, self.query_pos = exclusion, query_pos
        self.rows = self.cols = None
        if exclusion.pairs is not None and not exclusion.empty:
            local = torch.full((exclusion.n_queries,), -1, dtype=torch.int64)
            local[query_pos] = torch.arange(len(query_pos))
            q_all, g_all = exclusion.pairs
            row = local[q_all]
            keep = row >= 0
            self.rows, self.cols = row[keep], g_all[keep]  # still sorted by gallery position

    def apply(self, scores: Tensor, g0: int, g1: int, fill: float, row0: int = 0) -> None:
        """Set the excluded entries of the block ``scores`` in place to ``fill``.

        The block covers gallery positions ``g0:g1`` and the chunk's query rows ``row0:row0 + len(scores)``.
        """
        ex = self.exclusion
        if ex.empty:
            return
        row1 = row0 + len(scores)
        if self.rows is not None:
            lo, hi = torch.searchsorted(self.cols, torch.tensor([g0, g1])).tolist()
            if hi > lo:
                rows, cols = self.rows[lo:hi], self.cols[lo:hi]
                if row0 > 0 or row1 < len(self.query_pos):
                    keep = (rows >= row0) & (rows < row1)
                    rows, cols = rows[keep], cols[keep]
                scores[rows - row0, cols - g0] = fill
            return
        mask = ex.mask(self.query_pos[row0:row1, None], torch.arange(g0, g1)[None, :])
        scores.masked_fill_(mask, fill)
