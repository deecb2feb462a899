"""Post-processors: ``RetrievalResults -> RetrievalResults`` re-rankers applied after search, before metrics.

Each is called as ``postprocessor(results, query_embeddings, gallery_embeddings, distance)`` and re-orders the
first ``top_n`` retrieved items of every query (`reorder_top`): query expansion, k-reciprocal re-ranking and
a learned pairwise model.
"""

from lookalike.postprocess.k_reciprocal import KReciprocalReranker
from lookalike.postprocess.pairwise import PairwiseReranker, pairwise_reranker
from lookalike.postprocess.query_expansion import QueryExpansion
from lookalike.postprocess.reorder import reorder_top

__all__ = ["KReciprocalReranker", "PairwiseReranker", "QueryExpansion", "pairwise_reranker", "reorder_top"]
