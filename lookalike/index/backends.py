"""The index's backends by name (exact, faiss_flat, faiss_ivf, faiss_hnsw) on top of `lookalike.retrieval`, and
the recall@k of an approximate one against exact search, measured when it is built."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from lookalike.errors import ConfigError, unknown_choice
from lookalike.retrieval import ExactSearch, FaissSearch, make_backend

__all__ = ["BACKENDS", "APPROXIMATE", "check_backend", "make_searcher", "measure_recall", "faiss_spec"]

BACKENDS = ("exact", "faiss_flat", "faiss_ivf", "faiss_hnsw")
APPROXIMATE = ("faiss_ivf", "faiss_hnsw")
#: the arguments each backend takes, with their defaults (None: chosen from the number of items)
_ARGS: dict[str, dict[str, Any]] = {
    "exact": {},
    "faiss_flat": {},
    "faiss_ivf": {"nlist": None, "nprobe": 16},
    "faiss_hnsw": {"M": 32, "efSearch": 128},
}


def check_backend(backend: str, backend_args: Mapping | None, n_items: int) -> dict:
    """The full arguments of ``backend`` (defaults filled in); unknown names and arguments are refused."""
    if backend not in BACKENDS:
        raise ConfigError(unknown_choice("index backend", backend, BACKENDS))
    given = dict(backend_args or {})
    unknown = sorted(set(given) - set(_ARGS[backend]))
    if unknown:
        valid = ", ".join(_ARGS[backend]) or "none"
        raise ConfigError(f"backend_args: {', '.join(unknown)} do not apply to backend {backend!r} (its "
                          f"arguments: {valid}).")
    args = {**_ARGS[backend], **given}
    for name, value in args.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"backend_args.{name}: a positive integer, got {value!r}.")
    if backend == "faiss_ivf" and args["nlist"] is None:
        # about 4 sqrt(N) lists, each trained on >= 39 vectors (faiss' own minimum)
        args["nlist"] = max(1, min(int(4 * math.sqrt(max(n_items, 1))), n_items // 39))
    return args


def faiss_spec(backend: str, args: Mapping) -> tuple[str, dict]:
    """The faiss factory string and search options of a faiss backend."""
    if backend == "faiss_flat":
        return "Flat", {}
    if backend == "faiss_ivf":
        return f"IVF{args['nlist']},Flat", {"nprobe": args["nprobe"]}
    return f"HNSW{args['M']}", {"efSearch": args["efSearch"]}


def make_searcher(backend: str, args: Mapping, distance: str) -> ExactSearch | FaissSearch:
    """An unfitted search backend for ``backend`` with ``args`` (see `check_backend`)."""
    if backend == "exact":  # searched many times over the same items: their norms are kept between searches
        return ExactSearch(distance, cache_gallery=True)
    factory, options = faiss_spec(backend, args)
    return make_backend(f"faiss:{factory}", distance, **options)


def measure_recall(searcher: FaissSearch, gallery: torch.Tensor, distance: str, k: int = 10,
                   sample: int = 1000, seed: int = 0) -> dict:
    """Recall@k of the fitted ``searcher`` against exact search: for ``sample`` indexed items (seeded), the
    share of their exact k nearest other items that the backend also returns in its top k."""
    n = len(gallery)
    k = max(1, min(k, n - 1))
    if n < 2:
        return {"k": k, "sample": 0, "recall": None}
    rows = np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))
    q = gallery[torch.from_numpy(rows)]
    self_keys = (torch.from_numpy(rows), torch.arange(n))
    _, exact = ExactSearch(distance).search(q, gallery, k, exclude=self_keys)
    _, approx = searcher.query(q, k, exclude=self_keys)
    hits = (exact[:, :, None] == approx[:, None, :]).any(dim=2) & (exact >= 0)
    recall = float(hits.sum()) / max(int((exact >= 0).sum()), 1)
    return {"k": k, "sample": len(rows), "recall": round(recall, 4)}
