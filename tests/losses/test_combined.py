"""The weighted sum of criteria: equals its terms summed by hand, and builds from a config block."""

from __future__ import annotations

import pytest
import torch

from lookalike.errors import ConfigError, LookalikeError
from lookalike.losses import ArcFaceLoss, TripletLossWithMiner
from lookalike.losses.combined import WeightedSumLoss


def test_equals_the_weighted_terms_and_their_gradients():
    torch.manual_seed(0)
    features = torch.randn(12, 8, requires_grad=True)
    labels = torch.arange(12) % 4
    arcface, triplet = ArcFaceLoss(8, 4, m=0.3, s=30.0), TripletLossWithMiner(margin=0.2)
    loss = WeightedSumLoss([arcface, triplet], [1.0, 0.5])
    value = loss(features, labels)
    by_hand = arcface(features, labels) + 0.5 * triplet(features, labels)
    assert torch.allclose(value, by_hand)
    (grad,) = torch.autograd.grad(value, features)
    (expected,) = torch.autograd.grad(by_hand, features)
    assert torch.allclose(grad, expected)
    assert set(loss.last_logs) >= {"loss", "0/accuracy", "1/n_triplets"}
    assert loss.last_logs["loss"] == pytest.approx(float(value.detach()))
    assert len(list(loss.parameters())) == 1  # ArcFace's class centres are trained with the extractor
    with pytest.raises(LookalikeError, match="as many weights"):
        WeightedSumLoss([arcface, triplet], [1.0])


def test_builds_from_a_config_block_with_each_term_sized_from_the_data():
    from lookalike.pipelines.builders import build_criterion

    block = {"name": "sum", "args": {"criteria": [{"name": "arcface", "args": {"m": 0.3, "s": 30.0}},
                                                  {"name": "triplet_with_miner", "args": {"miner": "hard_triplets"}}],
                                     "weights": [1.0, 0.5]}}
    loss = build_criterion({"criterion": block}, feat_dim=16, labels=[5, 7, 7, 9], label2category=None)
    assert isinstance(loss, WeightedSumLoss) and loss.criteria[0].weight.shape == (3, 16)
    bad = {"name": "sum", "args": {"criteria": [{"name": "arcfac", "args": {}}]}}
    with pytest.raises(ConfigError, match=r"criteria\[0\]"):
        build_criterion({"criterion": bad}, feat_dim=16, labels=[5, 7], label2category=None)
    with pytest.raises(ConfigError, match="list of criterion blocks"):
        build_criterion({"criterion": {"name": "sum", "args": {}}}, feat_dim=16, labels=[5, 7], label2category=None)


def test_passes_the_training_progress_to_the_terms_that_follow_it():
    arcface = ArcFaceLoss(8, 4, m=0.6, s=30.0, m_start=0.2, m_ramp=[0, 4])
    loss = WeightedSumLoss([arcface, TripletLossWithMiner(margin=0.2)])
    loss.set_epoch(2.0)
    assert arcface.margin == pytest.approx(0.4)
