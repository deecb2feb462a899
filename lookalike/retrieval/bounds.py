r"""Error bounds of fp32 / bf16 screening matmuls against the canonical distances (`retrieval/distances.py`).

Exact search (`retrieval/exact.py`) and the FNMR pair stream (`retrieval/pairs.py`) both find candidates with a
fast matmul and then need a rigorous bound on how far a fast score can be from the canonical distance: this
module holds that maths and nothing else.

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
``|g|^2`` and of the final addition; with bf16 the output rounding of ``s`` is bounded by the observed score
``S`` (``|2 s| <= max(|S|, |S + G^2|)``), as for cosine, so for unit vectors the euclidean bound is about twice
the cosine one, as the squared distance ``2 - 2 cos`` is. If torch is allowed to run fp32 matmuls in reduced precision
(``torch.set_float32_matmul_precision("medium"/"high")``), the fp32 bound adds the bf16 input rounding
``2.01 u B_q B_G`` so it stays valid. The bound assumes IEEE round-to-nearest and fp32 accumulation inside
the bf16 matmul (oneDNN/MKL on CPU); `tests/retrieval` check it against float64 on adversarial data.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lookalike.retrieval.base import RowSubset
from lookalike.retrieval.distances import TINY_NORM, pair_distances, row_sq_norms

__all__ = ["ScreeningBounds", "fp32_matmul_is_ieee", "native_bf16_matmul", "fast_norms", "inverse_norms",
           "pair_screening_error", "U32", "U_BF16", "SAFETY"]

U32 = 2.0**-24
U_BF16 = 2.0**-8
U_BF16_OUT = U_BF16 / (1.0 - U_BF16)
SAFETY = 1.25
_INF = float("inf")
#: relative error of fp32 normalisation ``x * fl32(1 / |x|_64)``: two roundings, plus the float64 norm's own error
_REL32 = 2 * U32 + U32 * U32 + 1e-12


def fp32_matmul_is_ieee() -> bool:
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


def fast_norms(x: Tensor) -> Tensor:
    """Float64 row norms (accurate to ~1e-16, not bit-reproducible across batch shapes: used for bounds only)."""
    out = torch.empty(len(x), dtype=torch.float64)
    step = max(1, (1 << 18) // max(x.shape[1], 1))
    for a in range(0, len(x), step):
        out[a : a + step] = torch.linalg.vector_norm(x[a : a + step], dim=1, dtype=torch.float64)
    return out


class ScreeningBounds:
    """Per-search precomputation: float64 norms, screening vectors' error terms, bound constants."""

    def __init__(self, queries: Tensor, gallery: Tensor | RowSubset, distance: str, precision: str,
                 gallery_cache: dict | None = None):
        """``gallery``: a tensor or a `RowSubset` of a larger one (read block by block, never copied whole)."""
        self.q, self.g, self.distance, self.precision = queries, gallery, distance, precision
        self.d = d = queries.shape[1]
        cosine = distance == "cosine"
        # the gallery's terms depend on the gallery alone: kept in ``gallery_cache`` between searches when given
        cache = gallery_cache if gallery_cache is not None else {}
        # accurate float64 norms for screening and bounds; canonical (tree-sum) squared query norms for cosine
        self.q_norm = fast_norms(queries)
        if "g_norm" not in cache:
            cache["g_norm"] = fast_norms(gallery)
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
                cache["g_screen"] = self.prep32(gallery if isinstance(gallery, Tensor) else gallery[:], self.g_inv)
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
        self.ieee = fp32_matmul_is_ieee()
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
            # (for bf16 the output rounding of s depends on the observed score: added in `lower_bound`)
            big = b_q * b_g * 1.01
            extra = U32 * self.g_hat_max**2 * 1.01 + 2 * U32 * (2 * big + self.g_hat_max**2 * 1.01)
            err = 2 * err + SAFETY * extra
        return err

    def lower_bound(self, qpos: Tensor, score: Tensor, precision: str) -> Tensor:
        """Lower bound of the true distance (euclidean: squared) of any item whose screening score <= ``score``."""
        score = score.double()
        err = self.score_error(qpos, precision)
        if score.dim() == 2:
            err = err[:, None]
        if self.distance == "euclidean":
            if precision == "bf16":
                # the bf16 output T of the dot product is rounded by at most U_BF16_OUT |T|, and the observed
                # score S = 2 T - |g|^2 puts 2 T between S and S + G^2 (G = the largest gallery norm), so
                # |2 T| <= max(|S|, |S + G^2|); S + that error grows with S, so the bound at the K-th candidate's
                # score covers every item screened below it (fp32 slack for S and |g|^2 themselves)
                g_sq = self.g_hat_max**2 * (1 + 4 * U32)
                reach = torch.maximum(score.abs(), (score + g_sq).abs())
                err = err + SAFETY * U_BF16_OUT * (reach * (1 + 4 * U32) + 4 * U32 * g_sq)
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
        if isinstance(self.g, RowSubset):
            return pair_distances(self.q, self.g.base, qpos, self.g.positions(gpos), self.distance,
                                  self.q_sq_canonical)
        return pair_distances(self.q, self.g, qpos, gpos, self.distance, self.q_sq_canonical)


def inverse_norms(norm: Tensor) -> Tensor:
    """fp32 ``1 / |x|`` (0 for vectors the canonical cosine treats as zero vectors, as exact search does)."""
    return torch.where(norm > TINY_NORM, 1.0 / norm.clamp(min=TINY_NORM), 0.0).float()


def pair_screening_error(distance: str, d: int, q_max: float, g_max: float, ieee: bool) -> float:
    """Bound on |fast key - canonical key| for every pair (key = distance; euclidean: squared distance).

    The fp32 matmul of rows with norms <= B_q, B_g errs by at most ``gamma_d B_q B_g`` in any summation order
    (``gamma_d = d u / (1 - d u)``, ``u = 2^-24``; reduced-precision matmuls add ``2.01 * 2^-8 B_q B_g``).
    cosine rows are ``x * fl(1/|x|)``: within ``2u + u^2`` of the unit vector. Then the fp32 roundings of the
    fast formula, and the canonical value's own float64 error and float32 rounding, are added; the total is
    multiplied by 1.25 for the float64 noise of the bound itself.
    """
    gamma = d * U32 / (1.0 - d * U32) + (0.0 if ieee else 2.01 * U_BF16)
    f64 = d * 2.0**-50
    if distance == "cosine":
        e = 2 * U32 + U32 * U32 + 1e-12
        b = 1.0 + e
        core = 2 * e * b + gamma * b * b + 4 * U32 + f64
        tiny = d * 2.0**-120 * 4
    elif distance == "inner_product":
        core = (gamma + 2 * U32 + f64) * q_max * g_max
        tiny = d * 2.0**-120 * (1 + q_max) * (1 + g_max)
    else:
        # fast: |q|^2 + |g|^2 - 2 s in fp32; canonical: fl32(sqrt(sum (q - g)^2)), squared exactly
        core = 2 * gamma * q_max * g_max + (5 * U32 + 2 * f64) * (q_max + g_max) ** 2
        tiny = d * 2.0**-120 * (1 + q_max) * (1 + g_max) * 4
    return SAFETY * core + tiny
