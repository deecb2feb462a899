"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li, "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017) computed from top-k neighbour lists, never from an N x N distance matrix.

Two items are alike when their k-reciprocal neighbourhoods overlap: ``final = (1 - lambda) * Jaccard +
lambda * d`` where ``d`` is each item's original distance divided by its distance to its farthest item (the
paper's row normalisation), and the Jaccard distance compares sparse vectors ``V`` (exp(-d) weights over each
item's expanded k1-reciprocal set, averaged over its k2 nearest items). Every step below only needs each
item's ``k1 + 1`` nearest items (the chunked search of `lookalike.retrieval`), so memory is
O(N * k1^2) instead of the original's O(N^2).

What the top-k lists change against the full-matrix original (also in docs/pipelines.md, "Re-ranking"):
the paper re-ranks the whole gallery of each query, here only the candidates already in the query's retrieved
list (the first ``top_n`` columns) are re-ordered; an item outside them cannot come in. For the candidates it
does re-rank, every quantity is the paper's own (same neighbour sets, weights, expansion and Jaccard), so when
the list covers the whole gallery the result equals the full-matrix algorithm (the tests check this).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from lookalike.errors import LookalikeError
from lookalike.postprocess.reorder import check_top_n, reorder_top
from lookalike.retrieval.base import as_embeddings
from lookalike.retrieval.distances import pair_distances
from lookalike.retrieval.factory import make_backend
from lookalike.retrieval.results import RetrievalResults

__all__ = ["KReciprocalReranker"]

#: elements per temporary block (bool / int64 blocks of the vectorised steps stay around 100 MB at most)
_BLOCK_ELEMENTS = 1 << 23


