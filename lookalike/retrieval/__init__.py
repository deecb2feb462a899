"""Retrieval: exact chunked top-k search (fp32 or verified bf16), faiss indexes, and `RetrievalResults`.

Search never builds the Nq x Ng distance matrix. Every backend answers
``search(queries, gallery, k, exclude=...) -> (distances, indices)`` with "smaller is closer" distances and
``(-1, +inf)`` padding; `RetrievalResults.from_embeddings` runs one on an embedded validation set.
"""

from lookalike.retrieval.base import DISTANCES, ExcludeSpec, Exclusion, SearchBackend
from lookalike.retrieval.distances import pair_distances
from lookalike.retrieval.exact import PRECISIONS, ExactSearch
from lookalike.retrieval.factory import BACKEND_SPECS, make_backend
from lookalike.retrieval.faiss_search import FaissSearch
from lookalike.retrieval.results import RetrievalResults, factorize_sequences

__all__ = [
    "BACKEND_SPECS",
    "DISTANCES",
    "PRECISIONS",
    "ExactSearch",
    "ExcludeSpec",
    "Exclusion",
    "FaissSearch",
    "RetrievalResults",
    "SearchBackend",
    "factorize_sequences",
    "make_backend",
    "pair_distances",
]
