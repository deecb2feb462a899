"""Layer 3: retrieval metrics (CMC@k, precision@k, mAP@k, MAP@R, R-precision, FNMR@FMR) and their accumulator.

Definitions with worked examples: docs/metrics.md.
"""

from lookalike.metrics import fnmr
from lookalike.metrics.embedding_metrics import EmbeddingMetrics, evaluate_embeddings
from lookalike.metrics.fnmr import fmr_thresholds, fnmr_at_fmr
from lookalike.metrics.functional import (
    HAS_RELEVANT,
    OVERALL,
    cmc_at_k,
    has_relevant,
    map_at_k,
    map_at_r,
    per_query_metrics,
    precision_at_k,
    r_precision,
    reduce_metrics,
    worst_queries,
)

__all__ = [
    "HAS_RELEVANT",
    "OVERALL",
    "EmbeddingMetrics",
    "cmc_at_k",
    "evaluate_embeddings",
    "fnmr",
    "fnmr_at_fmr",
    "fmr_thresholds",
    "has_relevant",
    "map_at_k",
    "map_at_r",
    "per_query_metrics",
    "precision_at_k",
    "r_precision",
    "reduce_metrics",
    "worst_queries",
]