class KReciprocalReranker:
    """Re-orders the first ``top_n`` retrieved items of every query by the k-reciprocal distance.

    ``k1`` (size of the reciprocal neighbourhoods, 20), ``k2`` (local query expansion, 6) and ``lambda_``
    (weight of the original distance, 0.3) default to the paper's values. The original distance is the
    search's cosine distance (proportional to the squared Euclidean distance of unit vectors, as in the paper)
    or the squared Euclidean distance; inner-product scores are refused (they are not distances).
    Call it like every post-processor: ``KReciprocalReranker()(results, query_embeddings, gallery_embeddings,
    distance)``, or pass it as `EmbeddingMetrics(postprocessor=...)`.
    """

    distances = ("cosine", "euclidean")

    def __init__(self, k1: int = 20, k2: int = 6, lambda_: float = 0.3, top_n: int = 20,
                 backend: str = "exact") -> None:
        for name, value, low in (("k1", k1, 1), ("k2", k2, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise LookalikeError(f"KReciprocalReranker: {name} must be an integer >= {low}, got {value!r}.")
        if not 0.0 <= float(lambda_) <= 1.0:
            raise LookalikeError(f"KReciprocalReranker: lambda_ must be in [0, 1], got {lambda_!r}.")
        self.k1, self.k2, self.lambda_ = k1, k2, float(lambda_)
        self.top_n = check_top_n(top_n, "KReciprocalReranker")
        self.backend = backend

    def __repr__(self) -> str:
        return (f"KReciprocalReranker(k1={self.k1}, k2={self.k2}, lambda_={self.lambda_:g}, top_n={self.top_n})")

    @torch.no_grad()
    def __call__(self, results: RetrievalResults, query_embeddings: Tensor, gallery_embeddings: Tensor,
                 distance: str = "cosine") -> RetrievalResults:
        """The same results with the first ``top_n`` columns of every row re-ordered by the final distance."""
        if distance not in self.distances:
            raise LookalikeError(f"KReciprocalReranker works with cosine or euclidean distances, not {distance!r}.")
        if len(query_embeddings) != results.n_queries or len(gallery_embeddings) != results.n_gallery:
            raise LookalikeError(
                f"KReciprocalReranker: got {len(query_embeddings)} query and {len(gallery_embeddings)} gallery "
                f"embeddings for results of {results.n_queries} queries and {results.n_gallery} gallery items.")
        joint, q_pos, g_pos = _joint_set(results, as_embeddings(query_embeddings, "query embeddings"),
                                         as_embeddings(gallery_embeddings, "gallery embeddings"))
        n = len(joint)
        far = _farthest(joint, distance)
        k = min(max(self.k1, self.k2 - 1) + 1, n)
        _, neighbours = make_backend(self.backend, distance).search(joint, joint, k)  # self included
        v_rows, v_cols, v_vals = _encode(joint, neighbours, far, self.k1, self.k2, distance)
        top = min(self.top_n, results.k)
        ids = results.retrieved_ids[:, :top]
        valid = ids >= 0
        pq = q_pos[:, None].expand_as(ids)[valid]
        pg = g_pos[ids.clamp(min=0)][valid]
        overlap = _sum_of_minima(v_rows, v_cols, v_vals, n, pq, pg)
        jaccard = 1.0 - overlap / (2.0 - overlap)
        original = _original(joint, pq, pg, distance) / far[pq]
        scores = torch.full(ids.shape, float("inf"))
        scores[valid] = ((1.0 - self.lambda_) * jaccard + self.lambda_ * original).float()
        return reorder_top(results, scores)


def _joint_set(results: RetrievalResults, queries: Tensor, gallery: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Embeddings of every distinct item (queries and gallery, by dataset index) and the position of each query
    and gallery item among them: an item that is both is one item, as it is one image."""
    ids = torch.cat([results.query_ids, results.gallery_ids])
    unique, inverse = torch.unique(ids, return_inverse=True)
    q_pos, g_pos = inverse[: results.n_queries], inverse[results.n_queries:]
    joint = torch.empty(len(unique), queries.shape[1])
    joint[g_pos] = gallery
    joint[q_pos] = queries
    return joint, q_pos, g_pos


def _original(x: Tensor, a: Tensor, b: Tensor, distance: str) -> Tensor:
    """The paper's original distance of pairs (float64): cosine distance, or squared Euclidean distance."""
    d = pair_distances(x, x, a, b, distance).double()
    return d * d if distance == "euclidean" else d


def _farthest(x: Tensor, distance: str) -> Tensor:
    """Each item's original distance to its farthest item (float64), block by block (never N x N in memory)."""
    n = len(x)
    if distance == "cosine":
        y = torch.nn.functional.normalize(x.double(), dim=1)
    else:
        y = x.double()
        sq = (y * y).sum(1)
    out = torch.empty(n, dtype=torch.float64)
    rows = max(1, _BLOCK_ELEMENTS // 8 // max(n, 1))
    for a in range(0, n, rows):
        block = y[a:a + rows] @ y.T
        if distance == "cosine":
            out[a:a + rows] = (1.0 - block.min(dim=1).values).clamp(min=0.0)
        else:
            out[a:a + rows] = (sq[a:a + rows, None] + sq[None, :] - 2.0 * block).max(dim=1).values.clamp(min=0)
    return torch.where(out > 0, out, 1.0)  # all items identical: any scale will do


def _reciprocal(neighbours: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Each item's ``k + 1`` nearest items and which of them are k-reciprocal (the item is among theirs)."""
    n = len(neighbours)
    fw = neighbours[:, : k + 1]
    mask = torch.empty(fw.shape, dtype=torch.bool)
    rows = max(1, _BLOCK_ELEMENTS // max(1, fw.shape[1] ** 2))
    for a in range(0, n, rows):
        f = fw[a:a + rows]
        back = neighbours[f.clamp(min=0), : k + 1]  # (rows, k+1, k+1)
        me = torch.arange(a, a + len(f))[:, None, None]
        mask[a:a + rows] = (back == me).any(-1) & (f >= 0)
    return fw, mask


def _encode(x: Tensor, neighbours: Tensor, far: Tensor, k1: int, k2: int,
            distance: str) -> tuple[Tensor, Tensor, Tensor]:
    """The paper's sparse vectors ``V`` after local query expansion, as COO (rows, cols, values) sorted by
    (row, col): weights exp(-d) over each item's expanded k1-reciprocal set, normalised to sum 1, then the
    mean of the vectors of its k2 nearest items."""
    n = len(x)
    r_ids, r_mask = _reciprocal(neighbours, k1)
    half = int(round(k1 / 2))
    h_ids, h_mask = _reciprocal(neighbours, half)
    parts = []
    width = r_ids.shape[1]
    rows_per_block = max(1, _BLOCK_ELEMENTS // max(1, width * h_ids.shape[1] * width))
    for a in range(0, n, rows_per_block):
        b = min(a + rows_per_block, n)
        rid, rm = r_ids[a:b], r_mask[a:b]  # (B, w)
        cand = rid.clamp(min=0)
        hid, hm = h_ids[cand], h_mask[cand]  # (B, w, h): each candidate's half-size reciprocal set
        inside = ((hid[..., None] == rid[:, None, None, :]) & rm[:, None, None, :]).any(-1) & hm
        accept = rm & (inside.sum(-1) > (2.0 / 3.0) * hm.sum(-1))  # (B, w)
        added = torch.where(accept[..., None] & hm, hid, -1).flatten(1)
        members = torch.cat([torch.where(rm, rid, -1), added], dim=1)
        members = torch.sort(members, dim=1).values
        dup = torch.zeros_like(members, dtype=torch.bool)
        dup[:, 1:] = members[:, 1:] == members[:, :-1]
        keep = (members >= 0) & ~dup
        row = torch.arange(a, b)[:, None].expand_as(members)[keep]
        parts.append((row, members[keep]))
    rows = torch.cat([p[0] for p in parts])
    cols = torch.cat([p[1] for p in parts])
    weight = torch.exp(-(_original(x, rows, cols, distance) / far[rows]))
    total = torch.zeros(n, dtype=torch.float64).index_add_(0, rows, weight)
    vals = weight / total[rows]
    if k2 > 1:  # V_qe[i] = mean of V[j] over the k2 nearest items j of i (i itself first)
        nn = neighbours[:, :k2]
        a_rows = torch.arange(n)[:, None].expand_as(nn)[nn >= 0]
        a_cols = nn[nn >= 0]
        expand = torch.sparse_coo_tensor(torch.stack([a_rows, a_cols]),
                                         torch.full((len(a_rows),), 1.0 / k2, dtype=torch.float64), (n, n),
                                         check_invariants=True)
        v = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n), check_invariants=True)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the product is checked by the tests
            warnings.simplefilter("ignore", UserWarning)
            qe = torch.sparse.mm(expand, v).coalesce()
        rows, cols = qe.indices()
        vals = qe.values()
    else:
        order = torch.argsort(rows * n + cols)
        rows, cols, vals = rows[order], cols[order], vals[order]
    return rows, cols, vals


def _sum_of_minima(rows: Tensor, cols: Tensor, vals: Tensor, n: int, a: Tensor, b: Tensor) -> Tensor:
    """``sum_e min(V[a_p, e], V[b_p, e])`` for every pair p (float64): the sparse rows of both items are
    matched by (pair, column) keys, a bounded chunk of pairs at a time."""
    start = torch.zeros(n + 1, dtype=torch.int64)
    start[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    length = start[1:] - start[:-1]
    out = torch.zeros(len(a), dtype=torch.float64)
    longest = int(length.max()) if n else 0
    step = max(1, _BLOCK_ELEMENTS // max(1, 2 * longest))
    for p0 in range(0, len(a), step):
        pa, pb = a[p0:p0 + step], b[p0:p0 + step]
        pair = torch.arange(len(pa))
        ka, va = _gather_rows(start, length, cols, vals, pa, pair, n)
        kb, vb = _gather_rows(start, length, cols, vals, pb, pair, n)
        if not len(ka) or not len(kb):
            continue
        pos = torch.searchsorted(ka, kb).clamp(max=len(ka) - 1)
        hit = ka[pos] == kb
        m = torch.minimum(va[pos[hit]], vb[hit])
        out[p0:p0 + step].index_add_(0, kb[hit] // n, m)
    return out


def _gather_rows(start: Tensor, length: Tensor, cols: Tensor, vals: Tensor, items: Tensor, pair: Tensor,
                 n: int) -> tuple[Tensor, Tensor]:
    """The sparse rows of ``items``, one after another, as sorted keys ``pair * n + col`` and their values."""
    lens = length[items]
    total = int(lens.sum())
    offset = torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
    pos = torch.repeat_interleave(start[items], lens) + torch.arange(total) - offset
    return torch.repeat_interleave(pair, lens) * n + cols[pos], vals[pos]
