"""Reference ("canonical") distances of (query, gallery) pairs: float64 arithmetic in a fixed order, then float32.

Exact search reports these values. They are computed pair by pair with elementwise operations and a fixed
pairwise summation tree, so a pair's distance is bit-for-bit the same whatever the chunk sizes, the batch it
is computed in, the BLAS library, or the precision used to *find* the candidates (fp32 or bf16 screening).
That is what lets the bf16 fast path promise results identical to the fp32 path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["tree_sum", "row_norms", "pair_distances"]

#: float64 elements materialised at once when gathering pairs (2 x 32 MB)
_PAIR_ELEMENTS = 1 << 22


def tree_sum(x: Tensor) -> Tensor:
    """Sum over the last dimension by a fixed pairwise tree (zero padding to a power of two): deterministic."""
    n = x.shape[-1]
    width = 1 << max(n - 1, 0).bit_length()
    if width != n:
        x = F.pad(x, (0, width - n))
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def row_norms(x: Tensor, chunk_rows: int | None = None) -> Tensor:
    """Float64 Euclidean norm of every row of ``x`` (computed with `tree_sum`, so reproducible per row)."""
    rows = chunk_rows or max(1, _PAIR_ELEMENTS // max(x.shape[1], 1))
    out = torch.empty(len(x), dtype=torch.float64)
    for a in range(0, len(x), rows):
        block = x[a : a + rows].double()
        out[a : a + rows] = tree_sum(block * block).sqrt()
    return out


def pair_distances(
    queries: Tensor,
    gallery: Tensor,
    query_pos: Tensor,
    gallery_pos: Tensor,
    distance: str,
    query_norms: Tensor | None = None,
    gallery_norms: Tensor | None = None,
) -> Tensor:
    """Canonical float32 distances of the pairs ``(queries[query_pos[i]], gallery[gallery_pos[i]])``.

    cosine = ``max(0, 1 - <q, g> / (|q| |g|))`` (a zero vector is at distance 1 from everything),
    inner_product = ``-<q, g>``, euclidean = ``sqrt(sum((q - g)^2))``. The norms (float64, from `row_norms`)
    are needed for cosine only.
    """
    n = len(query_pos)
    out = torch.empty(n, dtype=torch.float32)
    step = max(1, _PAIR_ELEMENTS // max(queries.shape[1], 1))
    for a in range(0, n, step):
        qi, gi = query_pos[a : a + step], gallery_pos[a : a + step]
        q, g = queries[qi].double(), gallery[gi].double()
        if distance == "euclidean":
            diff = q - g
            value = tree_sum(diff * diff).sqrt()
        else:
            dot = tree_sum(q * g)
            if distance == "inner_product":
                value = -dot
            else:
                denom = query_norms[qi] * gallery_norms[gi]
                cos = torch.where(denom > 0, dot / torch.where(denom > 0, denom, 1.0), torch.zeros_like(dot))
                value = (1.0 - cos).clamp_min(0.0)
        out[a : a + step] = value.float()
    return out
