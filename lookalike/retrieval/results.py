"""`RetrievalResults`: for every query, the top-k gallery items, their distances and which of them are relevant.

This is the contract between search and metrics: metrics are pure functions of it, post-processors map it to
another one. All tensors are on CPU. Positions in ``retrieved_ids`` refer to the *gallery set* (0..Ng-1);
``gallery_ids[retrieved_ids]`` are dataset indices. Padding (fewer than k valid gallery items) is ``-1`` in
``retrieved_ids``, ``+inf`` in ``distances`` and ``False`` in ``is_relevant``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from lookalike.errors import LookalikeError
from lookalike.retrieval.base import (
    RowSubset,
    SearchBackend,
    as_embeddings,
    as_tensor_or_subset,
    check_distance,
    check_k,
)
from lookalike.retrieval.factory import make_backend

__all__ = ["RetrievalResults", "factorize_sequences"]


def factorize_sequences(sequences: Any) -> Tensor:
    """Integer codes (int64) of any hashable per-item sequence ids; NaN / None (no sequence) become -1."""
    values = sequences.cpu().numpy() if isinstance(sequences, Tensor) else np.asarray(sequences, dtype=object)
    codes, _ = pd.factorize(pd.Series(np.asarray(values, dtype=object).ravel()), use_na_sentinel=True)
    return torch.from_numpy(np.asarray(codes, dtype=np.int64))


def _as_1d(x: Any, n: int, name: str) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 1 or len(t) != n:
        raise LookalikeError(
            f"{name} must be a 1-D array with one value per embedding ({n}), got shape {tuple(t.shape)}."
        )
    return t.detach().cpu()


def _as_labels(x: Any, n: int) -> Tensor:
    try:
        t = _as_1d(x, n, "labels")
    except (TypeError, ValueError) as e:
        raise LookalikeError(f"labels must be integers, one per embedding: {e}") from e
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise LookalikeError(f"labels must be integers (factorise string labels first), got dtype {t.dtype}.")
    return t.to(torch.int64)


def _as_flags(x: Any, n: int, name: str) -> Tensor:
    t = _as_1d(x, n, name)
    if t.dtype != torch.bool:
        if t.is_floating_point() or not bool(((t == 0) | (t == 1)).all()):
            raise LookalikeError(f"{name} must be boolean (or 0/1) per embedding, got dtype {t.dtype}.")
        t = t.bool()
    return t


@dataclass
class RetrievalResults:
    """Top-k retrieval of every query against the gallery (see the module docstring for conventions)."""

    retrieved_ids: Tensor  # (Nq, k) int64: gallery positions, -1 = padding
    distances: Tensor  # (Nq, k) float32, ascending, +inf = padding
    is_relevant: Tensor  # (Nq, k) bool: retrieved item has the query's label
    n_relevant: Tensor  # (Nq,) int64: relevant items in the whole gallery (self / same sequence removed)
    query_ids: Tensor  # (Nq,) int64: dataset index of each query
    gallery_ids: Tensor  # (Ng,) int64: dataset index of each gallery item
    query_labels: Tensor  # (Nq,) int64
    gallery_labels: Tensor  # (Ng,) int64
    query_categories: np.ndarray | None = None  # (Nq,) object array, or None

    def __post_init__(self) -> None:
        nq, ng = len(self.query_ids), len(self.gallery_ids)
        if self.retrieved_ids.ndim != 2 or self.retrieved_ids.shape[0] != nq:
            raise LookalikeError(
                f"RetrievalResults: retrieved_ids must be (n_queries={nq}, k), got {tuple(self.retrieved_ids.shape)}."
            )
        shape = tuple(self.retrieved_ids.shape)
        for name in ("distances", "is_relevant"):
            if tuple(getattr(self, name).shape) != shape:
                raise LookalikeError(
                    f"RetrievalResults: {name} has shape {tuple(getattr(self, name).shape)}, expected {shape}."
                )
        for name, n in (("n_relevant", nq), ("query_labels", nq), ("gallery_labels", ng)):
            if tuple(getattr(self, name).shape) != (n,):
                got = tuple(getattr(self, name).shape)
                raise LookalikeError(f"RetrievalResults: {name} must have shape ({n},), got {got}.")
        if self.query_categories is not None and len(self.query_categories) != nq:
            raise LookalikeError(
                f"RetrievalResults: query_categories must have {nq} entries, got {len(self.query_categories)}."
            )

    # --- shape -------------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        """Number of retrieved columns (some may be padding)."""
        return int(self.retrieved_ids.shape[1])

    @property
    def n_queries(self) -> int:
        return int(self.retrieved_ids.shape[0])

    @property
    def n_gallery(self) -> int:
        return int(self.gallery_ids.shape[0])

    @property
    def retrieved_dataset_ids(self) -> Tensor:
        """Dataset indices of the retrieved items, ``-1`` at padding."""
        ids = self.retrieved_ids
        return torch.where(ids >= 0, self.gallery_ids[ids.clamp(min=0)], ids)

    # --- derived results -----------------------------------------------------------------------------
    def subset(self, query_mask: Any) -> "RetrievalResults":
        """The results of some queries only (bool mask of length Nq, or query row positions); gallery unchanged."""
        sel = torch.as_tensor(np.asarray(query_mask)) if not isinstance(query_mask, Tensor) else query_mask
        sel = sel.cpu()
        if sel.dtype == torch.bool:
            if sel.shape != (self.n_queries,):
                raise LookalikeError(
                    f"subset: a bool mask must have shape ({self.n_queries},), got {tuple(sel.shape)}."
                )
            sel = sel.nonzero().squeeze(1)
        elif sel.is_floating_point() or sel.ndim != 1:
            raise LookalikeError("subset: pass a 1-D bool mask or integer query positions.")
        sel = sel.to(torch.int64)
        if len(sel) and (int(sel.min()) < -self.n_queries or int(sel.max()) >= self.n_queries):
            raise LookalikeError(f"subset: query positions must be in [0, {self.n_queries}).")
        cats = None if self.query_categories is None else self.query_categories[sel.numpy()]
        return replace(
            self,
            retrieved_ids=self.retrieved_ids[sel],
            distances=self.distances[sel],
            is_relevant=self.is_relevant[sel],
            n_relevant=self.n_relevant[sel],
            query_ids=self.query_ids[sel],
            query_labels=self.query_labels[sel],
            query_categories=cats,
        )

    def with_threshold(self, max_distance: float) -> "RetrievalResults":
        """Items farther than ``max_distance`` become padding (-1 / +inf / False); ``n_relevant`` is unchanged."""
        max_distance = float(max_distance)
        if max_distance != max_distance:
            raise LookalikeError("with_threshold: max_distance is NaN.")
        drop = ~(self.distances <= max_distance)
        return replace(
            self,
            retrieved_ids=self.retrieved_ids.masked_fill(drop, -1),
            distances=self.distances.masked_fill(drop, float("inf")),
            is_relevant=self.is_relevant & ~drop,
        )

    def top(self, k: int) -> "RetrievalResults":
        """The first ``k`` columns (``k`` at most the current `k`)."""
        k = check_k(k)
        if k > self.k:
            raise LookalikeError(
                f"top({k}): these results only hold k={self.k} items per query; search again with k>={k}."
            )
        return replace(
            self,
            retrieved_ids=self.retrieved_ids[:, :k].contiguous(),
            distances=self.distances[:, :k].contiguous(),
            is_relevant=self.is_relevant[:, :k].contiguous(),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RetrievalResults):
            return NotImplemented
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, Tensor):
                if not (isinstance(b, Tensor) and a.shape == b.shape and torch.equal(a, b)):
                    return False
            elif a is None or b is None:
                if a is not b:
                    return False
            elif not np.array_equal(np.asarray(a), np.asarray(b)):
                return False
        return True

    # --- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_embeddings(
        cls,
        embeddings: Any,
        labels: Any,
        is_query: Any,
        is_gallery: Any,
        *,
        k: int,
        sequences: Any = None,
        categories: Any = None,
        distance: str = "cosine",
        backend: str | SearchBackend = "exact",
        query_chunk_size: int | None = None,
        gallery_chunk_size: int | None = None,
    ) -> "RetrievalResults":
        """Search the gallery items for every query item of one embedded dataset.

        An item that is both query and gallery never retrieves itself; with ``sequences`` (any hashable per
        item, NaN / None = no sequence) gallery items of the query's sequence are neither retrieved nor counted
        as relevant. ``backend``: ``"exact"``, ``"exact-fp32"``, ``"exact-bf16"``, ``"faiss:<factory>"`` or a
        `SearchBackend`.
        """
        emb = as_embeddings(embeddings, "embeddings")
        n = len(emb)
        k = check_k(k)
        distance = check_distance(distance)
        labels_t = _as_labels(labels, n)
        q_flag, g_flag = _as_flags(is_query, n, "is_query"), _as_flags(is_gallery, n, "is_gallery")
        if not bool(q_flag.any()):
            raise LookalikeError("No query items: set is_query=True for at least one item of the validation set.")
        if not bool(g_flag.any()):
            raise LookalikeError("No gallery items: set is_gallery=True for at least one item of the validation set.")
        seq = None
        if sequences is not None:
            if len(sequences) != n:
                raise LookalikeError(f"sequences must have one value per embedding ({n}), got {len(sequences)}.")
            seq = factorize_sequences(sequences)
        cats = None
        if categories is not None:
            if isinstance(categories, Tensor):
                cat_arr = categories.cpu().numpy()
            else:
                cat_arr = np.asarray(categories, dtype=object)
            if cat_arr.ndim != 1 or len(cat_arr) != n:
                raise LookalikeError(f"categories must have one value per embedding ({n}), got shape {cat_arr.shape}.")
            cats = cat_arr
        search = make_backend(
            backend, distance, query_chunk_size=query_chunk_size, gallery_chunk_size=gallery_chunk_size
        )

        query_ids = q_flag.nonzero().squeeze(1)
        gallery_ids = g_flag.nonzero().squeeze(1)
        exclude = []
        if bool((q_flag & g_flag).any()):
            exclude.append((query_ids, gallery_ids))  # the same dataset item
        if seq is not None and bool((seq >= 0).any()):
            exclude.append((seq[query_ids], seq[gallery_ids]))  # the same sequence (-1 matches nothing)
        # no copy of the embeddings: the queries are a view when they are one run of rows (else a copy: queries
        # are usually few), the gallery is searched as rows of the table (exact search reads them block by block)
        q_emb = as_tensor_or_subset(emb, None if len(query_ids) == n else query_ids)
        if isinstance(q_emb, RowSubset):
            q_emb = q_emb[:]
        distances, retrieved = search.search(q_emb, emb, k, exclude=exclude or None,
                                             gallery_rows=None if len(gallery_ids) == n else gallery_ids)

        q_labels, g_labels = labels_t[query_ids], labels_t[gallery_ids]
        valid = retrieved >= 0
        is_relevant = valid & (g_labels[retrieved.clamp(min=0)] == q_labels[:, None])
        n_relevant = _count_relevant(q_labels, g_labels, g_flag[query_ids], seq, query_ids, gallery_ids)
        return cls(
            retrieved_ids=retrieved,
            distances=distances,
            is_relevant=is_relevant,
            n_relevant=n_relevant,
            query_ids=query_ids,
            gallery_ids=gallery_ids,
            query_labels=q_labels,
            gallery_labels=g_labels,
            query_categories=None if cats is None else cats[query_ids.numpy()],
        )


def _count_relevant(
    q_labels: Tensor,
    g_labels: Tensor,
    query_in_gallery: Tensor,
    seq: Tensor | None,
    query_ids: Tensor,
    gallery_ids: Tensor,
) -> Tensor:
    """Gallery items with the query's label, minus the query itself and its same-sequence items (vectorised)."""
    uniq, codes = torch.unique(torch.cat([q_labels, g_labels]), return_inverse=True)
    q_code, g_code = codes[: len(q_labels)], codes[len(q_labels) :]
    per_label = torch.bincount(g_code, minlength=len(uniq))
    n_rel = per_label[q_code]
    if seq is None:
        return n_rel - query_in_gallery.long()
    q_seq, g_seq = seq[query_ids], seq[gallery_ids]
    n_seq = int(seq.max()) + 2
    # gallery counts of every (label, sequence) pair; the query itself (if in the gallery) is one of them
    g_key = g_code * n_seq + g_seq
    keys, counts = torch.unique(g_key[g_seq >= 0], return_counts=True)
    q_key = q_code * n_seq + q_seq
    if len(keys) == 0:
        same_seq = torch.zeros_like(q_seq)
    else:
        pos = torch.searchsorted(keys, q_key).clamp(max=len(keys) - 1)
        found = (q_seq >= 0) & (keys[pos] == q_key)
        same_seq = torch.where(found, counts[pos], torch.zeros_like(q_seq))
    return torch.where(q_seq >= 0, n_rel - same_seq, n_rel - query_in_gallery.long())
