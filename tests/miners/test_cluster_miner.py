"""HardClusterMiner against centroids, farthest items and nearest centroids computed by hand."""

from __future__ import annotations

import torch

from lookalike.miners import HardClusterMiner


def test_hard_cluster_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(13, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([5, 2, 2, 9, 5, 9, 9, 2, 5, 5, 7, 9, 2])  # label 7 has a single item
    unique = sorted(set(labels.tolist()))
    centroids = {l: features.detach()[labels == l].mean(0) for l in unique}
    exp_pos, exp_neg = [], []
    for l in unique:
        members = [i for i in range(13) if labels[i] == l]
        exp_pos.append(max(members, key=lambda i: float((features.detach()[i] - centroids[l]).norm())))
        others = [m for m in unique if m != l]
        exp_neg.append(min(others, key=lambda m: float((centroids[m] - centroids[l]).norm())))

    miner = HardClusterMiner()
    got_labels, farthest, nearest = miner.mine_clusters(features, labels)
    assert got_labels.tolist() == unique
    assert farthest.tolist() == exp_pos
    assert [unique[i] for i in nearest.tolist()] == exp_neg

    anchors, positives, negatives = miner(features, labels)
    assert torch.allclose(anchors, torch.stack([centroids[l] for l in unique]))
    assert torch.equal(positives, features[exp_pos])
    assert torch.allclose(negatives, torch.stack([centroids[m] for m in exp_neg]))
    (anchors.sum() + negatives.sum()).backward()  # centroids carry gradient to every item
    assert torch.all(features.grad != 0)


def test_hard_cluster_single_label_gives_no_triplet():
    features = torch.randn(5, 3, requires_grad=True)
    anchors, positives, negatives = HardClusterMiner()(features, torch.zeros(5, dtype=torch.long))
    assert anchors.shape == positives.shape == negatives.shape == (0, 3)
