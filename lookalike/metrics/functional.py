"""Retrieval metrics as vectorised functions of `RetrievalResults`, one value per query.

Per-query values let the same code give the means, the per-category breakdown and the worst queries.
Queries without any relevant gallery item have no defined value: they are excluded from every mean, and
counted (see `reduce_metrics`). Definitions with a worked example: docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from lookalike.errors import LookalikeError
from lookalike.retrieval import RetrievalResults

__all__ = [
    "OVERALL",
    "cmc_at_k",
    "precision_at_k",
    "map_at_k",
    "map_at_r",
    "r_precision",
    "has_relevant",
    "reduce_metrics",
    "worst_queries",
]

OVERALL = "OVERALL"


def _check_ks(ks: Iterable[int]) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if any(k < 1 for k in ks):
        raise LookalikeError(f"top-k values must be positive integers, got {ks}")
    return ks


def has_relevant(results: RetrievalResults) -> Tensor:
    """Queries that have at least one relevant gallery item (the only ones with defined metrics)."""
    return results.n_relevant > 0


def _hits(results: RetrievalResults, k: int) -> Tensor:
    """(Nq, k) float hits; columns beyond the retrieved ones count as misses (k may exceed results.k)."""
    hits = results.is_relevant[:, :k].float()
    if hits.shape[1] < k:
        hits = torch.nn.functional.pad(hits, (0, k - hits.shape[1]))
    return hits


def cmc_at_k(results: RetrievalResults, ks: Iterable[int]) -> dict[int, Tensor]:
    """CMC@k: 1 when a relevant item is among the top k, else 0."""
    return {k: _hits(results, k).amax(dim=1) for k in _check_ks(ks)}


def precision_at_k(results: RetrievalResults, ks: Iterable[int]) -> dict[int, Tensor]:
    """Precision@k: relevant items in the top k / min(k, number of relevant items)."""
    n_rel = results.n_relevant.float()
    return {k: _hits(results, k).sum(1) / n_rel.clamp(max=k).clamp(min=1) for k in _check_ks(ks)}


def _average_precision(hits: Tensor, denominator: Tensor) -> Tensor:
    ranks = torch.arange(1, hits.shape[1] + 1, dtype=hits.dtype)
    precision_at_i = hits.cumsum(1) / ranks
    return (precision_at_i * hits).sum(1) / denominator.clamp(min=1)


def map_at_k(results: RetrievalResults, ks: Iterable[int]) -> dict[int, Tensor]:
    """AP@k per query: sum over hit positions i <= k of precision@i, / min(k, number of relevant items)."""
    n_rel = results.n_relevant.float()
    return {k: _average_precision(_hits(results, k), n_rel.clamp(max=k)) for k in _check_ks(ks)}


def _top_r_hits(results: RetrievalResults) -> Tensor:
    max_r = int(results.n_relevant.max()) if results.n_queries else 0
    if max_r > results.k:
        raise LookalikeError(f"MAP@R and R-precision need the top R items of every query (R = its number of "
                             f"relevant items, up to {max_r}), but the results hold k={results.k}; search with "
                             f"k >= {max_r}.")
    hits = _hits(results, max(max_r, 1))
    within_r = torch.arange(hits.shape[1])[None, :] < results.n_relevant[:, None]
    return hits * within_r


def map_at_r(results: RetrievalResults) -> Tensor:
    """MAP@R: average precision over the top R, R = the query's number of relevant items, divided by R."""
    return _average_precision(_top_r_hits(results), results.n_relevant.float())


def r_precision(results: RetrievalResults) -> Tensor:
    """R-precision: relevant items among the top R / R."""
    return _top_r_hits(results).sum(1) / results.n_relevant.float().clamp(min=1)


def _mean(values: Tensor, mask: Tensor) -> float | None:
    return float(values[mask].double().mean()) if bool(mask.any()) else None


def _reduce_group(per_query: Mapping, mask: Tensor, valid: Tensor) -> dict:
    use = mask & valid
    out: dict = {}
    for name, value in per_query.items():
        if isinstance(value, Mapping):
            out[name] = {k: _mean(v, use) for k, v in value.items()}
        else:
            out[name] = _mean(value, use)
    out["n_queries"] = int(mask.sum())
    out["n_queries_without_relevant"] = int((mask & ~valid).sum())
    return out


def reduce_metrics(per_query: Mapping, valid: Tensor, categories: np.ndarray | None = None) -> dict:
    """Means of per-query metrics over the queries in `valid`: {"OVERALL": {...}, "<category>": {...}}.

    A mean over no query is None (never NaN); each group also reports n_queries and
    n_queries_without_relevant.
    """
    everything = torch.ones_like(valid)
    out = {OVERALL: _reduce_group(per_query, everything, valid)}
    if categories is not None:
        categories = np.asarray(categories, dtype=object).astype(str)
        for category in sorted(set(categories.tolist())):
            mask = torch.from_numpy(categories == category)
            out[category] = _reduce_group(per_query, mask, valid)
    return out


def worst_queries(per_query_metric: Tensor, n: int, valid: Tensor | None = None) -> Tensor:
    """Positions of the n queries with the lowest metric (ties: earlier query first), among `valid` ones."""
    values = per_query_metric.double().clone()
    if valid is not None:
        values[~valid] = torch.inf
    order = torch.sort(values, stable=True).indices
    if valid is not None:
        order = order[valid[order]]
    return order[:n]
