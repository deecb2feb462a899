"""Reference ("canonical") distances of (query, gallery) pairs: float64 arithmetic in a fixed order, then float32.

Exact search reports these values. They are computed pair by pair with elementwise operations and a fixed
pairwise summation tree, so a pair's distance is bit-for-bit the same whatever the chunk sizes, the batch it
is computed in, the BLAS library, or the precision used to *find* the candidates (fp32 or bf16 screening).
That is what lets the bf16 fast path promise results identical to the fp32 path.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["TINY_NORM", "tree_sum", "tree_sum_", "tree_sum_columns_", "row_sq_norms", "pair_distances"]

#: float64 elements per temporary buffer (about 3 MB for the pairs of `pair_distances`)
_CHUNK_ELEMENTS = 1 << 19
#: cosine treats vectors with a smaller norm as zero vectors (their direction is noise)
TINY_NORM = 1e-30


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


def row_sq_norms(x: Tensor) -> Tensor:
    """Canonical float64 squared Euclidean norm of every row of ``x`` (`tree_sum`, so reproducible per row)."""
    n, d = x.shape
    rows = min(max(n, 1), max(1, _CHUNK_ELEMENTS // max(d, 1)))
    buf = torch.empty(d * rows, dtype=torch.float64)
    out = torch.empty(n, dtype=torch.float64)
    for a in range(0, n, rows):
        m = min(rows, n - a)
        block = buf[: d * m].view(d, m)
        block.copy_(x[a : a + m].T)
        out[a : a + m] = tree_sum_columns_(block.mul_(block))
    return out


def tree_sum_(x: Tensor) -> Tensor:
    """In-place `tree_sum` of a 2-D tensor (same additions in the same order, so bit-identical); clobbers ``x``."""
    return tree_sum_columns_(x.T)


def tree_sum_columns_(x: Tensor) -> Tensor:
    """In-place `tree_sum` over the *first* dimension of a 2-D tensor (the sum of every column): the same
    additions as `tree_sum` of the transpose, so bit-identical. Fast when ``x`` is contiguous, because each level
    adds two contiguous halves; clobbers ``x``."""
    n = x.shape[0]
    while n > 1:
        half = n // 2
        x[:half].add_(x[half : 2 * half])
        if n % 2:
            x[half].copy_(x[2 * half])
            n = half + 1
        else:
            n = half
    return x[0]


def pair_distances(
    queries: Tensor,
    gallery: Tensor,
    query_pos: Tensor,
    gallery_pos: Tensor,
    distance: str,
    query_sq_norms: Tensor | None = None,
) -> Tensor:
    """Canonical float32 distances of the pairs ``(queries[query_pos[i]], gallery[gallery_pos[i]])``.

    cosine = ``max(0, 1 - <q, g> / sqrt(|q|^2 |g|^2))`` (vectors with norm <= `TINY_NORM` count as zero
    vectors, at distance 1 from everything; a vector is at distance exactly 0 from itself), inner_product =
    ``-<q, g>``, euclidean = ``sqrt(sum((q - g)^2))``. ``query_sq_norms`` (cosine only) are the `row_sq_norms`
    of ``queries``, passed when already known (same values). Products of float32 numbers are exact in float64,
    so only the tree's additions (and the final divisions / square roots) round.
    """
    n, d = len(query_pos), queries.shape[1]
    out = torch.empty(n, dtype=torch.float32)
    step = min(max(n, 1), max(1, _CHUNK_ELEMENTS // max(d, 1)))
    # preallocated buffers (no allocation, no page faults inside the loop); the float64 ones hold one pair per
    # column, so every level of the summation tree adds two contiguous halves
    qf, gf = torch.empty(step, d), torch.empty(step, d)
    a, b = torch.empty(d * step, dtype=torch.float64), torch.empty(d * step, dtype=torch.float64)
    c = torch.empty(d * step, dtype=torch.float64) if distance == "cosine" else None
    for s0 in range(0, n, step):
        m = min(step, n - s0)
        qi, gi = query_pos[s0 : s0 + m], gallery_pos[s0 : s0 + m]
        A, B = a[: d * m].view(d, m), b[: d * m].view(d, m)
        A.copy_(torch.index_select(queries, 0, qi, out=qf[:m]).T)
        B.copy_(torch.index_select(gallery, 0, gi, out=gf[:m]).T)
        if distance == "euclidean":
            A.sub_(B)
            value = tree_sum_columns_(A.mul_(A)).sqrt()
        elif distance == "inner_product":
            value = tree_sum_columns_(A.mul_(B)).neg()
        else:
            dot = tree_sum_columns_(torch.mul(A, B, out=c[: d * m].view(d, m)))
            g_sq = tree_sum_columns_(B.mul_(B))
            q_sq = query_sq_norms[qi] if query_sq_norms is not None else tree_sum_columns_(A.mul_(A))
            ok = (q_sq > TINY_NORM**2) & (g_sq > TINY_NORM**2)
            denom = torch.where(ok, (q_sq * g_sq).sqrt(), 1.0)
            value = (1.0 - torch.where(ok, dot / denom, 0.0)).clamp_min(0.0)
        out[s0 : s0 + m] = value.float()
    return out
