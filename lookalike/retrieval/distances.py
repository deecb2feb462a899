"""Reference ("canonical") distances of (query, gallery) pairs: float64 arithmetic in a fixed order, then float32.

Exact search reports these values. They are computed pair by pair with elementwise operations and a fixed
pairwise summation tree, so a pair's distance is bit-for-bit the same whatever the chunk sizes, the batch it
is computed in, the BLAS library, or the precision used to *find* the candidates (fp32 or bf16 screening).
That is what lets the bf16 fast path promise results identical to the fp32 path.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["tree_sum", "row_norms", "pair_distances"]

#: float64 elements per temporary (1 MB): small temporaries stay in the allocator's heap (no page faults)
_CHUNK_ELEMENTS = 1 << 17


def tree_sum(x: Tensor) -> Tensor:
    """Sum over the last dimension by a fixed pairwise tree: halves are added elementwise, an odd last element is
    carried to the next level. Every addition is IEEE-rounded, so the result of a row does not depend on the
    batch it is in."""
    while x.shape[-1] > 1:
        n = x.shape[-1]
        half = n // 2
        y = x[..., :half] + x[..., half : 2 * half]
        x = torch.cat([y, x[..., 2 * half :]], dim=-1) if n % 2 else y
    return x[..., 0]


def row_norms(x: Tensor) -> Tensor:
    """Canonical float64 Euclidean norm of every row of ``x`` (`tree_sum`, so reproducible per row)."""
    rows = max(1, _CHUNK_ELEMENTS // max(x.shape[1], 1))
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
) -> Tensor:
    """Canonical float32 distances of the pairs ``(queries[query_pos[i]], gallery[gallery_pos[i]])``.

    cosine = ``max(0, 1 - <q, g> / (|q| |g|))`` (a zero vector is at distance 1 from everything),
    inner_product = ``-<q, g>``, euclidean = ``sqrt(sum((q - g)^2))``. ``query_norms`` (cosine only) are the
    `row_norms` of ``queries``, passed when already known (same values either way).
    """
    n = len(query_pos)
    out = torch.empty(n, dtype=torch.float32)
    step = max(1, _CHUNK_ELEMENTS // max(queries.shape[1], 1))
    for a in range(0, n, step):
        qi, gi = query_pos[a : a + step], gallery_pos[a : a + step]
        q, g = queries.index_select(0, qi).double(), gallery.index_select(0, gi).double()
        if distance == "euclidean":
            diff = q - g
            value = tree_sum(diff * diff).sqrt()
        else:
            dot = tree_sum(q * g)
            if distance == "inner_product":
                value = -dot
            else:
                q_norm = query_norms[qi] if query_norms is not None else tree_sum(q * q).sqrt()
                denom = q_norm * tree_sum(g * g).sqrt()
                ok = denom > 0
                cos = torch.where(ok, dot / torch.where(ok, denom, 1.0), torch.zeros_like(dot))
                value = (1.0 - cos).clamp_min(0.0)
        out[a : a + step] = value.float()
    return out
