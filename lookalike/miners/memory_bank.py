"""Hard triplet mining over the current batch plus a ring buffer of recent batches' embeddings (MoCo-style)."""

from __future__ import annotations

import torch
from torch import Tensor

from lookalike.errors import ArgumentError
from lookalike.miners.base import TripletMiner, check_batch
from lookalike.miners.distances import pairwise_euclidean

__all__ = ["MemoryBankMiner"]


class MemoryBankMiner(TripletMiner):
    """Anchors from the current batch; positives and negatives from the current batch plus a memory bank.

    The bank is a fixed-size ring buffer of the detached embeddings and labels of the latest
    ``bank_size_in_batches`` batches: its capacity is ``bank_size_in_batches * B`` rows, with B the size of
    the first batch seen (it is allocated then, on the features' device and dtype). Each ``forward`` first
    mines, then writes the current batch into the bank (overwriting the oldest rows), so a batch is never
    mined against its own copy. Bank rows carry no gradient; current-batch rows do.

    Mining: over the candidates (current batch and the filled bank rows), per anchor the ``tri_expand_k``
    hardest positives (farthest, never the anchor itself) and hardest negatives (nearest); the j-th hardest
    positive pairs with the j-th hardest negative, giving up to ``tri_expand_k`` triplets per anchor (fewer
    when the anchor has fewer positives or negatives). An empty bank gives plain batch-hard mining
    (``tri_expand_k=1``). ``mine`` returns indices into ``torch.cat([features, bank_features])``.

    Under DDP each rank keeps its own bank. ``reset()`` empties the bank (e.g. between runs).
    """

    def __init__(self, bank_size_in_batches: int, tri_expand_k: int = 1) -> None:
        super().__init__()
        if bank_size_in_batches < 0:
            raise ArgumentError(f"MemoryBankMiner: bank_size_in_batches must be >= 0 (0 = no bank); got "
                                f"{bank_size_in_batches} (criterion.args.miner.args.bank_size_in_batches in a config)")
        if tri_expand_k < 1:
            raise ArgumentError(f"MemoryBankMiner: tri_expand_k must be >= 1; got {tri_expand_k} "
                                "(criterion.args.miner.args.tri_expand_k in a config)")
        self.bank_size_in_batches = int(bank_size_in_batches)
        self.tri_expand_k = int(tri_expand_k)
        self.register_buffer("bank_features", torch.zeros(0, 0), persistent=False)
        self.register_buffer("bank_labels", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("bank_filled", torch.zeros(0, dtype=torch.bool), persistent=False)
        self._allocated = False
        self._next = 0  # ring-buffer write position

    @property
    def capacity(self) -> int:
        return len(self.bank_filled)

    @property
    def n_filled(self) -> int:
        return int(self.bank_filled.sum())

    def reset(self) -> None:
        """Empty the bank (its capacity is kept)."""
        self.bank_filled.zero_()
        self._next = 0

    def _allocate(self, features: Tensor) -> None:
        capacity = self.bank_size_in_batches * len(features)
        self.bank_features = features.new_zeros(capacity, features.shape[1])
        self.bank_labels = torch.zeros(capacity, dtype=torch.long, device=features.device)
        self.bank_filled = torch.zeros(capacity, dtype=torch.bool, device=features.device)
        self._allocated = True

    def _bank(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not self._allocated:
            self._allocate(features)
        if self.capacity and self.bank_features.shape[1] != features.shape[1]:
            raise ArgumentError(
                f"MemoryBankMiner: features have dim {features.shape[1]} but the memory bank holds dim "
                f"{self.bank_features.shape[1]}; "
                "build a new MemoryBankMiner for a different embedding size"
            )
        if self.bank_features.device != features.device:  # keep the bank where the model is
            self.bank_features = self.bank_features.to(features.device)
            self.bank_labels = self.bank_labels.to(features.device)
            self.bank_filled = self.bank_filled.to(features.device)
        return self.bank_features.to(features.dtype), self.bank_labels, self.bank_filled

    @torch.no_grad()
    def push(self, features: Tensor, labels: Tensor) -> None:
        """Write a batch into the ring buffer, overwriting the oldest rows (a batch larger than the bank keeps its tail)."""
        features, labels = check_batch(features, labels)
        self._bank(features)
        if self.capacity == 0:
            return
        features, labels = features[-self.capacity :], labels[-self.capacity :]
        slots = (self._next + torch.arange(len(features), device=self.bank_filled.device)) % self.capacity
        self.bank_features[slots] = features.detach().to(self.bank_features)
        self.bank_labels[slots] = labels.to(self.bank_labels)
        self.bank_filled[slots] = True
        self._next = (self._next + len(features)) % self.capacity

    @torch.no_grad()
    def mine(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(anchor, positive, negative) indices; anchors index the batch, the others ``cat([features, bank])``."""
        features, labels = check_batch(features, labels)
        bank_features, bank_labels, bank_filled = self._bank(features)
        n, device = len(features), features.device
        candidates = torch.cat([features.detach(), bank_features])
        candidate_labels = torch.cat([labels.long(), bank_labels])
        available = torch.cat([torch.ones(n, dtype=torch.bool, device=device), bank_filled])
        dist = pairwise_euclidean(features.detach(), candidates)
        same = labels.long()[:, None] == candidate_labels[None, :]
        not_self = torch.ones_like(same)
        not_self[:, :n] = ~torch.eye(n, dtype=torch.bool, device=device)
        pos = same & available[None, :] & not_self
        neg = ~same & available[None, :]
        k = min(self.tri_expand_k, len(candidates))
        pos_idx = dist.masked_fill(~pos, -torch.inf).sort(dim=1, descending=True, stable=True).indices[:, :k]
        neg_idx = dist.masked_fill(~neg, torch.inf).sort(dim=1, stable=True).indices[:, :k]
        n_pairs = torch.minimum(pos.sum(1), neg.sum(1)).clamp_max(k)
        anchors, j = (torch.arange(k, device=device)[None, :] < n_pairs[:, None]).nonzero(as_tuple=True)
        return anchors, pos_idx[anchors, j], neg_idx[anchors, j]

    def forward(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features, labels = check_batch(features, labels)
        ia, ip, ineg = self.mine(features, labels)
        bank_features, _, _ = self._bank(features)
        candidates = torch.cat([features, bank_features])
        triplets = features[ia], candidates[ip], candidates[ineg]
        self.push(features, labels)
        return triplets
