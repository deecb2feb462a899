"""Alpha query expansion: re-rank each query's retrieved list with a query moved towards its nearest neighbours.

A query often has a near-duplicate among its top results; adding those neighbours to the query (weighted by
their similarity to the power ``alpha``) pulls in relevant items that look like the neighbours more than like
the query itself (Radenovic et al., "Fine-tuning CNN image retrieval with no human annotation", 2018). Only the
already retrieved candidates are re-scored, so the cost is O(Nq x k x d) and memory stays bounded.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from lookalike.errors import LookalikeError
from lookalike.retrieval.results import RetrievalResults

__all__ = ["QueryExpansion"]

#: queries re-ranked at once (a block holds query_block x k x dim floats)
_QUERY_BLOCK = 2048


class QueryExpansion:
    """Re-ranks the top ``top_n`` retrieved items of every query by cosine distance to the expanded query
    ``normalise(q + sum_i max(0, cos(q, g_i))^alpha g_i)`` over its ``n_neighbours`` nearest items.

    Used as ``postprocessor`` of `EmbeddingMetrics` (which then searches ``top_n`` deep) or called directly:
    ``QueryExpansion()(results, query_embeddings, gallery_embeddings)``. Cosine distance only.
    """

    distances = ("cosine",)

    def __init__(self, n_neighbours: int = 2, alpha: float = 3.0, top_n: int = 20) -> None:
        if isinstance(n_neighbours, bool) or not isinstance(n_neighbours, int) or n_neighbours < 1:
            raise LookalikeError(f"QueryExpansion: n_neighbours must be a positive integer, got {n_neighbours!r}.")
        if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < n_neighbours:
            raise LookalikeError(f"QueryExpansion: top_n must be an integer >= n_neighbours ({n_neighbours}), "
                                 f"got {top_n!r}.")
        if not float(alpha) >= 0:
            raise LookalikeError(f"QueryExpansion: alpha must be >= 0, got {alpha!r}.")
        self.n_neighbours, self.alpha, self.top_n = n_neighbours, float(alpha), top_n

    def __repr__(self) -> str:
        return f"QueryExpansion(n_neighbours={self.n_neighbours}, alpha={self.alpha:g}, top_n={self.top_n})"

    @torch.no_grad()
    def __call__(self, results: RetrievalResults, query_embeddings: Tensor, gallery_embeddings: Tensor,
                 distance: str = "cosine") -> RetrievalResults:
        """The same results with every query's retrieved items re-ordered (and their distances re-computed);
        padding stays last. ``query_embeddings`` / ``gallery_embeddings`` are in the order of the results."""
        if distance not in self.distances:
            raise LookalikeError(f"QueryExpansion works with cosine distance only, not {distance!r}.")
        if len(query_embeddings) != results.n_queries or len(gallery_embeddings) != results.n_gallery:
            raise LookalikeError(
                f"QueryExpansion: got {len(query_embeddings)} query and {len(gallery_embeddings)} gallery embeddings "
                f"for results of {results.n_queries} queries and {results.n_gallery} gallery items."
            )
        gallery = torch.nn.functional.normalize(gallery_embeddings.float(), dim=1)
        order = torch.empty_like(results.retrieved_ids)
        new_distances = torch.empty_like(results.distances)
        for a in range(0, results.n_queries, _QUERY_BLOCK):
            b = min(a + _QUERY_BLOCK, results.n_queries)
            ids = results.retrieved_ids[a:b]
            valid = ids >= 0
            candidates = gallery[ids.clamp(min=0)]  # (block, k, d)
            query = torch.nn.functional.normalize(query_embeddings[a:b].float(), dim=1)
            n = min(self.n_neighbours, ids.shape[1])
            similarity = (1.0 - results.distances[a:b, :n]).clamp(min=0.0)
            weights = torch.where(valid[:, :n], similarity.pow(self.alpha), 0.0)
            expanded = torch.nn.functional.normalize(
                query + torch.einsum("bn,bnd->bd", weights, candidates[:, :n]), dim=1)
            scores = torch.einsum("bd,bkd->bk", expanded, candidates)
            dist = torch.where(valid, (1.0 - scores).clamp(min=0.0), float("inf"))
            # stable: equal distances keep the search's order (and padding stays last)
            order[a:b] = torch.sort(dist, dim=1, stable=True).indices
            new_distances[a:b] = dist.gather(1, order[a:b])
        return replace(
            results,
            retrieved_ids=results.retrieved_ids.gather(1, order),
            distances=new_distances,
            is_relevant=results.is_relevant.gather(1, order),
        )
