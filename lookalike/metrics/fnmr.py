"""FNMR@FMR over all query/gallery pairs, streamed in blocks: never the Nq x Ng matrix, never per-query lists.

Positive pairs share a label, negative pairs do not; the query itself and its same-sequence gallery items make
no pair. For an FMR value f the threshold is the f-quantile of the negative distances (linear interpolation
between order statistics, as ``numpy.quantile``), and FNMR is the fraction of positive distances above it.

Positives are few (about Nq x items per label) and are kept. The negatives' order statistics are found exactly
without keeping them: pass 1 histograms them over a range known in advance (cosine: [0, 2]; other distances:
bounds from the largest norms), pass 2 keeps only the negatives that fall in the bins holding the needed
ranks. A bin too full to keep is histogrammed again (one more pass) until it is small. Every pass counts the
negatives before the kept bins itself, so a rank's position never depends on another pass's arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lookalike.errors import LookalikeError
from lookalike.retrieval import factorize_sequences
from lookalike.retrieval.base import as_embeddings, check_distance

__all__ = ["fnmr_at_fmr", "block_distances"]

_BINS = 1 << 16
#: a bin holding more negatives than this is split by another histogram pass instead of being kept
_MAX_KEPT = 1 << 22


def block_distances(queries: Tensor, gallery: Tensor, distance: str, q_sq: Tensor | None = None,
                    g_sq: Tensor | None = None) -> Tensor:
    """Distances ("smaller is closer") between every query and every gallery row of one block.

    cosine expects rows already L2-normalised (zero rows stay zero: distance 1 to everything); euclidean takes
    the rows' squared norms ``q_sq`` / ``g_sq`` when known.
    """
    if distance == "cosine":
        return (1.0 - queries @ gallery.T).clamp_(min=0.0)
    if distance == "inner_product":
        return (queries @ gallery.T).neg_()
    if distance == "euclidean":
        q_sq = (queries * queries).sum(1) if q_sq is None else q_sq
        g_sq = (gallery * gallery).sum(1) if g_sq is None else g_sq
        d = (queries @ gallery.T).mul_(-2.0).add_(q_sq[:, None]).add_(g_sq[None, :])
        return d.clamp_(min=0.0).sqrt_()
    raise LookalikeError(f"unknown distance {distance!r}; use cosine, inner_product or euclidean")


class _Pairs:
    """Every (query, gallery) pair of a dataset, block by block: distances of positives and of negatives."""

    def __init__(self, embeddings: Tensor, labels: Tensor, is_query: Tensor, is_gallery: Tensor,
                 sequences: Tensor | None, distance: str, query_chunk_size: int, gallery_chunk_size: int):
        q_idx, g_idx = is_query.nonzero().squeeze(1), is_gallery.nonzero().squeeze(1)
        emb = embeddings
        if distance == "cosine":
            emb = torch.nn.functional.normalize(emb, dim=1)
        self.q, self.g = emb[q_idx], emb[g_idx]
        self.q_sq = (self.q * self.q).sum(1) if distance == "euclidean" else None
        self.g_sq = (self.g * self.g).sum(1) if distance == "euclidean" else None
        self.q_lab, self.g_lab = labels[q_idx], labels[g_idx]
        self.q_key, self.g_key = q_idx, g_idx
        self.q_seq = None if sequences is None else sequences[q_idx]
        self.g_seq = None if sequences is None else sequences[g_idx]
        self.distance = distance
        self.qc, self.gc = query_chunk_size, gallery_chunk_size

    def range(self) -> tuple[float, float]:
        """Bounds that hold every distance (known before computing any)."""
        if self.distance == "cosine":
            return 0.0, 2.0
        q_max = float(self.q.norm(dim=1).max()) if len(self.q) else 0.0
        g_max = float(self.g.norm(dim=1).max()) if len(self.g) else 0.0
        if self.distance == "inner_product":
            return -q_max * g_max, q_max * g_max
        return 0.0, q_max + g_max

    def blocks(self) -> Iterator[tuple[Tensor, Tensor]]:
        """(positive distances, negative distances) of one block of pairs at a time."""
        for q0 in range(0, len(self.q), self.qc):
            q1 = min(q0 + self.qc, len(self.q))
            for g0 in range(0, len(self.g), self.gc):
                g1 = min(g0 + self.gc, len(self.g))
                d = block_distances(self.q[q0:q1], self.g[g0:g1], self.distance,
                                    None if self.q_sq is None else self.q_sq[q0:q1],
                                    None if self.g_sq is None else self.g_sq[g0:g1])
                same = self.q_lab[q0:q1, None] == self.g_lab[None, g0:g1]
                pair = self.q_key[q0:q1, None] != self.g_key[None, g0:g1]
                if self.q_seq is not None:
                    qs = self.q_seq[q0:q1, None]
                    pair &= (qs != self.g_seq[None, g0:g1]) | (qs < 0)
                yield d[same & pair], d[pair.logical_and_(same.logical_not_())]


class _Bin:
    """A histogram bin, nested: the path of (low edge, width, bin number) from the whole range down to it.

    Membership is computed by the same float formula in every pass, so a value lands in the same bin each time.
    A bin's own range ``[low, low + width)`` is split into `_BINS` children when it is histogrammed.
    """

    def __init__(self, path: tuple[tuple[float, float, int], ...], low: float, width: float):
        self.path, self.low, self.width = path, low, width

    @staticmethod
    def index(values: Tensor, low: float, width: float) -> Tensor:
        return ((values - low) / width).floor_().clamp_(0, _BINS - 1).long()

    def split(self, values: Tensor) -> tuple[Tensor, int]:
        """(the values inside this bin, how many values lie in earlier bins)."""
        inside, before = values, 0
        for low, width, b in self.path:
            idx = self.index(inside, low, width)
            before += int((idx < b).sum())
            inside = inside[idx == b]
        return inside, before

    def children(self, inside: Tensor) -> Tensor:
        """Child-bin numbers (0.._BINS-1) of values inside this bin."""
        return self.index(inside, self.low, self.width / _BINS)

    def child(self, b: int) -> "_Bin":
        width = self.width / _BINS
        return _Bin(self.path + ((self.low, width, b),), self.low + b * width, width)


class _Histogram:
    """Counts of a bin's children over one pass, the values before the bin, and the bin's min and max."""

    def __init__(self, node: _Bin):
        self.node, self.counts, self.before = node, torch.zeros(_BINS, dtype=torch.long), 0
        self.min, self.max = float("inf"), float("-inf")

    def add(self, values: Tensor) -> None:
        inside, before = self.node.split(values)
        self.before += before
        if len(inside):
            idx = self.node.children(inside)
            if len(idx) * 8 < _BINS:  # small blocks: no pass over the whole histogram
                self.counts.index_add_(0, idx, torch.ones_like(idx))
            else:
                self.counts += torch.bincount(idx, minlength=_BINS)
            self.min, self.max = min(self.min, float(inside.min())), max(self.max, float(inside.max()))

    def locate(self, rank: int) -> int:
        """The child bin that holds the 0-based ``rank`` (counted over all values)."""
        cumulative = self.counts.cumsum(0) + self.before
        return min(int(torch.searchsorted(cumulative, torch.tensor(rank), right=True)), _BINS - 1)


class _Kept:
    """The values of one bin, sorted, and how many values lie before it (one pass)."""

    def __init__(self, node: _Bin):
        self.node, self.parts, self.before = node, [], 0

    def add(self, values: Tensor) -> None:
        inside, before = self.node.split(values)
        self.before += before
        self.parts.append(inside)

    def value(self, rank: int) -> float:
        values = torch.sort(torch.cat(self.parts)).values if not isinstance(self.parts, Tensor) else self.parts
        self.parts = values
        if not 0 <= rank - self.before < len(values):
            raise RuntimeError(f"fnmr_at_fmr: rank {rank} is not in its bin; distances differed between passes")
        return float(values[rank - self.before])


def _order_statistics(pairs: "_Pairs", root: _Histogram, ranks: list[int]) -> dict[int, float]:
    """Exact values of the given 0-based ranks of the negative distances, from the pass-1 histogram ``root``."""
    value: dict[int, float] = {}
    pending = {r: root for r in ranks}  # rank -> histogram of a bin that holds it
    while pending:
        for r, hist in list(pending.items()):
            if hist.min == hist.max:  # every value of the bin is the same (bins finer than float resolution)
                value[r] = hist.min
                del pending[r]
        if not pending:
            break
        jobs: dict[tuple, _Histogram | _Kept] = {}
        wanted: dict[int, tuple] = {}
        for r, hist in pending.items():
            b = hist.locate(r)
            node = hist.node.child(b)
            wanted[r] = node.path
            if node.path not in jobs:
                small = int(hist.counts[b]) <= _MAX_KEPT or len(node.path) >= 8
                jobs[node.path] = _Kept(node) if small else _Histogram(node)
        for _, neg in pairs.blocks():
            for job in jobs.values():
                job.add(neg)
        next_pending = {}
        for r, path in wanted.items():
            job = jobs[path]
            if isinstance(job, _Kept):
                value[r] = job.value(r)
            else:
                next_pending[r] = job
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
    Memory: one (query_chunk_size x gallery_chunk_size) block, the positive distances and a histogram.
    """
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
    seq = None if sequences is None else factorize_sequences(sequences)
    pairs = _Pairs(emb, labels_t, q_flag, g_flag, seq, distance, int(query_chunk_size), int(gallery_chunk_size))

    # pass 1: positives, and a histogram of the negatives over a range known to hold them all
    low, high = pairs.range()
    span = max(high - low, 1e-6) * (1 + 1e-6)
    root = _Histogram(_Bin((), low - 1e-7 * span, span))
    positives = []
    for pos, neg in pairs.blocks():
        positives.append(pos)
        root.add(neg)
    pos = torch.cat(positives) if positives else torch.empty(0)
    n_neg = int(root.counts.sum())
    if len(pos) == 0 or n_neg == 0:
        return {f: None for f in fmr_vals}

    positions = {f: f * (n_neg - 1) for f in fmr_vals}
    ranks = sorted({int(p) for p in positions.values()} | {min(int(p) + 1, n_neg - 1) for p in positions.values()})
    value = _order_statistics(pairs, root, ranks)  # pass 2 (more only for bins too full to keep)
    out: dict[float, float | None] = {}
    for f, p in positions.items():
        lo, hi = int(p), min(int(p) + 1, n_neg - 1)
        threshold = value[lo] + (p - lo) * (value[hi] - value[lo])
        out[f] = float((pos > threshold).double().mean())
    return out
