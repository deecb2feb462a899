r"""Exact top-k search in query x gallery chunks (never the Nq x Ng matrix), with a verified bf16 fast path.

How a search runs
-----------------
1. *Screen*: for each query chunk, walk the gallery in blocks; score a block with one matmul (fp32, or bf16
   inputs with fp32 accumulation), mask excluded pairs, and merge it into a running top-``K`` per query,
   ``K = k + extra_candidates``. Memory: O(query_chunk x gallery_chunk + Nq x K).
2. *Re-score*: the ``K`` candidates of every query get their canonical distance
   (`lookalike.retrieval.distances.pair_distances`: float64 in a fixed order, rounded to float32) and are
   sorted by (distance, gallery index). These are the distances exact search reports, whatever the chunk sizes.
3. *Verify*: with a rigorous bound ``err`` on the screening error (below), the ``K``-th candidate's screening
   score gives a lower bound on the distance of *every* item that was not kept. If that lower bound is above
   the ``k``-th canonical distance (plus its own rounding margin), no item outside the candidates can enter the
   top-k, not even on a tie, so the answer is exact.
4. *Fallback*: queries that fail the check (bf16: items too close to call; fp32: exact ties beyond ``K``) are
   gathered and searched again with fp32 screening, keeping every gallery item whose lower bound is not above
   their ``k``-th canonical distance, and merging those by (canonical distance, index).

So ``precision="bf16"`` and ``precision="fp32"`` return identical ids and distances (bit for bit), and ties
are always ordered by the smaller gallery index.

The bound that makes the bf16 fast path exact is derived in `lookalike.retrieval.bounds`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lookalike.errors import LookalikeError
from lookalike.retrieval.base import (
    Exclusion,
    SearchBackend,
    check_distance,
    GalleryKey,
    gallery_key,
    sort_by_distance_then_index,
)
from lookalike.retrieval.bounds import ScreeningBounds, native_bf16_matmul

__all__ = ["ExactSearch", "PRECISIONS"]

PRECISIONS = ("auto", "fp32", "bf16")
#: query x gallery pairs from which "auto" screens in bf16 (below, the extra candidates cost more than they save)
AUTO_BF16_MIN_PAIRS = 25_000_000
#: width of the column groups whose maxima pre-filter a block before the top-k merge
GROUP = 16
#: query rows per score tile (a tile x gallery_chunk_size block stays cache-friendly)
_TILE_ROWS = 2048
#: score-block size from which few-query searches stop widening their gallery blocks
_BLOCK_SCORES = 1 << 20
_INF = float("inf")


def _merge_block(scores: Tensor, g0: int, best_s: Tensor, best_i: Tensor) -> None:
    """Merge a block of scores (rows x m, larger = closer) into the running top-K ``best_s``/``best_i`` in place.

    Column groups ``{j, j + m/GROUP, ...}`` whose maximum is below a row's threshold cannot change that row's
    top-K, so only a few groups per row are gathered and merged. The threshold is the row's current K-th score,
    or, while a row holds fewer than K items, the K-th largest group maximum of this block (at least K values of
    the block reach it). Everything dropped is at most the final K-th score, which the verification relies on.
    """
    n, m = scores.shape
    K = best_s.shape[1]
    width = m // GROUP
    if m % GROUP == 0 and width >= 4:
        thr = best_s.min(dim=1).values
        group_max = scores.view(n, GROUP, width).amax(dim=1)
        inclusive = not bool(torch.isfinite(thr).all())
        if inclusive and width >= K:
            t = torch.topk(group_max, K, dim=1, sorted=False).values.min(dim=1).values.float()
            thr = torch.maximum(thr, t)
        if not inclusive or width >= K:
            thr_s = thr[:, None].to(group_max.dtype)
            hit = group_max >= thr_s if inclusive else group_max > thr_s
            r, j = hit.nonzero(as_tuple=True)
            if r.numel() == 0:
                return
            if r.numel() * GROUP * 4 <= n * m:
                # gather the hit groups, keep the single values that reach their row's threshold
                flat = (r * m + j)[:, None] + torch.arange(GROUP) * width  # (hits, GROUP) flat positions
                values = scores.view(-1).index_select(0, flat.view(-1)).view(-1, GROUP)
                thr_r = thr_s[r]
                keep = values >= thr_r if inclusive else values > thr_r
                hr, hc = keep.nonzero(as_tuple=True)
                row_of = r[hr]  # non-decreasing
                new_s = values[hr, hc].float()
                new_i = flat[hr, hc] - row_of * m + g0
                counts = torch.bincount(row_of, minlength=n)
                rows = counts.nonzero().squeeze(1)
                span = int(counts.max())
                local = torch.cumsum(counts > 0, 0) - 1
                rank = torch.arange(len(row_of)) - (torch.cumsum(counts, 0) - counts)[row_of]
                slot = local[row_of] * span + rank
                vals = torch.full((len(rows) * span,), -_INF).index_copy_(0, slot, new_s).view(len(rows), span)
                idx = torch.full((len(rows) * span,), -1, dtype=torch.int64).index_copy_(0, slot, new_i)
                cat_s = torch.cat([best_s.index_select(0, rows), vals], dim=1)
                cat_i = torch.cat([best_i.index_select(0, rows), idx.view(len(rows), span)], dim=1)
                top_s, pos = torch.topk(cat_s, K, dim=1, sorted=False)
                best_s.index_copy_(0, rows, top_s)
                best_i.index_copy_(0, rows, cat_i.gather(1, pos))
                return
    top_s, pos = torch.topk(scores, min(K, m), dim=1, sorted=False)
    cat_s = torch.cat([best_s, top_s.float()], dim=1)
    cat_i = torch.cat([best_i, pos + g0], dim=1)
    top_s, pos = torch.topk(cat_s, K, dim=1, sorted=False)
    best_s.copy_(top_s)
    best_i.copy_(cat_i.gather(1, pos))


class ExactSearch(SearchBackend):
    """Exact chunked top-k search (cosine, inner_product or euclidean) in fp32 or verified bf16.

    ``precision="bf16"`` screens in bf16 (about 4x the matmul speed of fp32 on CPUs with bf16 units) and returns
    exactly what ``precision="fp32"`` returns (see the module docstring for the bound that guarantees it).
    ``precision="auto"`` (the default) screens in bf16 when the CPU multiplies bf16 in hardware and the search
    has at least `AUTO_BF16_MIN_PAIRS` query x gallery pairs, else in fp32: the answer is the same either way.
    Memory: ``query_chunk_size x dim`` (prepared queries) + ``2048 x gallery_chunk_size`` (a score tile) +
    ``Nq x (k + extra_candidates)``; the gallery is read block by block once per query chunk.
    ``extra_candidates`` is how many candidates beyond ``k`` each query keeps for the verification (default:
    8 for fp32, ``max(32, k)`` for bf16 or when torch may run fp32 matmuls in reduced precision); more means
    fewer fallbacks and a slower merge.
    After each call ``last_stats`` holds counts: queries, fallback (queries re-searched), rescored (pairs), and
    the screening precision used. A gallery given as ``gallery_rows`` of a larger table is read block by block,
    never copied whole.
    """

    reads_row_subsets = True

    def __init__(
        self,
        distance: str = "cosine",
        *,
        query_chunk_size: int = 16384,
        gallery_chunk_size: int = 4096,
        precision: str = "auto",
        extra_candidates: int | None = None,
        cache_gallery: bool = False,
    ):
        self.distance = check_distance(distance)
        #: keep the gallery's norms and screening vectors between searches of the same gallery tensor (an index
        #: searched one query at a time); costs one more copy of the gallery for cosine
        self.cache_gallery = bool(cache_gallery)
        self._gallery_key: GalleryKey | None = None
        self._gallery_cache: dict = {}
        if precision not in PRECISIONS:
            raise LookalikeError(f"Unknown precision {precision!r}; use one of {', '.join(map(repr, PRECISIONS))}.")
        for name, value in (("query_chunk_size", query_chunk_size), ("gallery_chunk_size", gallery_chunk_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LookalikeError(f"{name} must be a positive integer, got {value!r}.")
        if extra_candidates is not None and (
            isinstance(extra_candidates, bool) or not isinstance(extra_candidates, int) or extra_candidates < 0
        ):
            raise LookalikeError(f"extra_candidates must be a non-negative integer, got {extra_candidates!r}.")
        self.precision = precision
        self.query_chunk_size, self.gallery_chunk_size = query_chunk_size, gallery_chunk_size
        self.extra_candidates = extra_candidates
        self.last_stats: dict[str, int | str] = {}

    def __repr__(self) -> str:
        return (
            f"ExactSearch(distance={self.distance!r}, precision={self.precision!r}, "
            f"query_chunk_size={self.query_chunk_size}, gallery_chunk_size={self.gallery_chunk_size})"
        )

    def _empty_search(self, n_queries: int) -> None:
        self.last_stats = {"queries": n_queries, "fallback": 0, "rescored": 0}

    def _search(self, q: Tensor, g: Tensor, k: int, excl: Exclusion, gallery=None) -> tuple[Tensor, Tensor]:
        """Top-``k`` gallery positions and canonical distances per query, padded with ``(-1, +inf)``."""
        nq, ng = len(q), len(g)
        distances = torch.full((nq, k), _INF)
        indices = torch.full((nq, k), -1, dtype=torch.int64)
        self.last_stats = {"queries": nq, "fallback": 0, "rescored": 0}
        precision = self.precision
        if precision == "auto":
            precision = "bf16" if native_bf16_matmul() and nq * ng >= AUTO_BF16_MIN_PAIRS else "fp32"
        self.last_stats["precision"] = precision
        cache = None
        key = gallery_key(gallery) if self.cache_gallery else None
        if key is not None:  # a row subset or a tensor without identity is searched uncached (and not copied)
            if key != self._gallery_key:
                self._gallery_key, self._gallery_cache = key, {}
            cache = self._gallery_cache
        prep = ScreeningBounds(q, g, self.distance, precision, cache)
        extra = self.extra_candidates
        if extra is None:  # fp32 screening is accurate to ~1e-5 unless torch runs fp32 matmuls in bf16/tf32
            extra = 8 if prep.precision == "fp32" and prep.ieee else max(32, k)
        K = k + extra
        failing, fail_kth = [], []
        for q0 in range(0, nq, self.query_chunk_size):
            qpos = torch.arange(q0, min(q0 + self.query_chunk_size, nq))
            best_s, best_i = self._screen(prep, qpos, K, excl)
            d, i, bad, kth = self._rescore_and_verify(prep, qpos, best_s, best_i, k)
            distances[q0 : q0 + len(qpos)], indices[q0 : q0 + len(qpos)] = d, i
            if bool(bad.any()):
                failing.append(qpos[bad])
                fail_kth.append(kth[bad])
        if failing:
            fpos, fkth = torch.cat(failing), torch.cat(fail_kth)
            self.last_stats["fallback"] = len(fpos)
            d_f, i_f = self._threshold_pass(prep, fpos, fkth, k, excl)
            distances[fpos], indices[fpos] = d_f, i_f
        return distances, indices

    # --- screening --------------------------------------------------------------------------------------
    def _screen(self, prep: ScreeningBounds, qpos: Tensor, K: int, excl: Exclusion) -> tuple[Tensor, Tensor]:
        """Running top-``K`` screening scores (larger = closer; -inf = none) and gallery positions per query."""
        n, ng, d = len(qpos), len(prep.g), prep.d
        tile = min(_TILE_ROWS, n)
        # few queries: wider gallery blocks (a score block stays <= _BLOCK_SCORES), so fewer merges per query
        gc = min(max(self.gallery_chunk_size, _BLOCK_SCORES // max(tile, 1)), ng)
        bf16 = prep.precision == "bf16"
        euclidean = self.distance == "euclidean"
        chunk_excl = excl.for_queries(qpos)
        Q = prep.prep32(prep.q[qpos], None if prep.q_inv is None else prep.q_inv[qpos])
        if bf16:
            Q = Q.bfloat16()
        g_buf = torch.empty(gc * d) if prep.g_inv is not None else None
        s_buf = torch.empty(tile * gc, dtype=torch.bfloat16 if bf16 and not euclidean else torch.float32)
        t_buf = torch.empty(tile * gc, dtype=torch.bfloat16) if bf16 and euclidean else None
        best_s = torch.full((n, K), -_INF)
        best_i = torch.full((n, K), -1, dtype=torch.int64)
        for g0 in range(0, ng, gc):
            g1 = min(g0 + gc, ng)
            m = g1 - g0
            G = prep.g[g0:g1]
            if prep.g_screen is not None:
                G = prep.g_screen[g0:g1]
            elif g_buf is not None:
                G = prep.prep32(G, prep.g_inv[g0:g1], out=g_buf[: m * d].view(m, d))
            if bf16:
                G = G.bfloat16()
            for r0 in range(0, n, tile):
                r1 = min(r0 + tile, n)
                S = s_buf[: (r1 - r0) * m].view(r1 - r0, m)
                if euclidean:
                    if bf16:
                        T = torch.mm(Q[r0:r1], G.T, out=t_buf[: (r1 - r0) * m].view(r1 - r0, m))
                        torch.add(prep.neg_gsq[g0:g1], T, alpha=2, out=S)
                    else:
                        torch.addmm(prep.neg_gsq[g0:g1], Q[r0:r1], G.T, alpha=2, out=S)
                else:
                    torch.mm(Q[r0:r1], G.T, out=S)
                chunk_excl.apply(S, g0, g1, -_INF, r0)
                _merge_block(S, g0, best_s[r0:r1], best_i[r0:r1])
        return best_s, best_i

    def _rescore_and_verify(self, prep: ScreeningBounds, qpos: Tensor, best_s: Tensor, best_i: Tensor, k: int):
        """Canonical top-k among the candidates, and which queries the bound cannot certify.

        The k best-screened candidates are re-scored first; their worst canonical distance bounds the k-th, so
        the other candidates are re-scored only where their lower bound does not exclude them.
        """
        n, K = best_s.shape
        s_sorted, order = torch.sort(best_s, dim=1, descending=True)
        i_sorted = best_i.gather(1, order)
        valid = s_sorted > -_INF
        cand = torch.full((n, K), _INF)
        r, j = valid[:, :k].nonzero(as_tuple=True)
        cand[r, j] = prep.canonical(qpos[r], i_sorted[r, j])
        rescored = r.numel()
        if K > k:
            bound = torch.where(valid[:, k - 1], cand[:, :k].max(dim=1).values, _INF)
            upper = prep.threshold(qpos, torch.where(torch.isfinite(bound), bound, 0.0))
            lower = prep.lower_bound(qpos, torch.where(valid[:, k:], s_sorted[:, k:], 0.0), prep.precision)
            need = valid[:, k:] & ((lower <= upper[:, None]) | ~torch.isfinite(bound)[:, None])
            r, j = need.nonzero(as_tuple=True)
            cand[r, j + k] = prep.canonical(qpos[r], i_sorted[r, j + k])
            rescored += r.numel()
        self.last_stats["rescored"] += rescored
        cand, cand_i = sort_by_distance_then_index(cand, torch.where(torch.isfinite(cand), i_sorted, -1))
        kth = cand[:, k - 1]
        x_last = s_sorted[:, K - 1]
        full = x_last > -_INF
        lower = prep.lower_bound(qpos, torch.where(full, x_last, 0.0), prep.precision)
        upper = prep.threshold(qpos, torch.where(full, kth, 0.0))
        bad = full & ~(lower > upper)
        return cand[:, :k], cand_i[:, :k], bad, kth

    # --- fallback -----------------------------------------------------------------------------------------
    def _threshold_pass(self, prep: ScreeningBounds, fpos: Tensor, kth: Tensor, k: int, excl: Exclusion):
        """Exact fp32 search for the queries ``fpos`` given an upper bound ``kth`` of their k-th distance.

        Every gallery item whose fp32 lower bound is not above ``kth`` is re-scored canonically and merged by
        (distance, index): exact however many items tie.
        """
        nf, ng, d = len(fpos), len(prep.g), prep.d
        gc = min(self.gallery_chunk_size, ng)
        tile = min(_TILE_ROWS, self.query_chunk_size)
        out_d = torch.full((nf, k), _INF)
        out_i = torch.full((nf, k), -1, dtype=torch.int64)
        g_buf = torch.empty(gc * d) if prep.g_inv is not None else None
        for a in range(0, nf, tile):
            qpos = fpos[a : a + tile]
            n = len(qpos)
            min_score = prep.min_score(qpos, kth[a : a + tile])
            chunk_excl = excl.for_queries(qpos)
            Q = prep.prep32(prep.q[qpos], None if prep.q_inv is None else prep.q_inv[qpos])
            s_buf = torch.empty(n * gc)
            best_d = torch.full((n, k), _INF)
            best_i = torch.full((n, k), -1, dtype=torch.int64)
            for g0 in range(0, ng, gc):
                g1 = min(g0 + gc, ng)
                m = g1 - g0
                G = prep.g[g0:g1]
                if g_buf is not None:
                    G = prep.prep32(G, prep.g_inv[g0:g1], out=g_buf[: m * d].view(m, d))
                S = s_buf[: n * m].view(n, m)
                if self.distance == "euclidean":
                    torch.addmm(prep.neg_gsq[g0:g1], Q, G.T, alpha=2, out=S)
                else:
                    torch.mm(Q, G.T, out=S)
                chunk_excl.apply(S, g0, g1, -_INF)
                r, j = (S >= min_score[:, None]).nonzero(as_tuple=True)
                if r.numel() == 0:
                    continue
                c = prep.canonical(qpos[r], j + g0)
                self.last_stats["rescored"] += r.numel()
                counts = torch.bincount(r, minlength=n)
                rows = counts.nonzero().squeeze(1)
                local = torch.cumsum(counts > 0, 0) - 1
                rank = torch.arange(r.numel()) - (torch.cumsum(counts, 0) - counts)[r]
                span = int(counts.max())
                new_d = torch.full((len(rows), span), _INF)
                new_i = torch.full((len(rows), span), -1, dtype=torch.int64)
                new_d[local[r], rank] = c
                new_i[local[r], rank] = j + g0
                # best rows are sorted by (distance, index) and hold only smaller indices than this block, whose
                # entries are in index order: a stable sort by distance keeps the (distance, index) order.
                cat_d = torch.cat([best_d[rows], new_d], dim=1)
                cat_i = torch.cat([best_i[rows], new_i], dim=1)
                order = torch.sort(cat_d, dim=1, stable=True).indices[:, :k]
                best_d[rows] = cat_d.gather(1, order)
                best_i[rows] = cat_i.gather(1, order)
            out_d[a : a + n], out_i[a : a + n] = best_d, best_i
        return out_d, out_i
