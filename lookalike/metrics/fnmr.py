"""FNMR@FMR over all query/gallery pairs, streamed in blocks: never the Nq x Ng matrix, never per-query lists.

Positive pairs share a label, negative pairs do not; the query itself and its same-sequence gallery items make
no pair. For an FMR value f the threshold is the f-quantile of the negative distances (linear interpolation
between order statistics, as ``numpy.quantile``), and FNMR is the fraction of positive distances above it.

Every distance that enters the answer is the retrieval layer's canonical distance
(`lookalike.retrieval.pair_distances`, the one exact search reports), so the result is bit-for-bit the same
whatever the chunk sizes. Computing it for every pair would be slow, so blocks of pairs are first *screened*
with one fp32 matmul ("fast" distances) whose error against the canonical value is bounded by ``err`` (see
`_screening_error`), the same idea as exact search:

1. pass 1 computes the canonical distance of every positive pair (positives are few: about Nq x items per
   label; only their float32 values are kept) and a histogram of the negatives' fast distances;
2. for each needed order statistic (rank r of the negatives) the histogram gives the fast bin holding rank r;
   widened by ``2.5 err`` on each side it is a *window* that surely holds every negative whose canonical
   distance could be the answer. The next pass counts the negatives whose fast distance lies below the window,
   computes canonical distances only inside it, and keeps those in the part of the window where canonical
   order is certain. A kept set too large for memory is histogrammed again (by canonical distance) instead,
   one more pass, until it is small or all its values are equal.

Euclidean distances are screened and histogrammed as squares (the matmul's error is an absolute bound on the
square); a float32 distance squared is exact in float64, so order and ties are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lookalike.errors import LookalikeError
from lookalike.retrieval import Exclusion, factorize_sequences, pair_distances
from lookalike.retrieval.base import as_embeddings, check_distance
from lookalike.retrieval.distances import TINY_NORM, row_sq_norms

__all__ = ["fnmr_at_fmr", "fmr_thresholds"]

_BINS = 1 << 16
#: a kept set holding more negatives than this is split by another histogram pass instead of being kept
_MAX_KEPT = 1 << 22
#: blocks with fewer pairs are histogrammed without torch.histc (whose fixed cost is about 1M pairs' worth)
_HISTC_MIN = 1 << 19
#: nested histogram levels before a set is kept whatever its size (float64 bins are then below resolution)
_MAX_DEPTH = 6
U32 = 2.0**-24
U_BF16 = 2.0**-8
SAFETY = 1.25


def _fp32_matmul_is_ieee() -> bool:
    """False when torch may run fp32 matmuls with reduced-precision inputs (then the error bound widens)."""
    try:
        if torch.get_float32_matmul_precision() != "highest":
            return False
    except RuntimeError:
        return False
    matmul = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    return getattr(matmul, "fp32_precision", "none") in ("none", "ieee")


def _norms(x: Tensor) -> Tensor:
    out = torch.empty(len(x), dtype=torch.float64)
    step = max(1, (1 << 18) // max(x.shape[1], 1))
    for a in range(0, len(x), step):
        out[a : a + step] = torch.linalg.vector_norm(x[a : a + step], dim=1, dtype=torch.float64)
    return out


def _screening_error(distance: str, d: int, q_max: float, g_max: float, ieee: bool) -> float:
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


def _inverse(norm: Tensor) -> Tensor:
    """fp32 ``1 / |x|`` (0 for vectors the canonical cosine treats as zero vectors, as exact search does)."""
    return torch.where(norm > TINY_NORM, 1.0 / norm.clamp(min=TINY_NORM), 0.0).float()


class _Pairs:
    """Every (query, gallery) pair of a dataset, block by block: fast keys of the negatives (NaN elsewhere).

    Positive pairs are enumerated per query chunk from the labels (never by comparing whole blocks), and the
    pairs that make no pair at all (the query itself, its same-sequence items) are masked by the retrieval
    layer's `Exclusion`, the rule search uses.
    """

    def __init__(self, embeddings: Tensor, labels: Tensor, is_query: Tensor, is_gallery: Tensor,
                 sequences: Tensor | None, distance: str, query_chunk_size: int, gallery_chunk_size: int):
        n = len(embeddings)
        q_idx, g_idx = is_query.nonzero().squeeze(1), is_gallery.nonzero().squeeze(1)
        self.q = embeddings if len(q_idx) == n else embeddings[q_idx]  # raw rows: canonical distances
        self.g = embeddings if len(g_idx) == n else embeddings[g_idx]
        q_norm, g_norm = _norms(self.q), _norms(self.g)
        self.qs, self.gs = self.q, self.g  # screening rows
        self.q_sq = self.g_sq = self.q_sq_canonical = None
        if distance == "cosine":
            self.qs, self.gs = self.q * _inverse(q_norm)[:, None], self.g * _inverse(g_norm)[:, None]
            self.q_sq_canonical = row_sq_norms(self.q)
        elif distance == "euclidean":
            self.q_sq, self.g_sq = q_norm.square().float(), g_norm.square().float()
        q_max = float(q_norm.max()) * (1 + 1e-12) if len(q_norm) else 0.0
        g_max = float(g_norm.max()) * (1 + 1e-12) if len(g_norm) else 0.0
        self.err = _screening_error(distance, embeddings.shape[1], q_max, g_max, _fp32_matmul_is_ieee())
        if distance == "cosine":
            self.key_range = (0.0, 2.0)
        elif distance == "inner_product":
            self.key_range = (-q_max * g_max, q_max * g_max)
        else:
            self.key_range = (0.0, (q_max + g_max) ** 2)
        # fast keys are clamped to this fp32-exact range: a no-op while the screening bound holds, and no key
        # escapes the pass-1 histogram
        low = np.float32(self.key_range[0] - 2 * self.err)
        low = low if float(low) <= self.key_range[0] - 2 * self.err else np.nextafter(low, np.float32(-np.inf))
        high = np.float32(self.key_range[1] + 2 * self.err)
        high = high if float(high) >= self.key_range[1] + 2 * self.err else np.nextafter(high, np.float32(np.inf))
        if not high > low:
            high = np.nextafter(low, np.float32(np.inf))
        self.clamp = (float(low), float(high))
        self.q_lab = labels[q_idx]
        self.g_order = torch.argsort(labels[g_idx], stable=True)
        self.g_lab_sorted = labels[g_idx][self.g_order]
        spec = []
        if bool((is_query & is_gallery).any()):
            spec.append((q_idx, g_idx))  # the same dataset item
        if sequences is not None and bool((sequences >= 0).any()):
            spec.append((sequences[q_idx], sequences[g_idx]))  # the same sequence (-1 matches nothing)
        self.exclusion = Exclusion(spec or None, len(q_idx), len(g_idx))
        self.distance = distance
        self.qc, self.gc = query_chunk_size, gallery_chunk_size

    def fast_keys(self, q0: int, q1: int, g0: int, g1: int) -> Tensor:
        """Screening keys of one block (cosine / inner product: the distance; euclidean: its square)."""
        s = self.qs[q0:q1] @ self.gs[g0:g1].T
        if self.distance == "cosine":
            return torch.rsub(s, 1.0).clamp_(*self.clamp)
        if self.distance == "inner_product":
            return s.neg_().clamp_(*self.clamp)
        return s.mul_(-2.0).add_(self.q_sq[q0:q1, None]).add_(self.g_sq[None, g0:g1]).clamp_(*self.clamp)

    def canonical_keys(self, q_pos: Tensor, g_pos: Tensor) -> Tensor:
        """Canonical keys (float64) of the pairs ``(q_pos[i], g_pos[i])``."""
        return self.key_of(self.distances(q_pos, g_pos))

    def distances(self, q_pos: Tensor, g_pos: Tensor) -> Tensor:
        """Canonical float32 distances of the pairs ``(q_pos[i], g_pos[i])`` (the retrieval layer's)."""
        return pair_distances(self.q, self.g, q_pos, g_pos, self.distance, self.q_sq_canonical)

    def key_of(self, distances: Tensor) -> Tensor:
        d = distances.double()
        return d.square_() if self.distance == "euclidean" else d

    def to_distance(self, key: float) -> float:
        return math.sqrt(key) if self.distance == "euclidean" else key

    def positives(self, q0: int, q1: int) -> tuple[Tensor, Tensor]:
        """(query, gallery) positions of the positive pairs of queries ``q0:q1``, sorted by gallery position."""
        labels = self.q_lab[q0:q1]
        lo = torch.searchsorted(self.g_lab_sorted, labels)
        count = torch.searchsorted(self.g_lab_sorted, labels, right=True) - lo
        n = int(count.sum())
        rows = torch.repeat_interleave(torch.arange(q0, q1), count)
        start = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
        cols = self.g_order[torch.arange(n) - start + torch.repeat_interleave(lo, count)]
        if not self.exclusion.empty and n:
            keep = ~self.exclusion.mask(rows, cols)
            rows, cols = rows[keep], cols[keep]
        order = torch.argsort(cols, stable=True)
        return rows[order], cols[order]

    def blocks(self) -> Iterator[tuple[int, int, Tensor, tuple[Tensor, Tensor] | None]]:
        """``(q0, g0, keys, positives)`` of one block at a time: ``keys`` are the fast keys of the negative pairs,
        NaN where a pair is positive or excluded; ``positives`` (the chunk's, see `positives`) come with the
        first block of every query chunk, else None."""
        for q0 in range(0, len(self.q), self.qc):
            q1 = min(q0 + self.qc, len(self.q))
            rows, cols = self.positives(q0, q1)
            chunk_exclusion = None if self.exclusion.empty else self.exclusion.for_queries(torch.arange(q0, q1))
            for g0 in range(0, len(self.g), self.gc):
                g1 = min(g0 + self.gc, len(self.g))
                keys = self.fast_keys(q0, q1, g0, g1)
                a, b = torch.searchsorted(cols, torch.tensor([g0, g1])).tolist()
                keys[rows[a:b] - q0, cols[a:b] - g0] = math.nan
                if chunk_exclusion is not None:
                    chunk_exclusion.apply(keys, g0, g1, math.nan)
                yield q0, g0, keys, ((rows, cols) if g0 == 0 else None)

    def canonical_of(self, q0: int, g0: int, mask: Tensor) -> Tensor:
        """Canonical keys (float64) of the block's pairs where ``mask`` is True."""
        rows, cols = mask.nonzero(as_tuple=True)
        return self.canonical_keys(rows + q0, cols + g0)


def _index(values: Tensor, low: float, width: float) -> Tensor:
    return ((values - low) / width).floor_().clamp_(0, _BINS - 1).long()


def _count_into(counts: Tensor, idx: Tensor) -> None:
    """``counts[i] += (idx == i).sum()`` for every bin; small blocks skip the pass over the whole histogram."""
    if len(idx) * 8 < len(counts):
        counts.index_add_(0, idx, torch.ones_like(idx))
    else:
        counts += torch.bincount(idx, minlength=len(counts))


class _Node:
    """A range of canonical keys: ``[lo, hi)`` (exact comparisons), then a path of nested histogram bins
    ``(low, width, bin number)``. Membership is the same float formula in every pass, so a value always lands
    in the same bin."""

    def __init__(self, lo: float, hi: float, path: tuple[tuple[float, float, int], ...] = ()):
        self.lo, self.hi, self.path = lo, hi, path
        if path:
            low, width, b = path[-1]
            self.low, self.width = low + b * width, width
        else:
            self.low, self.width = lo, hi - lo

    def split(self, values: Tensor) -> tuple[Tensor, int]:
        """(the values inside this node, how many values lie before it)."""
        before = int((values < self.lo).sum())
        inside = values[(values >= self.lo) & (values < self.hi)]
        for low, width, b in self.path:
            idx = _index(inside, low, width)
            before += int((idx < b).sum())
            inside = inside[idx == b]
        return inside, before

    def child(self, b: int) -> "_Node":
        width = self.width / _BINS
        return _Node(self.lo, self.hi, self.path + ((self.low, width, b),))


class _Window:
    """Negatives whose fast key is in ``[lo, hi)`` get canonical keys; those below are only counted.

    With ``err`` the screening bound, a negative below the window has a canonical key ``< lo + err`` and one
    above it ``>= hi - err``, so inside ``[lo + err, hi - err)`` the canonical order of all negatives is known
    from the window's own values plus the count below.
    """

    def __init__(self, lo: float, hi: float, err: float):
        # fp32-representable bounds (the fast keys are fp32), rounded outward
        self.lo = float(np.nextafter(np.float32(lo), np.float32(-np.inf))) if math.isfinite(lo) else lo
        self.hi = float(np.nextafter(np.float32(hi), np.float32(np.inf))) if math.isfinite(hi) else hi
        self.certain = (self.lo + err, self.hi - err)

    def take(self, pairs: _Pairs, q0: int, g0: int, keys: Tensor) -> tuple[Tensor, int]:
        """(canonical keys of the block's negatives in the window, how many negatives lie below it).

        ``keys`` are NaN outside the negatives, and NaN compares False."""
        if math.isfinite(self.lo):
            below_mask = keys < self.lo
            below = int(torch.count_nonzero(below_mask))
            mask = (keys < self.hi).logical_and_(below_mask.logical_not_()) if math.isfinite(self.hi) else (
                keys >= self.lo)
        else:
            below, mask = 0, (keys < self.hi) if math.isfinite(self.hi) else ~torch.isnan(keys)
        return pairs.canonical_of(q0, g0, mask), below


class _Histogram:
    """Counts of a node's child bins over one pass, the values before the node, and the node's min and max."""

    def __init__(self, node: _Node):
        self.node, self.counts, self.before = node, torch.zeros(_BINS, dtype=torch.long), 0
        self.min, self.max = math.inf, -math.inf

    def add(self, values: Tensor, below: int) -> None:
        inside, before = self.node.split(values)
        self.before += before + below
        if len(inside):
            _count_into(self.counts, _index(inside, self.node.low, self.node.width / _BINS))
            self.min, self.max = min(self.min, float(inside.min())), max(self.max, float(inside.max()))

    def holds(self, rank: int) -> bool:
        return self.before <= rank < self.before + int(self.counts.sum())

    def locate(self, rank: int) -> int:
        """The child bin that holds the 0-based ``rank`` (counted over all negatives)."""
        cumulative = self.counts.cumsum(0) + self.before
        return min(int(torch.searchsorted(cumulative, torch.tensor(rank), right=True)), _BINS - 1)


class _Kept:
    """The values of one node, sorted, and how many values lie before it (one pass)."""

    def __init__(self, node: _Node):
        self.node, self.parts, self.before, self.values = node, [], 0, None

    def add(self, values: Tensor, below: int) -> None:
        inside, before = self.node.split(values)
        self.before += before + below
        self.parts.append(inside)

    def holds(self, rank: int) -> bool:
        return self.before <= rank < self.before + sum(len(p) for p in self.parts)

    def value(self, rank: int) -> float:
        if self.values is None:
            self.values = torch.sort(torch.cat(self.parts)).values
        return float(self.values[rank - self.before])


def _order_statistics(pairs: _Pairs, root: Tensor, root_low: float, root_width: float,
                      ranks: list[int]) -> dict[int, float]:
    """Exact canonical keys of the given 0-based ranks of the negatives, from the pass-1 fast histogram."""
    err, (key_lo, key_hi) = pairs.err, pairs.key_range
    cumulative = root.cumsum(0)
    # the fuzz of the bin formula (fp32 arithmetic) on the fast bin edges
    fuzz = 4 * U32 * (abs(root_low) + _BINS * root_width) + 1e-30
    pending: dict[int, tuple[_Window, _Node, bool]] = {}
    for r in ranks:
        b = int(torch.searchsorted(cumulative, torch.tensor(r), right=True))
        low = root_low + b * root_width if b > 0 else -math.inf
        high = root_low + (b + 1) * root_width if b < _BINS - 1 else math.inf
        window = _Window(low - fuzz - 2.5 * err, high + fuzz + 2.5 * err, err)
        c_lo, c_hi = window.certain
        # canonical keys never leave the known range, which makes the node finite
        node = _Node(max(c_lo, key_lo - 2 * err), min(c_hi, key_hi + 2 * err))
        first, last = max(0, int(_index(torch.tensor([window.lo]), root_low, root_width))), int(
            _index(torch.tensor([window.hi]), root_low, root_width))
        estimate = int(root[first : last + 1].sum())
        pending[r] = (window, node, estimate <= _MAX_KEPT)

    value: dict[int, float] = {}
    while pending:
        jobs: dict[tuple, _Histogram | _Kept] = {}
        windows: dict[tuple, _Window] = {}
        wanted: dict[int, tuple] = {}
        for r, (window, node, keep) in pending.items():
            wkey = (window.lo, window.hi)
            windows[wkey] = window
            key = (wkey, node.lo, node.hi, node.path, keep)
            wanted[r] = key
            if key not in jobs:
                jobs[key] = _Kept(node) if keep else _Histogram(node)
        by_window = {wkey: [job for key, job in jobs.items() if key[0] == wkey] for wkey in windows}
        for q0, g0, keys, _ in pairs.blocks():
            for wkey, window in windows.items():
                values, below = window.take(pairs, q0, g0, keys)
                for job in by_window[wkey]:
                    job.add(values, below)
        next_pending = {}
        for r, key in wanted.items():
            job, (window, node, _) = jobs[key], pending[r]
            if not job.holds(r):
                raise RuntimeError(f"fnmr_at_fmr: negative rank {r} is not where the screening bound puts it; "
                                   "the fp32 matmul broke its error bound (please report this)")
            if isinstance(job, _Kept):
                value[r] = job.value(r)
            elif job.min == job.max:  # every value of the node is the same
                value[r] = job.min
            else:
                b = job.locate(r)
                child = node.child(b)
                keep = int(job.counts[b]) <= _MAX_KEPT or len(child.path) >= _MAX_DEPTH
                next_pending[r] = (window, child, keep)
        pending = next_pending
    return value


def _as_tensor(x: Any) -> Tensor:
    return x.detach().cpu() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def fnmr_at_fmr(
    embeddings: Any,
    labels: Any,
    is_query: Any,
    is_gallery: Any,
    fmr_vals: Iterable[float],
    *,
    sequences: Any = None,
    distance: str = "cosine",
    query_chunk_size: int = 1024,
    gallery_chunk_size: int = 8192,
) -> dict[float, float | None]:
    """FNMR at each FMR value in (0, 1] (0.001 = 0.1%); None where there is no positive or no negative pair.

    ``sequences``: any hashable per item (None / NaN = no sequence); same-sequence pairs are left out.
    Distances are the canonical ones exact search reports. Memory: one (query_chunk_size x gallery_chunk_size)
    block, the positives' distances, a histogram and the negatives near each threshold.
    """
    found = fmr_thresholds(embeddings, labels, is_query, is_gallery, fmr_vals, sequences=sequences,
                           distance=distance, query_chunk_size=query_chunk_size,
                           gallery_chunk_size=gallery_chunk_size)
    return {f: (None if v is None else v["fnmr"]) for f, v in found.items()}


def fmr_thresholds(
    embeddings: Any,
    labels: Any,
    is_query: Any,
    is_gallery: Any,
    fmr_vals: Iterable[float],
    *,
    sequences: Any = None,
    distance: str = "cosine",
    query_chunk_size: int = 1024,
    gallery_chunk_size: int = 8192,
) -> dict[float, dict | None]:
    """For each FMR value: ``{"threshold", "fnmr", "n_positive", "n_negative"}``, where ``threshold`` is the
    distance at which that fraction of the negative pairs match (the quantile `fnmr_at_fmr` uses) and ``fnmr``
    the fraction of positive pairs farther than it; None where there is no positive or no negative pair."""
    fmr_vals = [float(f) for f in fmr_vals]
    if any(not 0.0 < f <= 1.0 for f in fmr_vals):
        raise LookalikeError(f"fmr_vals are fractions in (0, 1] (e.g. 0.001 for 0.1%), got {fmr_vals}")
    if not fmr_vals:
        return {}
    distance = check_distance(distance)
    emb = as_embeddings(embeddings, "embeddings")
    labels_t, q_flag, g_flag = _as_tensor(labels).long(), _as_tensor(is_query).bool(), _as_tensor(is_gallery).bool()
    if not len(labels_t) == len(q_flag) == len(g_flag) == len(emb):
        raise LookalikeError(f"fnmr_at_fmr: {len(emb)} embeddings but {len(labels_t)} labels, {len(q_flag)} "
                             f"is_query and {len(g_flag)} is_gallery values; give one of each per item")
    if len(sequences if sequences is not None else emb) != len(emb):
        raise LookalikeError(f"fnmr_at_fmr: sequences must have one value per embedding ({len(emb)})")
    seq = None if sequences is None else factorize_sequences(sequences)
    pairs = _Pairs(emb, labels_t, q_flag, g_flag, seq, distance, int(query_chunk_size), int(gallery_chunk_size))

    # pass 1: canonical distances of the positives, and a histogram of the negatives' fast keys
    root_low, root_high = pairs.clamp
    root_width = (root_high - root_low) / _BINS
    root = torch.zeros(_BINS, dtype=torch.long)
    positives = []
    for _, _, keys, chunk_positives in pairs.blocks():
        if chunk_positives is not None and len(chunk_positives[0]):
            positives.append(pairs.distances(*chunk_positives))
        # every key lies in [root_low, root_high] (clamped), NaN ones (not negatives) are left out; histc has a
        # large fixed cost, so small blocks are counted directly (either binning serves: it only picks windows)
        if keys.numel() >= _HISTC_MIN:
            root += torch.histc(keys, bins=_BINS, min=root_low, max=root_high).long()
        else:
            _count_into(root, _index(keys[~torch.isnan(keys)], root_low, root_width))
    pos_dist = torch.cat(positives).double() if positives else torch.empty(0, dtype=torch.float64)
    n_neg = int(root.sum())
    if len(pos_dist) == 0 or n_neg == 0:
        return {f: None for f in fmr_vals}

    positions = {f: f * (n_neg - 1) for f in fmr_vals}
    ranks = sorted({int(p) for p in positions.values()} | {min(int(p) + 1, n_neg - 1) for p in positions.values()})
    keys = _order_statistics(pairs, root, root_low, root_width, ranks)  # usually one more pass
    out: dict[float, dict | None] = {}
    for f, p in positions.items():
        lo, hi = int(p), min(int(p) + 1, n_neg - 1)
        d_lo, d_hi = pairs.to_distance(keys[lo]), pairs.to_distance(keys[hi])
        t = p - lo  # numpy's linear interpolation, rounding included (so the two agree to the last bit)
        threshold = d_lo + t * (d_hi - d_lo) if t < 0.5 else d_hi - (d_hi - d_lo) * (1 - t)
        out[f] = {"threshold": float(threshold), "fnmr": float((pos_dist > threshold).double().mean()),
                  "n_positive": len(pos_dist), "n_negative": n_neg}
    return out
