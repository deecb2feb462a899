"""The one rule every re-ranker uses to put new scores into a `RetrievalResults`: re-order the first ``n``
columns of each row by the new scores, keep the rest as they were, and keep the distances ascending."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from lookalike.errors import LookalikeError
from lookalike.retrieval.results import RetrievalResults

__all__ = ["reorder_top", "check_top_n"]


def check_top_n(top_n: object, owner: str, minimum: int = 1) -> int:
    """``top_n`` must be an integer >= ``minimum`` (bool refused); the message names ``owner``."""
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < minimum:
        raise LookalikeError(f"{owner}: top_n must be an integer >= {minimum}, got {top_n!r}.")
    return top_n


def reorder_top(results: RetrievalResults, scores: Tensor) -> RetrievalResults:
    """``results`` with the first ``n = scores.shape[1]`` columns of each row sorted by ``scores`` (ascending,
    smaller = closer; ties keep the search's order); columns beyond ``n`` are unchanged.

    The new distances of the first ``n`` columns are the scores, except that a row whose largest score is not
    below its ``(n+1)``-th original distance has its scores scaled by ``d_(n+1) / max score`` (times 1 - 1e-6;
    or shifted down when a distance or score is negative), so every row stays ascending. Padding (id -1) gets score +inf and stays last; ids and lengths never change.
    """
    n = int(scores.shape[1])
    if scores.shape[0] != results.n_queries or n > results.k:
        raise LookalikeError(f"reorder_top: scores of shape {tuple(scores.shape)} for results of "
                             f"{results.n_queries} queries x k={results.k}.")
    ids = results.retrieved_ids[:, :n]
    valid = ids >= 0
    scores = torch.where(valid, scores.float(), float("inf"))
    order = torch.sort(scores, dim=1, stable=True).indices
    new = scores.gather(1, order)
    if n < results.k:  # stay below the first item after the re-ranked block
        nxt = results.distances[:, n].float()
        finite = torch.isfinite(new)
        top = torch.where(finite, new, -torch.inf).max(dim=1).values
        low = torch.where(finite, new, torch.inf).min(dim=1).values
        need = torch.isfinite(nxt) & torch.isfinite(top) & (top >= nxt)
        scale = need & (nxt > 0) & (low >= 0)
        factor = torch.where(scale, nxt * (1 - 1e-6) / torch.where(scale, top, 1.0), 1.0)
        shift = torch.where(need & ~scale, top - nxt + 1e-6 * (1 + nxt.abs()), 0.0)
        new = new * factor[:, None] - shift[:, None]
    full = torch.arange(results.k).expand(results.n_queries, -1).clone()
    full[:, :n] = order
    distances = results.distances.clone()
    distances[:, :n] = new
    return replace(
        results,
        retrieved_ids=results.retrieved_ids.gather(1, full),
        distances=distances,
        is_relevant=results.is_relevant.gather(1, full),
    )
