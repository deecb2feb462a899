"""ArcFace against a plain per-sample formula, its reductions, the category restriction, and learning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lookalike.errors import LookalikeError
from lookalike.losses import ArcFaceLoss, ArcFaceLossWithMLP


def brute_force(features, labels, weight, m, s, smoothing=0.0, allowed=None):
    """The textbook formula, one sample at a time."""
    losses = []
    for x, y in zip(features, labels):
        cos = [float(F.cosine_similarity(x, w, dim=0)) for w in weight]
        theta = math.acos(max(-1.0, min(1.0, cos[y])))
        target = math.cos(theta + m) if theta + m <= math.pi else cos[y] - m * math.sin(m)
        logits = [s * (target if j == y else c) for j, c in enumerate(cos)]
        classes = [j for j in range(len(cos)) if allowed is None or allowed[y][j]]
        log_z = math.log(sum(math.exp(logits[j]) for j in classes))
        nll = {j: log_z - logits[j] for j in classes}
        losses.append((1 - smoothing) * nll[y] + smoothing * sum(nll.values()) / len(classes))
    return sum(losses) / len(losses)


def test_matches_brute_force():
    torch.manual_seed(0)
    criterion = ArcFaceLoss(8, 5, m=0.4, s=10.0)
    features, labels = torch.randn(12, 8), torch.randint(0, 5, (12,))
    expected = brute_force(features, labels.tolist(), criterion.weight.detach(), 0.4, 10.0)
    assert float(criterion(features, labels).detach()) == pytest.approx(expected, rel=1e-5)


def test_theta_plus_margin_beyond_pi_matches_brute_force_and_has_finite_gradients():
    torch.manual_seed(4)
    criterion = ArcFaceLoss(4, 3, m=0.5, s=16.0)
    w = criterion.weight.detach()
    labels = torch.tensor([0, 1, 2, 0])
    # opposite to the own class (theta = pi), nearly opposite (theta + m > pi), exactly aligned (theta = 0)
    features = torch.stack([-w[0], -w[1] + 0.05 * w[2], w[2], -w[0] + 0.3 * w[1]]).requires_grad_(True)
    loss = criterion(features, labels)
    expected = brute_force(features.detach(), labels.tolist(), w, 0.5, 16.0)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(features.grad).all() and torch.isfinite(criterion.weight.grad).all()


def test_no_margin_unit_scale_is_softmax_cross_entropy():
    torch.manual_seed(1)
    criterion = ArcFaceLoss(6, 4, m=0.0, s=1.0)
    features, labels = torch.randn(10, 6), torch.randint(0, 4, (10,))
    expected = F.cross_entropy(criterion.logits(features), labels)
    assert torch.allclose(criterion(features, labels), expected, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_categories_and_label_smoothing_match_brute_force(smoothing):
    torch.manual_seed(2)
    label2category = {10: "a", 11: "a", 12: "b", 13: "b", 14: "b", 15: "c"}
    criterion = ArcFaceLoss(8, 6, m=0.3, s=8.0, label_smoothing=smoothing, label2category=label2category)
    labels = torch.tensor([10, 12, 14, 11, 13, 12, 15])
    features = torch.randn(7, 8, requires_grad=True)
    ids = sorted(label2category)
    allowed = [[label2category[ids[i]] == label2category[ids[j]] for j in range(6)] for i in range(6)]
    expected = brute_force(features.detach(), [ids.index(int(y)) for y in labels], criterion.weight.detach(), 0.3,
                           8.0, smoothing=smoothing, allowed=allowed)
    loss = criterion(features, labels)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()  # label 15 is alone in its category: zero loss, and -inf logits never give NaN gradients
    assert torch.isfinite(features.grad).all() and torch.isfinite(criterion.weight.grad).all()
    # every row of another category gets no gradient from a sample (its logit is masked out)
    criterion.weight.grad = None
    criterion(features[:1], labels[:1]).backward()
    assert criterion.weight.grad[2:].abs().sum() == 0 and criterion.weight.grad[:2].abs().sum() > 0


def test_category_restricted_accuracy():
    label2category = {0: "a", 1: "a", 2: "b"}
    criterion = ArcFaceLoss(3, 3, label2category=label2category)
    with torch.no_grad():
        criterion.weight.copy_(torch.eye(3))
    # nearest to label 2 overall, but label 2 is of another category: the restricted top-1 is label 0
    criterion(torch.tensor([[0.5, 0.1, 1.0]]), torch.tensor([0]))
    assert criterion.last_logs["accuracy"] == 1.0
    with pytest.raises(LookalikeError, match=r"no category for label\(s\) \[2\]"):
        ArcFaceLoss(3, 3, label2category={0: "a", 1: "a"}, labels=[0, 1, 2])


def test_head_runs_in_float32_under_autocast():
    torch.manual_seed(5)
    criterion = ArcFaceLoss(16, 8, s=64.0)
    features, labels = torch.randn(6, 16), torch.randint(0, 8, (6,))
    expected = criterion(features, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = criterion(features.bfloat16().float(), labels)
    assert got.dtype == torch.float32
    assert torch.allclose(got, criterion(features.bfloat16().float(), labels), atol=1e-6)
    assert torch.allclose(got, expected, rtol=0.05)


def test_any_label_ids_and_unknown_label():
    criterion = ArcFaceLoss.from_data(4, [7, 3, 3, 100])
    assert criterion.num_classes == 3 and criterion.class_index(torch.tensor([3, 7, 100])).tolist() == [0, 1, 2]
    with pytest.raises(LookalikeError, match=r"label\(s\) \[5\]"):
        criterion(torch.randn(1, 4), torch.tensor([5]))
    with pytest.raises(LookalikeError, match="num_classes"):
        ArcFaceLoss(4, 2, labels=[1, 2, 3])
    with pytest.raises(LookalikeError, match="margin"):
        ArcFaceLoss(4, 2, m=2.0)
    mlp = ArcFaceLossWithMLP.from_data(4, [5, 6, 5], mlp_features=(8, 3))
    assert mlp.in_features == 4 and mlp.weight.shape == (2, 3) and mlp(torch.randn(2, 4), torch.tensor([6, 5])) > 0


def test_state_dict_round_trip_keeps_label_mapping():
    source = ArcFaceLoss.from_data(4, [30, 10, 20], label2category={10: "x", 20: "y", 30: "x"})
    target = ArcFaceLoss.from_data(4, [30, 10, 20], label2category={10: "x", 20: "y", 30: "x"})
    target.load_state_dict(source.state_dict())
    features, labels = torch.randn(3, 4), torch.tensor([10, 20, 30])
    assert torch.equal(source(features, labels), target(features, labels))
    assert set(source.state_dict()) == {"weight", "label_ids", "class_category"}


def test_reductions_and_logs():
    torch.manual_seed(3)
    features, labels = torch.randn(5, 4), torch.randint(0, 3, (5,))
    per_sample = ArcFaceLoss(4, 3, reduction="none")
    total = ArcFaceLoss(4, 3, reduction="sum")
    total.load_state_dict(per_sample.state_dict())
    values = per_sample(features, labels)
    assert values.shape == (5,) and torch.allclose(values.sum(), total(features, labels))
    assert set(per_sample.last_logs) == {"loss", "accuracy"}


@pytest.mark.parametrize("cls", [ArcFaceLoss, ArcFaceLossWithMLP])
def test_learns_separable_data(cls):
    torch.manual_seed(0)
    centres = torch.randn(6, 16) * 3
    labels = torch.arange(120) % 6
    features = centres[labels] + 0.3 * torch.randn(120, 16)
    kwargs = {"mlp_features": (32,)} if cls is ArcFaceLossWithMLP else {}
    criterion = cls(16, 6, m=0.3, s=16.0, **kwargs)
    optimizer = torch.optim.Adam(criterion.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        loss = criterion(features, labels)
        first = float(loss.detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert criterion.last_logs["accuracy"] == 1.0 and float(loss.detach()) < first / 4


def test_mlp_variant_spells_out_every_argument():
    """Pipelines fill `labels` / `label2category` only when the signature names them (no **kwargs)."""
    import inspect

    base = set(inspect.signature(ArcFaceLoss).parameters)
    assert base <= set(inspect.signature(ArcFaceLossWithMLP).parameters)
    criterion = ArcFaceLossWithMLP(4, 2, mlp_features=[6], labels=[40, 50], label2category={40: "a", 50: "b"})
    criterion(torch.randn(2, 4), torch.tensor([50, 40]))
    assert criterion.last_logs["accuracy"] == 1.0  # each category holds one label: always right


def test_margin_warm_up_follows_the_epochs_and_equals_a_fixed_margin_at_each_point():
    torch.manual_seed(5)
    features, labels = torch.randn(9, 8), torch.randint(0, 4, (9,))
    ramped = ArcFaceLoss(8, 4, m=0.7, s=16.0, m_start=0.3, m_ramp=[1, 5])
    # before the ramp, a quarter of the way (epoch 2 of 1..5), at its end and after it
    for epoch, expected_m in [(0.0, 0.3), (1.0, 0.3), (2.0, 0.4), (3.5, 0.55), (5.0, 0.7), (11.2, 0.7)]:
        ramped.set_epoch(epoch)
        assert ramped.margin == pytest.approx(expected_m)
        expected = brute_force(features, labels.tolist(), ramped.weight.detach(), expected_m, 16.0)
        assert float(ramped(features, labels).detach()) == pytest.approx(expected, rel=1e-5)
        assert ramped.last_logs["margin"] == pytest.approx(expected_m)
    fixed = ArcFaceLoss(8, 4, m=0.7)
    fixed.set_epoch(0.0)
    fixed(features, labels)
    assert fixed.margin == 0.7 and "margin" not in fixed.last_logs


def test_margin_warm_up_uses_the_current_margin_beyond_pi():
    """Half-way through a 0.3 -> 0.7 ramp the margin is 0.5, also in the linear extension past theta + m = pi."""
    torch.manual_seed(4)
    criterion = ArcFaceLoss(4, 3, m=0.7, s=16.0, m_start=0.3, m_ramp=[0, 2])
    criterion.set_epoch(1.0)
    w = criterion.weight.detach()
    labels = torch.tensor([0, 1, 2, 0])
    features = torch.stack([-w[0], -w[1] + 0.05 * w[2], w[2], -w[0] + 0.3 * w[1]])
    expected = brute_force(features, labels.tolist(), w, 0.5, 16.0)
    assert float(criterion(features, labels).detach()) == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(brute_force(features, labels.tolist(), w, 0.7, 16.0), rel=1e-3)


@pytest.mark.parametrize("kwargs, message", [
    ({"m_start": 0.3}, "needs both m_start"),
    ({"m_ramp": [1, 8]}, "needs both m_start"),
    ({"m_start": 1.7, "m_ramp": [1, 8]}, "m_start must be a margin"),
    ({"m_start": 0.3, "m_ramp": [8, 1]}, "first < last"),
    ({"m_start": 0.3, "m_ramp": [1]}, r"\[first, last\]"),
    ({"m_start": 0.3, "m_ramp": "1-8"}, r"\[first, last\]"),
    ({"m_start": 0.6, "m_ramp": [1, 8]}, "above m"),
])
def test_margin_warm_up_refuses_incomplete_or_backwards_ramps(kwargs, message):
    with pytest.raises(LookalikeError, match=message):
        ArcFaceLoss(4, 2, m=0.5, **kwargs)


def test_mlp_variant_passes_the_warm_up_on():
    criterion = ArcFaceLossWithMLP(4, 2, mlp_features=[6], m=0.6, m_start=0.2, m_ramp=[0, 2])
    criterion.set_epoch(1.0)
    assert criterion.margin == pytest.approx(0.4)
