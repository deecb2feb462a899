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

The screening error bound
-------------------------
Let ``x^`` be the ideal vector (the row itself; for cosine the row divided by its float64 norm) and ``x_s`` the
vector actually fed to the matmul (fp32 for cosine: ``x * fl(1/|x|)``; bf16: that rounded to bf16, unit
roundoff ``u = 2^-8``). Write ``e = |x^ - x_s|`` (Euclidean norm of the representation error) and
``B = |x_s|``. Then, by Cauchy-Schwarz,

    |<q^, g^> - <q_s, g_s>| = |<q^ - q_s, g^> + <q_s, g^ - g_s>| <= e_q |g^| + B_q e_g.

For bf16, ``e`` and ``B`` are measured for every row (``x_s - bf16(x_s)`` is exact in fp32; its norm is
inflated for its own rounding), which is tighter than the textbook ``(2u + u^2) sum |q_i||g_i| <=
(2u + u^2) |q||g|`` but implies it. For fp32 cosine the normalisation costs ``e <= (2 u32 + u32^2) |x^|``
(``u32 = 2^-24``); for inner product / euclidean ``e = 0``.
Products of bf16 numbers are exact in fp32; summing ``d`` terms in fp32 in *any* order adds at most
``gamma_d sum |q_s,i g_s,i| <= gamma_d B_q B_g`` with ``gamma_d = d u32 / (1 - d u32)``. A bf16 *output*
is rounded once more: ``|s_out - s| <= u/(1-u) |s_out|`` (applied to the observed score, a monotone term).
With ``G^ = max |g^|``, ``E_g = max e_g`` and ``B_G = max B_g`` over the gallery, the score error of query
``q`` against any gallery item is at most

    err_q = 1.25 * (e_q G^ + B_q E_g + gamma_d B_q B_G) + d 2^-120 (1 + B_q)(1 + B_G)   [+ u/(1-u) |s_out|]

(the factor 1.25 absorbs float64 noise in the bound itself; the last term covers flush-to-zero of denormals).
Euclidean screening uses ``2 s - |g|^2`` (``|q|^2`` is constant per query) and adds the fp32 rounding of
``|g|^2`` and of the final addition. If torch is allowed to run fp32 matmuls in reduced precision
(``torch.set_float32_matmul_precision("medium"/"high")``), the fp32 bound adds the bf16 input rounding
``2.01 u B_q B_G`` so it stays valid. The bound assumes IEEE round-to-nearest and fp32 accumulation inside
the bf16 matmul (oneDNN/MKL on CPU); `tests/retrieval` check it against float64 on adversarial data.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lookalike.errors import LookalikeError
from lookalike.retrieval.base import (
    ExcludeSpec,
    Exclusion,
    SearchBackend,
    as_embeddings,
    check_distance,
    check_k,
    sort_by_distance_then_index,
)
from lookalike.retrieval.distances import TINY_NORM, pair_distances, row_sq_norms

__all__ = ["ExactSearch", "PRECISIONS"]

PRECISIONS = ("auto", "fp32", "bf16")
#: query x gallery pairs from which "auto" screens in bf16 (below, the extra candidates cost more than they save)
AUTO_BF16_MIN_PAIRS = 25_000_000
U32 = 2.0**-24
U_BF16 = 2.0**-8
U_BF16_OUT = U_BF16 / (1.0 - U_BF16)
SAFETY = 1.25
#: width of the column groups whose maxima pre-filter a block before the top-k merge
GROUP = 16
#: query rows per score tile (a tile x gallery_chunk_size block stays cache-friendly)
_TILE_ROWS = 2048
#: score-block size from which few-query searches stop widening their gallery blocks
_BLOCK_SCORES = 1 << 20
_INF = float("inf")
#: relative error of fp32 normalisation ``x * fl32(1 / |x|_64)``: two roundings, plus the float64 norm's own error
_REL32 = 2 * U32 + U32 * U32 + 1e-12


