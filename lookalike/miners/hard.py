"""Hard and N-hard in-batch triplet mining by euclidean distance."""

from __future__ import annotations

import torch
from torch import Tensor

from lookalike.errors import ArgumentError
from lookalike.miners.base import InBatchTripletMiner, check_batch, label_masks
from lookalike.miners.distances import pairwise_euclidean

__all__ = ["HardTripletsMiner", "NHardTripletsMiner"]


class HardTripletsMiner(InBatchTripletMiner):
    """Per anchor one triplet: its farthest positive and its nearest negative (batch-hard mining).

    Anchors without a positive or without a negative give no triplet; the rest come in increasing anchor
    order. Ties go to the lowest index.
    """

    @torch.no_grad()
    def mine(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features, labels = check_batch(features, labels)
        dist = pairwise_euclidean(features.detach())
        pos, neg = label_masks(labels)
        hardest_pos = dist.masked_fill(~pos, -torch.inf).argmax(1)
        hardest_neg = dist.masked_fill(~neg, torch.inf).argmin(1)
        anchors = (pos.any(1) & neg.any(1)).nonzero(as_tuple=True)[0]
        return anchors, hardest_pos[anchors], hardest_neg[anchors]


def _rank_range(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    start, end = (0, value) if isinstance(value, int) else tuple(value)
    if not 0 <= start < end:
        raise ArgumentError(f"NHardTripletsMiner: {name} must be an int n >= 1 or a [start, end] pair with "
                            f"0 <= start < end; got {value!r} (criterion.args.miner.args.{name} in a config)")
    return int(start), int(end)


class NHardTripletsMiner(InBatchTripletMiner):
    """Per anchor, every combination of its positives ranked ``n_positive`` and negatives ranked ``n_negative``.

    Ranks are 0-based, hardest first (positives by decreasing distance, negatives by increasing distance),
    and a range ``(start, end)`` excludes ``end``; an int ``n`` means ``(0, n)``. An anchor with fewer
    positives (negatives) than ``end`` uses the ranks it has, and none if it has fewer than ``start + 1``.
    ``n_positive=(0, 1), n_negative=(0, 1)`` is batch-hard mining. Order: anchor, positive rank, negative rank.
    """

    def __init__(
        self, n_positive: int | tuple[int, int] = (0, 1), n_negative: int | tuple[int, int] = (0, 1)
    ) -> None:
        super().__init__()
        self.n_positive = _rank_range(n_positive, "n_positive")
        self.n_negative = _rank_range(n_negative, "n_negative")

    @staticmethod
    def _ranked(dist: Tensor, mask: Tensor, ranks: tuple[int, int], descending: bool) -> tuple[Tensor, Tensor]:
        """Indices of the items ranked ``ranks`` per row, (B, R), and which of them exist."""
        fill = -torch.inf if descending else torch.inf
        order = dist.masked_fill(~mask, fill).sort(dim=1, descending=descending, stable=True).indices
        chosen = order[:, ranks[0] : ranks[1]]
        rank = torch.arange(ranks[0], ranks[0] + chosen.shape[1], device=dist.device)
        return chosen, rank[None, :] < mask.sum(1, keepdim=True)

    @torch.no_grad()
    def mine(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features, labels = check_batch(features, labels)
        dist = pairwise_euclidean(features.detach())
        pos, neg = label_masks(labels)
        pos_idx, pos_ok = self._ranked(dist, pos, self.n_positive, descending=True)
        neg_idx, neg_ok = self._ranked(dist, neg, self.n_negative, descending=False)
        anchors, j, k = (pos_ok[:, :, None] & neg_ok[:, None, :]).nonzero(as_tuple=True)
        return anchors, pos_idx[anchors, j], neg_idx[anchors, k]
