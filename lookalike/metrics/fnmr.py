"""FNMR@FMR over all query/gallery pairs, streamed in blocks: never the Nq x Ng matrix, never per-query lists.

Positive pairs share a label, negative pairs do not; the query itself and its same-sequence gallery items make
no pair. For an FMR value f the threshold is the f-quantile of the negative distances (linear interpolation
between order statistics, as ``numpy.quantile``), and FNMR is the fraction of positive distances above it.

Every distance that enters the answer is the retrieval layer's canonical distance
(`lookalike.retrieval.pair_distances`, the one exact search reports), so the result is bit-for-bit the same
whatever the chunk sizes. Computing it for every pair would be slow, so blocks of pairs are first *screened*
with one fp32 matmul ("fast" distances) whose error against the canonical value is bounded by ``err`` (see
`lookalike.retrieval.bounds.pair_screening_error`), the same idea as exact search.

With more than `_ONE_PASS_MIN_PAIRS` pairs the thresholds come from **one pass** (`_one_pass`):

1. a sample of evenly spread query rows (about `_SAMPLE_PAIRS` pairs) places a *band* of fast keys around each
   needed order statistic (rank r of the negatives), wide enough for the sample's own spread across its stretches;
2. one pass counts the negatives below every band and keeps the band's members (pair positions and fast keys;
   one extraction per block, cut band by band), and keeps every positive pair with its fast key;
3. the r-th smallest *fast* key ``F_r`` is then known exactly, and as no key moves by more than ``err``, neither
   does the r-th order statistic: canonical distances are computed only for the members within ``2 err`` of
   ``F_r``, which fixes the r-th canonical key exactly (as in `_Kept`).

If a rank or its window falls outside its band (a sample that misjudged the data) the **two-pass** path
answers (also used for small sets):

1. pass 1 makes a histogram of the negatives' fast keys;
2. for each needed order statistic the histogram gives the fast bin holding rank r;
   widened by ``2.5 err`` on each side it is a *window* that surely holds every negative whose canonical
   distance could be the answer. The next pass counts the negatives whose fast distance lies below the window,
   computes canonical distances only inside it, and keeps those in the part of the window where canonical
   order is certain. A kept set too large for memory is histogrammed again (by canonical distance) instead,
   one more pass, until it is small or all its values are equal.

FNMR counts the positives above each threshold: a positive whose fast key is farther than ``err`` from the
threshold is decided by it, the few others get their canonical distance.

Euclidean distances are screened and histogrammed as squares (the matmul's error is an absolute bound on the
square); a float32 distance squared is exact in float64, so order and ties are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lookalike.errors import LookalikeError
from lookalike.retrieval import factorize_sequences
from lookalike.retrieval.base import as_embeddings, check_distance
from lookalike.retrieval.bounds import U32
from lookalike.retrieval.pairs import PairStream

__all__ = ["fnmr_at_fmr", "fmr_thresholds"]

_BINS = 1 << 16
#: a kept set holding more negatives than this is split by another histogram pass instead of being kept
_MAX_KEPT = 1 << 22
#: blocks with fewer pairs are histogrammed without torch.histc (whose fixed cost is about 1M pairs' worth)
_HISTC_MIN = 1 << 19
#: nested histogram levels before a set is kept whatever its size (float64 bins are then below resolution)
_MAX_DEPTH = 6
#: from this many pairs on, thresholds are found in one pass over the pairs (plus a sample), else in two
_ONE_PASS_MIN_PAIRS = 1 << 24
#: negative pairs in the sample that places the one-pass bands
_SAMPLE_PAIRS = 1 << 20
#: band half-width: this many standard errors of the sampled fraction (see `_sample_bands`)
_Z = 10.0


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

    def take(self, pairs: PairStream, q0: int, g0: int, keys: Tensor) -> tuple[Tensor, int]:
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


def _order_statistics(pairs: PairStream, root: Tensor, root_low: float, root_width: float,
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
    pairs = PairStream(emb, labels_t, q_flag, g_flag, seq, distance, int(query_chunk_size), int(gallery_chunk_size))
    n_neg = pairs.negative_count()
    positions = {f: f * (n_neg - 1) for f in fmr_vals}
    ranks = sorted({int(p) for p in positions.values()} | {min(int(p) + 1, n_neg - 1) for p in positions.values()})
    found = None
    if n_neg and len(pairs.q) * len(pairs.g) >= _ONE_PASS_MIN_PAIRS:
        found = _one_pass(pairs, ranks, n_neg)  # None when a rank fell outside the sampled bands (rare)
    if found is None:
        found = _two_passes(pairs, ranks) if n_neg else ({}, _positives(pairs, []))
    keys, positives = found
    if len(positives[0]) == 0 or n_neg == 0:
        return {f: None for f in fmr_vals}
    out: dict[float, dict | None] = {}
    thresholds = {}
    for f, p in positions.items():
        lo, hi = int(p), min(int(p) + 1, n_neg - 1)
        d_lo, d_hi = pairs.to_distance(keys[lo]), pairs.to_distance(keys[hi])
        t = p - lo  # numpy's linear interpolation, rounding included (so the two agree to the last bit)
        thresholds[f] = d_lo + t * (d_hi - d_lo) if t < 0.5 else d_hi - (d_hi - d_lo) * (1 - t)
    above = _positives_above(pairs, positives, list(thresholds.values()))
    for (f, threshold), n_above in zip(thresholds.items(), above):
        out[f] = {"threshold": float(threshold), "fnmr": n_above / len(positives[0]),
                  "n_positive": len(positives[0]), "n_negative": n_neg}
    return out


def _positives(pairs: PairStream, parts: list) -> tuple[Tensor, Tensor, Tensor]:
    """(query positions, gallery positions, fast keys) of every positive pair, from the blocks' parts."""
    if not parts:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty, torch.empty(0)
    return tuple(torch.cat(column) for column in zip(*parts))  # type: ignore[return-value]


