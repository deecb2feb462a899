"""Base classes of the triplet miners: the ``miner(features, labels) -> (anchors, positives, negatives)`` contract."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lookalike.errors import ArgumentError

__all__ = ["TripletMiner", "InBatchTripletMiner", "check_batch", "label_masks"]


def check_batch(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Validate a (batch, dim) features tensor and its (batch,) labels; labels come back on the features' device."""
    if not isinstance(features, Tensor) or features.ndim != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ArgumentError(f"miner: features must be a 2-D tensor (batch, dim); got {shape}; the extractor must "
                            "return one embedding vector per image")
    labels = torch.as_tensor(labels, device=features.device)
    if labels.ndim != 1 or len(labels) != len(features):
        raise ArgumentError(
            f"miner: labels must be a 1-D tensor with one label per row of features ({len(features)}); got shape "
            f"{tuple(labels.shape)}"
        )
    return features, labels


def label_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(positive, negative) boolean (B, B) masks: same label and not itself; different label."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


class TripletMiner(nn.Module):
    """Forms triplets from a batch: ``forward(features, labels) -> (anchors, positives, negatives)``, each (n, dim).

    The returned tensors are gathered from ``features`` (or computed from them), so gradients flow back.
    """

    def forward(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # pragma: no cover
        raise NotImplementedError


class InBatchTripletMiner(TripletMiner):
    """A miner whose triplets are batch items: ``mine`` gives their indices, ``forward`` gathers the features."""

    def mine(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # pragma: no cover
        """Index tensors (anchor, positive, negative) into the batch, int64, in a deterministic order."""
        raise NotImplementedError

    def forward(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features, labels = check_batch(features, labels)
        ia, ip, ineg = self.mine(features, labels)
        return features[ia], features[ip], features[ineg]
