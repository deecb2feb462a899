"""Post-processors: ``RetrievalResults -> RetrievalResults`` re-rankers applied after search, before metrics."""

from lookalike.postprocess.query_expansion import QueryExpansion

__all__ = ["QueryExpansion"]