def _positives_above(pairs: PairStream, positives: tuple[Tensor, Tensor, Tensor], thresholds: list[float]
                     ) -> list[int]:
    """How many positives have a canonical distance above each threshold. The fast key decides wherever it is
    farther than the screening bound from the threshold; the others (few) get their canonical distance."""
    rows, cols, fast = positives
    k = fast.double()
    err = pairs.err * 1.01 + 1e-300
    low, high = k - err, k + err
    if pairs.distance == "euclidean":
        low, high = low.clamp_(min=0.0).sqrt_(), high.clamp_(min=0.0).sqrt_()
    slack = 1e-12  # the float64 roundings of the bounds and square roots above
    certain_above, unsure = [], torch.zeros(len(k), dtype=torch.bool)
    for t in thresholds:
        surely = low > t + slack * (abs(t) + 1)
        certain_above.append(surely)
        unsure |= ~surely & ~(high < t - slack * (abs(t) + 1))
    idx = unsure.nonzero().squeeze(1)
    canonical = pairs.distances(rows[idx], cols[idx]).double()
    return [int((surely & ~unsure).sum()) + int((canonical > t).sum()) for surely, t in zip(certain_above, thresholds)]


def _two_passes(pairs: PairStream, ranks: list[int]) -> tuple[dict[int, float], tuple[Tensor, Tensor, Tensor]]:
    """Pass 1: a histogram of every negative's fast key; then `_order_statistics` (usually one more pass)."""
    root_low, root_high = pairs.clamp
    root_width = (root_high - root_low) / _BINS
    root = torch.zeros(_BINS, dtype=torch.long)
    parts = []
    for _, _, keys, block_positives in pairs.blocks():
        parts.append(block_positives)
        # every key lies in [root_low, root_high] (clamped), NaN ones (not negatives) are left out; histc has a
        # large fixed cost, so small blocks are counted directly (either binning serves: it only picks windows)
        if keys.numel() >= _HISTC_MIN:
            root += torch.histc(keys, bins=_BINS, min=root_low, max=root_high).long()
        else:
            _count_into(root, _index(keys[~torch.isnan(keys)], root_low, root_width))
    return _order_statistics(pairs, root, root_low, root_width, ranks), _positives(pairs, parts)


