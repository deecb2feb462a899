"""Hard mining on label centroids: one triplet per label of the batch."""

from __future__ import annotations

import torch
from torch import Tensor

from lookalike.miners.base import TripletMiner, check_batch
from lookalike.miners.distances import pairwise_euclidean

__all__ = ["HardClusterMiner"]


class HardClusterMiner(TripletMiner):
    """One triplet per distinct label l of the batch, built on label centroids (means of the label's features):

    - anchor: the centroid of l;
    - positive: the item of label l farthest from that centroid;
    - negative: the centroid of another label nearest to the centroid of l.

    The loss thus asks the farthest item of every cluster to be closer to its centre than the nearest other
    centre is. Anchors and negatives are centroids, not batch items, so ``forward`` returns features (with
    gradients through the centroids) and there is no ``mine``; ``mine_clusters`` gives the choices as indices.
    A label with one item gets a zero positive distance; a batch with a single label gives no triplet.
    Triplets come in increasing label order.
    """

    @staticmethod
    def _centroids(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        unique, inverse = labels.unique(sorted=True, return_inverse=True)
        one_hot = torch.zeros(len(unique), len(labels), dtype=features.dtype, device=features.device)
        one_hot[inverse, torch.arange(len(labels), device=features.device)] = 1.0
        centroids = (one_hot @ features) / one_hot.sum(1, keepdim=True)
        return unique, inverse, centroids

    @torch.no_grad()
    def mine_clusters(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(labels of the batch sorted, index of each label's farthest item, position of its nearest other label).

        All three are empty when the batch holds fewer than 2 labels.
        """
        features, labels = check_batch(features, labels)
        unique, inverse, centroids = self._centroids(features.detach(), labels)
        if len(unique) < 2:
            empty = torch.zeros(0, dtype=torch.long, device=features.device)
            return unique[:0], empty, empty
        to_own = (features.detach() - centroids[inverse]).pow(2).sum(1)
        member = inverse[None, :] == torch.arange(len(unique), device=features.device)[:, None]
        farthest = to_own[None, :].expand_as(member).masked_fill(~member, -torch.inf).argmax(1)
        between = pairwise_euclidean(centroids)
        between.fill_diagonal_(torch.inf)
        nearest = between.argmin(1)
        return unique, farthest, nearest

    def forward(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features, labels = check_batch(features, labels)
        unique, farthest, nearest = self.mine_clusters(features, labels)
        if len(unique) == 0:
            empty = features[:0]
            return empty, empty, empty
        _, _, centroids = self._centroids(features, labels)
        return centroids, features[farthest], centroids[nearest]
