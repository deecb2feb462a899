"""FNMR@FMR over all query/gallery pairs, streamed in blocks: never the Nq x Ng matrix, never per-query lists.

Positive pairs share a label, negative pairs do not; the query itself and its same-sequence gallery items are
not pairs. For each FMR value f the threshold is the f-quantile of the negative distances (linear
interpolation between order statistics, as numpy.percentile), and FNMR is the fraction of positive distances
above it. Positives are few (about Nq x items per label) and are kept; the quantile of the negatives is found
exactly in three streamed passes: their range, a histogram, then only the negatives inside the bins that
hold the needed order statistics.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from lookalike.errors import LookalikeError

__all__ = ["fnmr_at_fmr", "block_distances"]

_BINS = 1 << 16


def block_distances(queries: Tensor, gallery: Tensor, distance: str) -> Tensor:
    """Distances ("smaller is closer") of every query to every gallery item of one block."""
    if distance == "cosine":
        q = torch.nn.functional.normalize(queries, dim=1)
        g = torch.nn.functional.normalize(gallery, dim=1)
        return (1.0 - q @ g.T).clamp_(min=0.0)
    if distance == "inner_product":
        return -(queries @ gallery.T)
    if distance == "euclidean":
        return torch.cdist(queries, gallery)
    raise LookalikeError(f"unknown distance {distance!r}; use cosine, inner_product or euclidean")


def _blocks(q_emb, g_emb, q_lab, g_lab, q_key, g_key, q_seq, g_seq, distance, chunk) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(distances, is_positive, is_pair) per block of (chunk x chunk) pairs."""
    for q0 in range(0, len(q_emb), chunk):
        q1 = min(q0 + chunk, len(q_emb))
        for g0 in range(0, len(g_emb), chunk):
            g1 = min(g0 + chunk, len(g_emb))
            d = block_distances(q_emb[q0:q1], g_emb[g0:g1], distance)
            same_label = q_lab[q0:q1, None] == g_lab[None, g0:g1]
            pair = q_key[q0:q1, None] != g_key[None, g0:g1]
            if q_seq is not None:
                pair &= ~((q_seq[q0:q1, None] == g_seq[None, g0:g1]) & (q_seq[q0:q1, None] >= 0))
            yield d, same_label, pair


def fnmr_at_fmr(
    embeddings: Tensor,
    labels: Tensor,
    is_query: Tensor,
    is_gallery: Tensor,
    fmr_vals: Iterable[float],
    *,
    sequences: Tensor | None = None,
    distance: str = "cosine",
    chunk_size: int = 4096,
) -> dict[float, float | None]:
    """FNMR at each FMR value in (0, 1]; None where there is no positive or no negative pair."""
    fmr_vals = [float(f) for f in fmr_vals]
    if any(not 0.0 < f <= 1.0 for f in fmr_vals):
        raise LookalikeError(f"fmr_vals are fractions in (0, 1] (e.g. 0.001 for 0.1%), got {fmr_vals}")
    if not fmr_vals:
        return {}
    emb = embeddings.float()
    q_idx = is_query.nonzero().squeeze(1)
    g_idx = is_gallery.nonzero().squeeze(1)
    args = (emb[q_idx], emb[g_idx], labels[q_idx], labels[g_idx], q_idx, g_idx,
            None if sequences is None else sequences[q_idx], None if sequences is None else sequences[g_idx],
            distance, chunk_size)

    positives, n_neg, lo, hi = [], 0, torch.inf, -torch.inf
    for d, same, pair in _blocks(*args):
        positives.append(d[same & pair])
        neg = d[~same & pair]
        if len(neg):
            n_neg += len(neg)
            lo, hi = min(lo, float(neg.min())), max(hi, float(neg.max()))
    pos = torch.cat(positives) if positives else torch.empty(0)
    if len(pos) == 0 or n_neg == 0:
        return {f: None for f in fmr_vals}

    # order statistics (0-based ranks) needed by the linear-interpolation quantiles
    positions = {f: f * (n_neg - 1) for f in fmr_vals}
    ranks = sorted({int(p) for p in positions.values()} | {min(int(p) + 1, n_neg - 1) for p in positions.values()})
    width = (hi - lo) / _BINS if hi > lo else 1.0

    def bin_of(values: Tensor) -> Tensor:
        return ((values - lo) / width).long().clamp_(0, _BINS - 1)

    counts = torch.zeros(_BINS, dtype=torch.long)
    for d, same, pair in _blocks(*args):
        counts += torch.bincount(bin_of(d[~same & pair]), minlength=_BINS)
    cumulative = counts.cumsum(0)
    rank_bins = {r: int(torch.searchsorted(cumulative, torch.tensor(r), right=True)) for r in ranks}
    wanted = torch.zeros(_BINS, dtype=torch.bool)
    wanted[list(set(rank_bins.values()))] = True
    collected = []
    for d, same, pair in _blocks(*args):
        neg = d[~same & pair]
        collected.append(neg[wanted[bin_of(neg)]])
    in_bins = torch.sort(torch.cat(collected)).values
    # rank r sits at position (r - negatives in earlier bins) among the collected values of its bin and the bins
    # before it that were collected; collect offsets per wanted bin
    wanted_bins = sorted(set(rank_bins.values()))
    before = {b: int(cumulative[b - 1]) if b > 0 else 0 for b in wanted_bins}
    offset, start = {}, 0
    for b in wanted_bins:
        offset[b] = start
        start += int(counts[b])
    value = {r: float(in_bins[offset[rank_bins[r]] + r - before[rank_bins[r]]]) for r in ranks}

    out: dict[float, float | None] = {}
    for f, p in positions.items():
        low, high = int(p), min(int(p) + 1, n_neg - 1)
        threshold = value[low] + (p - low) * (value[high] - value[low])
        out[f] = float((pos > threshold).double().mean())
    return out
