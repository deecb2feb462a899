"""Retrieval metrics as vectorised functions of `RetrievalResults`, one value per query.

Per-query values let the same code give the means, the per-category breakdown and the worst queries.
Queries without any relevant gallery item have no defined value: they are excluded from every mean, and
counted (see `reduce_metrics`). Definitions with a worked example: docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from lookalike.errors import LookalikeError
from lookalike.retrieval import RetrievalResults

__all__ = [
    "OVERALL",
    "HAS_RELEVANT",
    "cmc_at_k",
    "per_query_metrics",
    "precision_at_k",
    "map_at_k",
    "map_at_r",
    "r_precision",
    "has_relevant",
    "reduce_metrics",
    "worst_queries",
]

OVERALL = "OVERALL"
#: key of `per_query_metrics` output that marks the queries with a relevant gallery item
HAS_RELEVANT = "has_relevant"


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


def per_query_metrics(results: RetrievalResults, cmc_top_k: Iterable[int] = (1, 5),
                      precision_top_k: Iterable[int] = (5,), map_top_k: Iterable[int] = (5,),
                      compute_map_at_r: bool = False) -> dict[str, Any]:
    """Every requested metric per query, ``{"cmc": {k: (Nq,)}, "precision": {..}, "map": {..}, ["map_at_r",
    "r_precision",] "has_relevant": (Nq,) bool}``: the input of `reduce_metrics` and `worst_queries`."""
    out: dict[str, Any] = {}
    if cmc_top_k:
        out["cmc"] = cmc_at_k(results, cmc_top_k)
    if precision_top_k:
        out["precision"] = precision_at_k(results, precision_top_k)
    if map_top_k:
        out["map"] = map_at_k(results, map_top_k)
    if compute_map_at_r:
        out["map_at_r"] = map_at_r(results)
        out["r_precision"] = r_precision(results)
    out[HAS_RELEVANT] = has_relevant(results)
    return out


def _mean(values: Tensor, mask: Tensor) -> float | None:
    return float(values[mask].double().mean()) if bool(mask.any()) else None


def _reduce_group(per_query: Mapping, mask: Tensor, valid: Tensor) -> dict:
    use = mask & valid
    out: dict = {}
    for name, value in per_query.items():
        if name == HAS_RELEVANT:
            continue
        if isinstance(value, Mapping):
            out[name] = {k: _mean(v, use) for k, v in value.items()}
        else:
            out[name] = _mean(value, use)
    out["n_queries"] = int(mask.sum())
    out["n_queries_without_relevant"] = int((mask & ~valid).sum())
    return out


def _n_queries(per_query: Mapping) -> int:
    for value in per_query.values():
        if isinstance(value, Mapping):
            for v in value.values():
                return len(v)
        elif isinstance(value, Tensor):
            return len(value)
    return 0


def reduce_metrics(per_query: Mapping, categories: Any = None, valid: Tensor | None = None) -> dict:
    """Means of per-query metrics: ``{"OVERALL": {...}, "<category>": {...}}``, one group per category.

    Only queries with a relevant gallery item count in a mean: ``valid`` (bool, per query), else
    ``per_query["has_relevant"]`` (what `per_query_metrics` stores), else every query. A mean over no query is
    None (never NaN); each group also reports ``n_queries`` and ``n_queries_without_relevant``.
    """
    if valid is None:
        valid = per_query.get(HAS_RELEVANT)
    if valid is None:
        valid = torch.ones(_n_queries(per_query), dtype=torch.bool)
    valid = torch.as_tensor(valid).bool()
    everything = torch.ones_like(valid)
    out = {OVERALL: _reduce_group(per_query, everything, valid)}
    if categories is not None:
        categories = np.asarray(categories, dtype=object).astype(str)
        if len(categories) != len(valid):
            raise LookalikeError(f"reduce_metrics: {len(categories)} categories for {len(valid)} queries")
        for category in sorted(set(categories.tolist())):
            if category == OVERALL:
                raise LookalikeError(f"a category is named {OVERALL!r}, which is reserved for the overall "
                                     f"metrics; rename that category in the dataset")
            mask = torch.from_numpy(categories == category)
            out[category] = _reduce_group(per_query, mask, valid)
    return out


def worst_queries(per_query_metric: Tensor, n: int, valid: Tensor | None = None,
                  tie_breakers: Sequence[Tensor] = ()) -> Tensor:
    """Positions of the n queries with the lowest metric among `valid` ones; ties go to the lowest value of the
    first tie-breaker, then the next (all ascending), then to the earlier query."""
    order = torch.arange(len(per_query_metric))
    for key in (*reversed(tuple(tie_breakers)), per_query_metric):  # stable sorts, least significant key first
        order = order[torch.sort(key.double()[order], stable=True).indices]
    if valid is not None:
        order = order[valid[order]]
    return order[:n]
