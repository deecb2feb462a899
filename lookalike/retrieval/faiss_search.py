"""Approximate (or flat) search with faiss behind the `SearchBackend` interface.

Cosine is inner product on L2-normalised vectors. Excluded pairs are removed after the search, which asks faiss
for ``k`` plus the most items any query can have excluded (and searches again with a larger ``k`` for rows that
still come back short). faiss is imported lazily: ``pip install lookalike[faiss]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from lookalike.errors import LookalikeError
from lookalike.retrieval.base import (
    ExcludeSpec,
    Exclusion,
    SearchBackend,
    as_embeddings,
    check_distance,
    check_k,
    GalleryKey,
    gallery_key,
    sort_by_distance_then_index,
)

__all__ = ["FaissSearch", "import_faiss"]

_INF = float("inf")


def import_faiss() -> Any:
    """Import faiss or raise a `LookalikeError` that names the extra to install."""
    from lookalike.extras import require

    return require("faiss", "the faiss backend (or use backend='exact'; faiss-gpu on a CUDA machine)")


class FaissSearch(SearchBackend):
    """A faiss index built from ``factory`` (``"Flat"``, ``"IVF1024,Flat"``, ``"HNSW32"``, ``"IVF4096,PQ32"``...).

    IVF indexes are trained on a random sample of at most ``train_size`` gallery items (seeded by ``seed``).
    ``nprobe`` / ``efSearch`` are applied where the index has them (``None`` keeps faiss' default).
    ``use_gpu``: ``"auto"`` uses a GPU when faiss-gpu sees one and the index type supports it, ``True`` requires
    one, ``False`` never. The index is kept and reused while ``search`` receives the same gallery tensor.
    """

    def __init__(
        self,
        factory: str = "Flat",
        distance: str = "cosine",
        *,
        nprobe: int | None = 16,
        efSearch: int | None = 128,
        use_gpu: bool | str = "auto",
        train_size: int = 100_000,
        seed: int = 0,
    ):
        self.distance = check_distance(distance)
        if not isinstance(factory, str) or not factory.strip():
            raise LookalikeError(f"faiss factory must be a non-empty string such as 'HNSW32', got {factory!r}.")
        if use_gpu not in ("auto", True, False):
            raise LookalikeError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}.")
        self.factory, self.nprobe, self.efSearch = factory.strip(), nprobe, efSearch
        self.use_gpu, self.train_size, self.seed = use_gpu, train_size, seed
        self.index: Any = None
        self._key: GalleryKey | None = None

    def __repr__(self) -> str:
        return f"FaissSearch(factory={self.factory!r}, distance={self.distance!r})"

    # --- index -----------------------------------------------------------------------------------------
    def _vectors(self, x: Tensor) -> np.ndarray:
        arr = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        if self.distance == "cosine":
            arr = arr.copy()
            import_faiss().normalize_L2(arr)
        return arr

    def fit(self, gallery: Tensor) -> "FaissSearch":
        """Build (and train, for IVF/PQ) the index on ``gallery``; `search` reuses it for the same tensor."""
        self._build(as_embeddings(gallery, "gallery"), gallery_key(gallery))
        return self

    def _build(self, g: Tensor, key: GalleryKey | None) -> None:
        faiss = import_faiss()
        metric = faiss.METRIC_L2 if self.distance == "euclidean" else faiss.METRIC_INNER_PRODUCT
        try:
            index = faiss.index_factory(g.shape[1], self.factory, metric)
        except RuntimeError as e:
            raise LookalikeError(
                f"faiss cannot build an index from factory string {self.factory!r} (dim {g.shape[1]}): "
                f"{_first_line(e)}. Examples: 'Flat', 'HNSW32', 'IVF1024,Flat', 'IVF4096,PQ32'."
            ) from e
        x = self._vectors(g)
        if not index.is_trained:
            rng = np.random.default_rng(self.seed)
            n_train = min(len(x), self.train_size)
            sample = x if n_train == len(x) else x[np.sort(rng.choice(len(x), n_train, replace=False))]
            try:
                index.train(sample)
            except RuntimeError as e:
                raise LookalikeError(
                    f"faiss could not train {self.factory!r} on {n_train} gallery vectors ({_first_line(e)}). "
                    "An IVF<n> index needs at least n (better 40n) vectors: use fewer lists, e.g. 'IVF256,Flat', "
                    "or backend='exact' for a gallery this small."
                ) from e
        index.add(x)
        self._apply_parameters(faiss, index)
        self.index = self._maybe_gpu(faiss, index)
        self._key = key

    def _apply_parameters(self, faiss: Any, index: Any) -> None:
        params = faiss.ParameterSpace()
        for name, value in (("nprobe", self.nprobe), ("efSearch", self.efSearch)):
            if value is not None:
                try:
                    params.set_index_parameter(index, name, value)
                except RuntimeError:
                    pass  # this index type has no such parameter

    def write(self, path: str) -> None:
        """Write the fitted index to ``path`` (faiss' own format; a GPU index is copied to the CPU first)."""
        faiss = import_faiss()
        if self.index is None:
            raise LookalikeError("FaissSearch.write: nothing to write, fit() the index first.")
        index = self.index
        if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
            index = faiss.index_gpu_to_cpu(index)
        faiss.write_index(index, str(path))

    def read(self, path: str) -> "FaissSearch":
        """Load an index written by `write` (its search parameters re-applied); `query` then searches it."""
        faiss = import_faiss()
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise LookalikeError(f"{path} is not a readable faiss index ({_first_line(e)}).") from e
        self._apply_parameters(faiss, index)
        self.index, self._key = self._maybe_gpu(faiss, index), None
        return self

    def _maybe_gpu(self, faiss: Any, index: Any) -> Any:
        if self.use_gpu is False:
            return index
        n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if n_gpus == 0 or not hasattr(faiss, "StandardGpuResources"):
            if self.use_gpu is True:
                raise LookalikeError("use_gpu=True but faiss sees no GPU: install faiss-gpu or use use_gpu='auto'.")
            return index
        try:
            self._gpu_resources = faiss.StandardGpuResources()
            return faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
        except RuntimeError as e:  # e.g. HNSW has no GPU version
            if self.use_gpu is True:
                raise LookalikeError(f"faiss cannot move {self.factory!r} to the GPU: {_first_line(e)}") from e
            return index

    # --- search ----------------------------------------------------------------------------------------
    def _search(self, q: Tensor, g: Tensor, k: int, excl: Exclusion, gallery=None) -> tuple[Tensor, Tensor]:
        """Top-``k`` gallery positions and distances per query (faiss' own float32 distances), padded (-1, +inf)."""
        key = gallery_key(gallery)
        if self.index is None or key is None or key != self._key:
            self._build(g, key)
        return self._query(q, len(g), k, excl)

    @torch.no_grad()
    def query(self, queries: Tensor, k: int, *, exclude: ExcludeSpec = None) -> tuple[Tensor, Tensor]:
        """`search` against the already fitted (or `read`) index, without passing the gallery again: for
        callers that keep one index and search it many times (positions are those of the fitted gallery)."""
        if self.index is None:
            raise LookalikeError("FaissSearch.query: the index is empty, fit() or read() it first.")
        q = as_embeddings(queries, "queries")
        if q.shape[1] != self.index.d:
            raise LookalikeError(
                f"queries have dimension {q.shape[1]} but the index holds dimension {self.index.d}: both must "
                "come from the same extractor."
            )
        k, nq, ng = check_k(k), len(q), int(self.index.ntotal)
        if nq == 0 or ng == 0:
            return torch.full((nq, k), _INF), torch.full((nq, k), -1, dtype=torch.int64)
        return self._query(q, ng, k, Exclusion(exclude, nq, ng))

    def _query(self, q: Tensor, ng: int, k: int, excl: Exclusion) -> tuple[Tensor, Tensor]:
        nq = len(q)
        out_d = torch.full((nq, k), _INF)
        out_i = torch.full((nq, k), -1, dtype=torch.int64)
        qx = self._vectors(q)
        if excl.empty:
            want = torch.full((nq,), min(k, ng), dtype=torch.int64)
        elif excl.per_query is not None:
            want = (k + excl.per_query).clamp(max=ng)
        else:
            want = torch.full((nq,), min(2 * k, ng), dtype=torch.int64)
        todo = torch.arange(nq)
        while len(todo):
            K = int(want[todo].max())
            dist, idx = self._raw_search(qx[todo.numpy()], K)
            if not excl.empty:
                drop = excl.mask(todo[:, None], idx.clamp(min=0)) & (idx >= 0)
                idx = idx.masked_fill(drop, -1)
                dist = dist.masked_fill(drop, _INF)
                n_dropped = drop.sum(dim=1)
            else:
                n_dropped = torch.zeros(len(todo), dtype=torch.int64)
            dist, idx = sort_by_distance_then_index(dist, idx)
            width = min(k, K)
            out_d[todo, :width], out_i[todo, :width] = dist[:, :width], idx[:, :width]
            # rows that lost items to the exclusion and could get more from a wider search
            short = ((idx[:, :width] >= 0).sum(dim=1) < k) & (n_dropped > 0) & (K < ng)
            todo = todo[short]
            want[todo] = torch.clamp(2 * want[todo], max=ng)
        return out_d, out_i

    def _raw_search(self, x: np.ndarray, K: int) -> tuple[Tensor, Tensor]:
        D, I = self.index.search(x, K)
        idx = torch.from_numpy(np.ascontiguousarray(I, dtype=np.int64))
        sim = torch.from_numpy(np.ascontiguousarray(D, dtype=np.float32))
        if self.distance == "cosine":
            dist = (1.0 - sim).clamp_min(0.0)
        elif self.distance == "inner_product":
            dist = -sim
        else:
            dist = sim.clamp_min(0.0).sqrt()
        return dist.masked_fill(idx < 0, _INF), idx


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
