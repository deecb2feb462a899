"""Triplet losses: soft margin and margin values, reductions, the mined criterion, logs, zero triplets."""

from __future__ import annotations

import math

import pytest
import torch

from lookalike.losses import TripletLoss, TripletLossWithMiner
from lookalike.miners import AllTripletsMiner, HardTripletsMiner, NHardTripletsMiner


def triplets(seed: int = 0, n: int = 9, dim: int = 6):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, dim, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))


def test_soft_margin_on_identical_points_is_ln2_with_finite_gradient():
    x = torch.randn(5, 3, requires_grad=True)
    loss = TripletLoss(margin=None)(x, x, x)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_soft_margin_values_and_stability():
    a = torch.zeros(2, 1, dtype=torch.float64)
    p = torch.tensor([[3.0], [1000.0]], dtype=torch.float64)
    n = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    values = TripletLoss(margin=None, reduction="none")(a, p, n)
    assert values[0].item() == pytest.approx(math.log1p(math.exp(2.0)))
    assert values[1].item() == pytest.approx(1000.0)  # no overflow of exp(1000)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("margin", [0.2, 1.0, 3.0])
def test_margin_matches_torch_triplet_margin_loss(margin, reduction):
    a, p, n = triplets()
    ours = TripletLoss(margin=margin, reduction=reduction)(a, p, n)
    reference = torch.nn.TripletMarginLoss(margin=margin, p=2, reduction=reduction)(a, p, n)
    assert torch.allclose(ours, reference, atol=1e-5)
    ours.sum().backward()
    grad_ours = a.grad.clone()
    a.grad = None
    reference.sum().backward()
    assert torch.allclose(grad_ours, a.grad, atol=1e-4)


def test_options_are_checked():
    with pytest.raises(ValueError, match="margin"):
        TripletLoss(margin=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        TripletLossWithMiner(reduction="max")
    with pytest.raises(ValueError, match="same shape"):
        TripletLoss()(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, 3))


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(12, 5, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    return features, labels


@pytest.mark.parametrize("margin", [0.2, None])
@pytest.mark.parametrize("miner", [None, AllTripletsMiner(), NHardTripletsMiner((0, 2), (0, 3))])
def test_with_miner_equals_manual_mine_then_loss(margin, miner):
    features, labels = batch()
    criterion = TripletLossWithMiner(margin=margin, miner=miner)
    assert isinstance(criterion.miner, type(miner) if miner is not None else HardTripletsMiner)
    loss = criterion(features, labels)
    loss.backward()
    grad = features.grad.clone()

    features.grad = None
    ia, ip, ineg = criterion.miner.mine(features, labels)
    a, p, n = features[ia], features[ip], features[ineg]
    manual = TripletLoss(margin=margin)(a, p, n)
    manual.backward()
    assert torch.allclose(loss, manual) and torch.allclose(grad, features.grad)
    assert grad.abs().sum() > 0

    d_ap, d_an = (a - p).norm(dim=1), (a - n).norm(dim=1)
    per = torch.relu(d_ap - d_an + margin) if margin is not None else torch.nn.functional.softplus(d_ap - d_an)
    logs = criterion.last_logs
    assert set(logs) == {"loss", "n_triplets", "active_triplets", "pos_dist", "neg_dist"}
    assert all(type(v) is float for v in logs.values())
    assert logs["n_triplets"] == len(ia)
    assert logs["loss"] == pytest.approx(per.mean().item())
    assert logs["active_triplets"] == pytest.approx((per > 0).double().mean().item())
    assert logs["pos_dist"] == pytest.approx(d_ap.mean().item())
    assert logs["neg_dist"] == pytest.approx(d_an.mean().item())


def test_with_miner_reductions():
    features, labels = batch(1)
    per = TripletLossWithMiner(reduction="none")(features, labels)
    assert per.shape == (12,)
    assert torch.allclose(TripletLossWithMiner(reduction="sum")(features, labels), per.sum())


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_zero_triplets_give_connected_zero_loss(reduction):
    features = torch.randn(6, 4, requires_grad=True)
    criterion = TripletLossWithMiner(reduction=reduction)
    loss = criterion(features, torch.zeros(6, dtype=torch.long))  # one label: no negatives
    assert loss.sum().item() == 0.0 and loss.requires_grad
    loss.sum().backward()
    assert features.grad is not None and torch.all(features.grad == 0)
    assert criterion.last_logs["n_triplets"] == 0.0


def test_need_logs_false_leaves_logs_empty():
    features, labels = batch()
    criterion = TripletLossWithMiner(need_logs=False)
    criterion(features, labels)
    assert criterion.last_logs == {}
