"""Every (query, gallery) pair of an embedded dataset, streamed block by block with fast screening keys and
their error bound: the pair pass FNMR@FMR (`lookalike.metrics.fnmr`) needs, built on the retrieval layer's own
canonical distances, exclusion rule and screening bounds."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from lookalike.retrieval.base import Exclusion
from lookalike.retrieval.bounds import fast_norms, fp32_matmul_is_ieee, inverse_norms, pair_screening_error
from lookalike.retrieval.distances import pair_distances, row_sq_norms

__all__ = ["PairStream"]


class PairStream:
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
        q_norm, g_norm = fast_norms(self.q), fast_norms(self.g)
        self.qs, self.gs = self.q, self.g  # screening rows
        self.q_sq = self.g_sq = self.q_sq_canonical = None
        if distance == "cosine":
            self.qs = self.q * inverse_norms(q_norm)[:, None]
            self.gs = self.qs if self.g is self.q else self.g * inverse_norms(g_norm)[:, None]  # one copy when shared
            self.q_sq_canonical = row_sq_norms(self.q)
        elif distance == "euclidean":
            self.q_sq, self.g_sq = q_norm.square().float(), g_norm.square().float()
        q_max = float(q_norm.max()) * (1 + 1e-12) if len(q_norm) else 0.0
        g_max = float(g_norm.max()) * (1 + 1e-12) if len(g_norm) else 0.0
        self.err = pair_screening_error(distance, embeddings.shape[1], q_max, g_max, fp32_matmul_is_ieee())
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
        self.q_lab, self.g_labels = labels[q_idx], labels[g_idx]
        self.g_order = torch.argsort(self.g_labels, stable=True)
        self.g_lab_sorted = self.g_labels[self.g_order]
        self.seq = None
        if sequences is not None and bool((sequences >= 0).any()):
            self.seq = (sequences[q_idx], sequences[g_idx])
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

    def negative_count(self) -> int:
        """How many negative pairs there are (every pair minus the positives and the excluded different-label
        pairs: only same-sequence pairs can be excluded and have different labels), from the labels alone."""
        q_lab, g_lab = self.q_lab, self.g_lab_sorted
        same = torch.searchsorted(g_lab, q_lab, right=True) - torch.searchsorted(g_lab, q_lab)
        total = len(q_lab) * len(g_lab) - int(same.sum())
        if self.seq is None:
            return total
        q_seq, g_seq = self.seq
        uniq, codes = torch.unique(torch.cat([q_lab, self.g_labels]), return_inverse=True)
        q_code, g_code = codes[: len(q_lab)], codes[len(q_lab):]
        n_lab = len(uniq)
        g_in = g_seq >= 0
        seq_count = torch.bincount(g_seq[g_in], minlength=int(max(int(q_seq.max()), int(g_seq.max())) + 1))
        pair_keys, pair_counts = torch.unique(g_seq[g_in] * n_lab + g_code[g_in], return_counts=True)
        q_in = q_seq >= 0
        qk = q_seq[q_in] * n_lab + q_code[q_in]
        same_seq = seq_count[q_seq[q_in]]
        if len(pair_keys):
            pos = torch.searchsorted(pair_keys, qk).clamp(max=len(pair_keys) - 1)
            same_seq_label = torch.where(pair_keys[pos] == qk, pair_counts[pos], 0)
        else:
            same_seq_label = torch.zeros_like(qk)
        return total - int((same_seq - same_seq_label).sum())

    def blocks(self, query_ranges: list[tuple[int, int]] | None = None
               ) -> Iterator[tuple[int, int, Tensor, tuple[Tensor, Tensor, Tensor]]]:
        """``(q0, g0, keys, positives)`` of one block at a time: ``keys`` are the fast keys of the negative pairs,
        NaN where a pair is positive or excluded; ``positives`` = (query positions, gallery positions, fast keys)
        of the block's positive pairs. ``query_ranges``: only these ``(q0, q1)`` query rows (default: all)."""
        if query_ranges is None:
            query_ranges = [(q0, min(q0 + self.qc, len(self.q))) for q0 in range(0, len(self.q), self.qc)]
        for q0, q1 in query_ranges:
            rows, cols = self.positives(q0, q1)
            chunk_exclusion = None if self.exclusion.empty else self.exclusion.for_queries(torch.arange(q0, q1))
            for g0 in range(0, len(self.g), self.gc):
                g1 = min(g0 + self.gc, len(self.g))
                keys = self.fast_keys(q0, q1, g0, g1)
                a, b = torch.searchsorted(cols, torch.tensor([g0, g1])).tolist()
                r, c = rows[a:b], cols[a:b]
                positive_keys = keys[r - q0, c - g0]
                keys[r - q0, c - g0] = math.nan
                if chunk_exclusion is not None:
                    chunk_exclusion.apply(keys, g0, g1, math.nan)
                yield q0, g0, keys, (r, c, positive_keys)

    def canonical_of(self, q0: int, g0: int, mask: Tensor) -> Tensor:
        """Canonical keys (float64) of the block's pairs where ``mask`` is True."""
        rows, cols = mask.nonzero(as_tuple=True)
        return self.canonical_keys(rows + q0, cols + g0)
