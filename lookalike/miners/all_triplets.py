"""All valid triplets of a batch, optionally capped by uniform sampling without replacement."""

from __future__ import annotations

import torch
from torch import Tensor

from lookalike.errors import ArgumentError
from lookalike.miners.base import InBatchTripletMiner, check_batch, label_masks

__all__ = ["AllTripletsMiner"]


class AllTripletsMiner(InBatchTripletMiner):
    """Every (a, p, n) with ``label[a] == label[p]``, ``a != p`` and ``label[n] != label[a]``.

    ``mine`` returns them sorted lexicographically by (a, p, n). With ``max_output_triplets`` set and more
    triplets than that, a uniform random subset of that size (without replacement, drawn with a torch
    generator seeded by ``seed``) is returned, still sorted. Memory is O(n_triplets returned + B^2): the
    triplets are decoded from their rank in the lexicographic order, never from a (B, B, B) mask.
    """

    def __init__(self, max_output_triplets: int | None = None, *, seed: int = 0) -> None:
        super().__init__()
        if max_output_triplets is not None and max_output_triplets < 1:
            raise ArgumentError(f"AllTripletsMiner: max_output_triplets must be None (null: no cap) or >= 1; got "
                                f"{max_output_triplets} (criterion.args.miner.args.max_output_triplets in a config)")
        self.max_output_triplets = max_output_triplets
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def mine(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features, labels = check_batch(features, labels)
        device = features.device
        pos, neg = label_masks(labels)
        pair_anchor, pair_positive = pos.nonzero(as_tuple=True)  # row-major: sorted by (a, p)
        neg_count = neg.sum(1)
        neg_start = neg_count.cumsum(0) - neg_count
        neg_items = neg.nonzero(as_tuple=True)[1]  # negatives of anchor a: neg_items[neg_start[a]:][:neg_count[a]]
        per_pair = neg_count[pair_anchor]
        pair_end = per_pair.cumsum(0)
        total = int(pair_end[-1]) if len(pair_end) else 0
        if self.max_output_triplets is not None and total > self.max_output_triplets:
            flat = torch.randperm(total, generator=self.generator)[: self.max_output_triplets].sort().values.to(device)
        else:
            flat = torch.arange(total, device=device)
        pair = torch.searchsorted(pair_end, flat, right=True)
        local = flat - (pair_end - per_pair)[pair]
        anchors = pair_anchor[pair]
        return anchors, pair_positive[pair], neg_items[neg_start[anchors] + local]
