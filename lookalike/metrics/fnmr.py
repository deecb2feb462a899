"""FNMR@FMR over all query/gallery pairs, streamed in blocks: never the Nq x Ng matrix, never per-query lists.

Positive pairs share a label, negative pairs do not; the query itself and its same-sequence gallery items make
no pair. For an FMR value f the threshold is the f-quantile of the negative distances (linear interpolation
between order statistics, as ``numpy.quantile``), and FNMR is the fraction of positive distances above it.

Every distance that enters the answer is the retrieval layer's canonical distance
(`lookalike.retrieval.pair_distances`, the one exact search reports), so the result is bit-for-bit the same
whatever the chunk sizes. Computing it for every pair would be slow, so blocks of pairs are first *screened*
with one fp32 matmul ("fast" distances) whose error against the canonical value is bounded by ``err`` (see
`lookalike.retrieval.bounds.pair_screening_error`), the same idea as exact search:

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