def _key_of(gallery) -> tuple | None:
    """Identity of a gallery tensor (object, storage, shape, in-place version): a cached gallery is reused only
    while this is unchanged."""
    if isinstance(gallery, Tensor) and gallery.dtype == torch.float32 and gallery.is_contiguous() \
            and gallery.device.type == "cpu":
        return (id(gallery), gallery.data_ptr(), tuple(gallery.shape), gallery._version)
    return None


def _fp32_matmul_is_ieee() -> bool:
    """False when torch may run fp32 matmuls with bf16/tf32 inputs (then the fp32 bound widens)."""
    try:
        if torch.get_float32_matmul_precision() != "highest":
            return False
    except RuntimeError:  # the legacy getter can refuse after the new API was used
        return False
    mk = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    precision = getattr(mk, "fp32_precision", "none")
    return precision in ("none", "ieee")


def native_bf16_matmul() -> bool:
    """True when this CPU multiplies bf16 matrices in hardware (AMX or AVX512-BF16): bf16 screening then pays."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:
            continue
    return False


def _fast_norms(x: Tensor) -> Tensor:
    """Float64 row norms (accurate to ~1e-16, not bit-reproducible across batch shapes: used for bounds only)."""
    out = torch.empty(len(x), dtype=torch.float64)
    step = max(1, (1 << 18) // max(x.shape[1], 1))
    for a in range(0, len(x), step):
        out[a : a + step] = torch.linalg.vector_norm(x[a : a + step], dim=1, dtype=torch.float64)
    return out


class _Prepared:
    """Per-search precomputation: float64 norms, screening vectors' error terms, bound constants."""

    def __init__(self, queries: Tensor, gallery: Tensor, distance: str, precision: str,
                 gallery_cache: dict | None = None):
        self.q, self.g, self.distance, self.precision = queries, gallery, distance, precision
        self.d = d = queries.shape[1]
        cosine = distance == "cosine"
        # the gallery's terms depend on the gallery alone: kept in ``gallery_cache`` between searches when given
        cache = gallery_cache if gallery_cache is not None else {}
        # accurate float64 norms for screening and bounds; canonical (tree-sum) squared query norms for cosine
        self.q_norm = _fast_norms(queries)
        if "g_norm" not in cache:
            cache["g_norm"] = _fast_norms(gallery)
        self.g_norm = cache["g_norm"]
        self.q_sq_canonical = row_sq_norms(queries) if cosine else None
        self.q_inv = self._inverse(self.q_norm) if cosine else None
        if cosine and "g_inv" not in cache:
            cache["g_inv"] = self._inverse(self.g_norm)
        self.g_inv = cache.get("g_inv") if cosine else None
        #: the whole gallery's fp32 screening vectors, when cached (else they are made block by block)
        self.g_screen = None
        if gallery_cache is not None and self.g_inv is not None:
            if "g_screen" not in cache:
                cache["g_screen"] = self.prep32(gallery, self.g_inv)
            self.g_screen = cache["g_screen"]
        if distance == "euclidean":
            if "neg_gsq" not in cache:
                cache["neg_gsq"] = (-self.g_norm.square()).float()
            self.neg_gsq = cache["neg_gsq"]
        self.gamma = d * U32 / (1.0 - d * U32)
        if "g_hat_max" not in cache:
            cache["g_hat_max"] = float((self.g_norm > TINY_NORM).any()) if cosine else float(self.g_norm.max())
        self.g_hat_max = cache["g_hat_max"]
        self.q_hat = (self.q_norm > TINY_NORM).double() if cosine else self.q_norm
        # fp32 screening terms (analytic)
        rel = _REL32 if cosine else 0.0
        self.e32_g, self.b32_g = rel * self.g_hat_max, (1 + rel) * self.g_hat_max
        self.ieee = _fp32_matmul_is_ieee()
        if precision == "bf16":
            if "bf16" not in cache:
                e_g, b_g = self._measure_bf16(gallery, self.g_norm, self.g_inv)
                cache["bf16"] = (float(e_g.max()), float(b_g.max()))
            self.e_g_max, self.b_g_max = cache["bf16"]
            self.e_q, self.b_q = self._measure_bf16(queries, self.q_norm, self.q_inv)

    @staticmethod
    def _inverse(norm: Tensor) -> Tensor:
        ok = norm > TINY_NORM  # smaller norms count as zero vectors, as in the canonical cosine
        return torch.where(ok, 1.0 / torch.where(ok, norm, 1.0), 0.0).float()

    def prep32(self, x: Tensor, inv: Tensor | None, out: Tensor | None = None) -> Tensor:
        """Screening vectors in fp32: normalised rows (cosine) or the rows themselves."""
        if inv is None:
            return x
        return torch.mul(x, inv[:, None], out=out) if out is not None else x * inv[:, None]

    def _measure_bf16(self, x: Tensor, norm: Tensor, inv: Tensor | None) -> tuple[Tensor, Tensor]:
        """Upper bounds of |x^ - bf16(x_s)| and |bf16(x_s)| for every row, from measured rounding errors.

        ``x_s - bf16(x_s)`` is exact in fp32; its fp32 norm is inflated by ``1 + 2 d u32`` for the norm's own
        rounding, plus ``sqrt(d) 2^-62`` for squares that underflow; the normalisation error ``|x^ - x_s|`` of
        cosine adds ``(2 u32 + u32^2) |x^|``.
        """
        inflate = 1.0 + 2 * self.d * U32
        floor = self.d**0.5 * 2.0**-62
        rel = _REL32 if inv is not None else 0.0
        e, b = torch.empty(len(x), dtype=torch.float64), torch.empty(len(x), dtype=torch.float64)
        step = max(1, (1 << 20) // self.d)
        for a in range(0, len(x), step):
            xs = self.prep32(x[a : a + step], None if inv is None else inv[a : a + step])
            xb = xs.bfloat16().float()
            e[a : a + step] = torch.linalg.vector_norm(xs - xb, dim=1).double() * inflate + floor
            b[a : a + step] = torch.linalg.vector_norm(xb, dim=1).double() * inflate + floor
        if rel:
            e += rel * (norm > TINY_NORM).double()
        return e, b

    # --- bounds ---------------------------------------------------------------------------------------
    def score_error(self, qpos: Tensor, precision: str) -> Tensor:
        """Per-query bound on |screening score - true score| (excluding the bf16 output rounding)."""
        q_hat = self.q_hat[qpos]
        if precision == "bf16":
            e_q, b_q, e_g, b_g = self.e_q[qpos], self.b_q[qpos], self.e_g_max, self.b_g_max
        else:
            rel = _REL32 if self.distance == "cosine" else 0.0
            e_q, b_q, e_g, b_g = rel * q_hat, (1 + rel) * q_hat, self.e32_g, self.b32_g
        core = e_q * self.g_hat_max + b_q * e_g + self.gamma * b_q * b_g
        if precision == "fp32" and not self.ieee:
            core = core + 2.01 * U_BF16 * b_q * b_g
        tiny = self.d * 2.0**-120 * (1 + b_q) * (1 + b_g)
        err = SAFETY * core + tiny
        if self.distance == "euclidean":
            # score = 2 s - |g|^2: twice the dot error, |g|^2 rounded to fp32, the final fp32 addition
            # (and for bf16 the output rounding of s, bounded globally here).
            big = b_q * b_g * 1.01
            extra = U32 * self.g_hat_max**2 * 1.01 + 2 * U32 * (2 * big + self.g_hat_max**2 * 1.01)
            if precision == "bf16":
                extra = extra + 2 * U_BF16_OUT * big
            err = 2 * err + SAFETY * extra
        return err

    def lower_bound(self, qpos: Tensor, score: Tensor, precision: str) -> Tensor:
        """Lower bound of the true distance (euclidean: squared) of any item whose screening score <= ``score``."""
        score = score.double()
        err = self.score_error(qpos, precision)
        if score.dim() == 2:
            err = err[:, None]
        if self.distance == "euclidean":
            qsq = self.q_norm[qpos].square() * (1 - 1e-14)
            return (qsq[:, None] if score.dim() == 2 else qsq) - score - err
        if precision == "bf16":
            err = err + U_BF16_OUT * score.abs()
        base = 1.0 if self.distance == "cosine" else 0.0
        return base - score - err

    def threshold(self, qpos: Tensor, dist: Tensor) -> Tensor:
        """An upper bound of the true distance (euclidean: squared) of any item whose canonical distance <= ``dist``."""
        dist = dist.double()
        if self.distance == "cosine":
            scale = torch.ones_like(dist)
        elif self.distance == "inner_product":
            scale = self.q_norm[qpos] * self.g_hat_max
        else:
            scale = self.q_norm[qpos] + self.g_hat_max
        margin = 4 * U32 * dist.abs() + 64 * self.d * 2.0**-53 * scale + 1e-300
        upper = dist + margin
        return upper.square() if self.distance == "euclidean" else upper

    def min_score(self, qpos: Tensor, dist: Tensor) -> Tensor:
        """fp32 screening scores below the returned value cannot belong to items at canonical distance <= ``dist``."""
        err = self.score_error(qpos, "fp32")
        t = self.threshold(qpos, dist)
        if self.distance == "euclidean":
            x = self.q_norm[qpos].square() - err - t
        else:
            base = 1.0 if self.distance == "cosine" else 0.0
            x = base - err - t
        x32 = x.float()
        return torch.where(x32.double() > x, torch.nextafter(x32, torch.tensor(-_INF)), x32)

    def canonical(self, qpos: Tensor, gpos: Tensor) -> Tensor:
        return pair_distances(self.q, self.g, qpos, gpos, self.distance, self.q_sq_canonical)


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
    the screening precision used.
    """

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
        self._gallery_key: tuple | None = None
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

    @torch.no_grad()
    def search(
        self, queries: Tensor, gallery: Tensor, k: int, *, exclude: ExcludeSpec = None
    ) -> tuple[Tensor, Tensor]:
        """Top-``k`` gallery positions and canonical distances per query, padded with ``(-1, +inf)``."""
        q = as_embeddings(queries, "queries")
        cache = None
        if self.cache_gallery:
            key = _key_of(gallery)
            if key is None or key != self._gallery_key:
                g = as_embeddings(gallery, "gallery")
                self._gallery_key, self._gallery_cache = key, {}
            else:
                g = gallery  # checked when it was first searched
            cache = self._gallery_cache
        else:
            g = as_embeddings(gallery, "gallery")
        k = check_k(k)
        if q.shape[1] != g.shape[1]:
            raise LookalikeError(
                f"queries have dimension {q.shape[1]} but gallery has {g.shape[1]}: both must come from the "
                "same extractor."
            )
        nq, ng = len(q), len(g)
        distances = torch.full((nq, k), _INF)
        indices = torch.full((nq, k), -1, dtype=torch.int64)
        self.last_stats = {"queries": nq, "fallback": 0, "rescored": 0}
        if nq == 0 or ng == 0:
            return distances, indices
        excl = Exclusion(exclude, nq, ng)
        precision = self.precision
        if precision == "auto":
            precision = "bf16" if native_bf16_matmul() and nq * ng >= AUTO_BF16_MIN_PAIRS else "fp32"
        self.last_stats["precision"] = precision
        prep = _Prepared(q, g, self.distance, precision, cache)
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
    def _screen(self, prep: _Prepared, qpos: Tensor, K: int, excl: Exclusion) -> tuple[Tensor, Tensor]:
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

    def _rescore_and_verify(self, prep: _Prepared, qpos: Tensor, best_s: Tensor, best_i: Tensor, k: int):
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
    def _threshold_pass(self, prep: _Prepared, fpos: Tensor, kth: Tensor, k: int, excl: Exclusion):
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