class _Band:
    """Negatives whose fast key lies in ``[lo, hi)``: kept (flat pair positions, fast keys, sorted by key), and
    how many negatives lie below it; the ranks it should hold."""

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi, self.below, self.above, self.parts, self.ranks = lo, hi, 0, 0, [], []

    def add(self, flat: Tensor, values: Tensor) -> None:
        """Members of one block: flat pair positions and their fast keys."""
        self.parts.append((flat, values))

    def finish(self, n_neg: int, counted_below: bool) -> None:
        flat = torch.cat([p[0] for p in self.parts]) if self.parts else torch.empty(0, dtype=torch.int64)
        fast = torch.cat([p[1] for p in self.parts]) if self.parts else torch.empty(0)
        self.fast, order = torch.sort(fast, stable=True)
        self.flat, self.parts = flat[order], []
        if not counted_below:
            self.below = n_neg - self.above - len(fast)


def _sample_bands(pairs: PairStream, fractions: list[float]) -> list[_Band]:
    """A band of fast keys per wanted fraction of the negatives, from evenly spread stretches of query rows: the
    fast key at that fraction lies inside it with overwhelming probability (and that is checked exactly later).
    The band's width covers ``_Z`` standard errors of the sampled fraction, measured across the stretches (rows
    are not independent pairs), and at least ``_Z`` binomial ones."""
    nq, ng = len(pairs.q), len(pairs.g)
    rows = min(nq, max(1, _SAMPLE_PAIRS // max(ng, 1)))
    n_stretches = min(rows, 16)
    per = -(-rows // n_stretches)
    starts = sorted(set(torch.linspace(0, nq - per, n_stretches).long().tolist()))
    stretches: dict[int, list[Tensor]] = {a: [] for a in starts}
    for q0, _, keys, _ in pairs.blocks([(a, a + per) for a in starts]):
        stretches[q0].append(keys[~torch.isnan(keys)])
    groups = [torch.cat(v) for v in stretches.values()]
    sample = torch.sort(torch.cat(groups)).values
    n = len(sample)
    margin = 2 * pairs.err + 4 * U32 * (1 + max(abs(pairs.key_range[0]), abs(pairs.key_range[1])))
    bands: dict[tuple[float, float], _Band] = {}
    out = []
    for p in fractions:
        if n == 0:
            return []
        q = sample[min(n - 1, int(p * n))]
        shares = torch.tensor([int(torch.count_nonzero(g < q)) / len(g) if len(g) else p for g in groups],
                              dtype=torch.float64)
        se = float(shares.std()) / math.sqrt(len(groups)) if len(groups) > 1 else 1.0
        spread = _Z * max(se, math.sqrt(max(p * (1 - p), 1.0 / n) / n)) + 2.0 / n
        lo_q, hi_q = p - spread, p + spread
        lo = float(sample[int(lo_q * n)]) - margin if lo_q > 0 else -math.inf
        hi = float(sample[min(n - 1, math.ceil(hi_q * n))]) + margin if hi_q < 1 else math.inf
        band = bands.setdefault((lo, hi), _Band(lo, hi))
        out.append(band)
    return out


def _disjoint(bands, band_of_rank) -> list[_Band]:
    """Overlapping bands merged (sorted by their lower end), each holding the ranks it serves."""
    merged: list[_Band] = []
    into = {}
    for band in sorted(bands, key=lambda b: b.lo):
        if merged and band.lo < merged[-1].hi:
            merged[-1].hi = max(merged[-1].hi, band.hi)
        else:
            merged.append(_Band(band.lo, band.hi))
        into[id(band)] = merged[-1]
    for band, r in band_of_rank:
        into[id(band)].ranks.append(r)
    return merged


def _cut_bands(group: list[_Band], values: Tensor, sel: Tensor, q0: int, g0: int, width: int, ng: int,
               below: bool) -> None:
    """Hand a block's values to disjoint bands ordered outward from the cut: ``values`` (at block positions
    ``sel``) are every negative on the group's side of its first band; each band counts those beyond it and
    keeps its members, and the next band works on the values beyond."""
    for i, band in enumerate(group):
        edge_in, edge_out = (band.hi, band.lo) if below else (band.lo, band.hi)
        beyond = None
        if math.isfinite(edge_out):
            beyond = values < edge_out if below else values >= edge_out
        if i == 0:  # the values were cut at this band's inner edge already
            inside = ~beyond if beyond is not None else None
        else:
            inside = values < edge_in if below else values >= edge_in
            if beyond is not None:
                inside &= ~beyond
        at = sel if inside is None else sel.index_select(0, inside.nonzero().squeeze(1))
        kept = values if inside is None else values.index_select(0, inside.nonzero().squeeze(1))
        band.add((q0 + at // width) * ng + (g0 + at % width), kept)
        if beyond is None:
            break
        idx = beyond.nonzero().squeeze(1)
        values, sel = values.index_select(0, idx), sel.index_select(0, idx)
        if below:
            band.below += len(values)
        else:
            band.above += len(values)


def _one_pass(pairs: PairStream, ranks: list[int], n_neg: int
              ) -> tuple[dict[int, float], tuple[Tensor, Tensor, Tensor]] | None:
    """The order statistics of ``ranks`` in one pass over the pairs (after a small sample), or None.

    A sample of query rows puts each rank's fast key inside a band; the pass counts the negatives below (or
    above) every band and keeps the band's members. The r-th smallest fast key ``F_r`` is then known exactly,
    and since no key moves by more than ``err``, neither does the r-th order statistic: the r-th canonical key
    lies in ``[F_r - err, F_r + err]``. Canonical keys are computed only for the members whose fast key is within
    ``2 err`` of ``F_r``, and the rank is read from them as in `_Kept` (exact). None (the caller falls back to
    two passes) when a rank or its window is not inside its band.
    """
    fractions = [r / max(n_neg - 1, 1) for r in ranks]
    per_rank = _sample_bands(pairs, fractions)
    if not per_rank:
        return None
    bands = _disjoint({id(b): b for b in per_rank}.values(), zip(per_rank, ranks))
    # bands in the upper half are counted from above (fewer values pass the cut), the others from below
    low = [b for b in bands if math.isfinite(b.hi) and max(b.ranks) <= n_neg // 2]
    high = [b for b in bands if all(b is not x for x in low)]
    low.sort(key=lambda b: -b.hi)  # each band is then cut from the values below the previous one
    high.sort(key=lambda b: b.lo)
    parts = []
    ng = len(pairs.g)
    for q0, g0, keys, block_positives in pairs.blocks():
        parts.append(block_positives)
        flat_keys = keys.view(-1)
        width = keys.shape[1]
        if low:
            sel = (flat_keys < low[0].hi).nonzero().squeeze(1)
            _cut_bands(low, flat_keys.index_select(0, sel), sel, q0, g0, width, ng, below=True)
        if high:
            sel = ((flat_keys >= high[0].lo) if math.isfinite(high[0].lo) else ~torch.isnan(flat_keys))
            sel = sel.nonzero().squeeze(1)
            _cut_bands(high, flat_keys.index_select(0, sel), sel, q0, g0, width, ng, below=False)
    value: dict[int, float] = {}
    slack = 4 * U32 * (1 + max(abs(pairs.key_range[0]), abs(pairs.key_range[1])))
    for band in bands:
        band.finish(n_neg, any(band is x for x in low))
        windows = []
        for r in band.ranks:
            local = r - band.below
            if not 0 <= local < len(band.fast):
                return None
            f_r = float(band.fast[local])
            w_lo, w_hi = f_r - 2 * pairs.err - slack, f_r + 2 * pairs.err + slack
            if w_lo < band.lo or w_hi > band.hi:
                return None
            ends = torch.searchsorted(band.fast.double(), torch.tensor([w_lo, w_hi], dtype=torch.float64))
            windows.append((r, w_lo, w_hi, int(ends[0]), int(ends[1])))
        a0, b0 = min(w[3] for w in windows), max(w[4] for w in windows)
        flat = band.flat[a0:b0]
        canonical_all = pairs.canonical_keys(flat // ng, flat % ng)
        for r, w_lo, w_hi, a, b in windows:
            canonical = canonical_all[a - a0 : b - a0]
            # negatives below the window have canonical keys < w_lo + err, those above it >= w_hi - err
            c_lo, c_hi = w_lo + pairs.err, w_hi - pairs.err
            before = band.below + a + int((canonical < c_lo).sum())
            inside = torch.sort(canonical[(canonical >= c_lo) & (canonical < c_hi)]).values
            if not before <= r < before + len(inside):
                return None
            value[r] = float(inside[r - before])
    return value, _positives(pairs, parts)
