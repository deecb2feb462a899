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
    assert float(criterion(features, labels)) == pytest.approx(expected, rel=1e-5)


def test_no_margin_unit_scale_is_softmax_cross_entropy():
    torch.manual_seed(1)
    criterion = ArcFaceLoss(6, 4, m=0.0, s=1.0)
    features, labels = torch.randn(10, 6), torch.randint(0, 4, (10,))
    expected = F.cross_entropy(criterion.logits(features), labels)
    assert torch.allclose(criterion(features, labels), expected, atol=1e-6)


def test_label_smoothing_and_categories_match_brute_force():
    torch.manual_seed(2)
    label2category = {10: "a", 11: "a", 12: "b", 13: "b", 14: "b"}
    criterion = ArcFaceLoss(8, 5, m=0.3, s=8.0, label_smoothing=0.1, label2category=label2category)
    labels = torch.tensor([10, 12, 14, 11, 13, 12])
    features = torch.randn(6, 8)
    ids = sorted(label2category)
    allowed = [[label2category[ids[i]] == label2category[ids[j]] for j in range(5)] for i in range(5)]
    expected = brute_force(features, [ids.index(int(y)) for y in labels], criterion.weight.detach(), 0.3, 8.0,
                           smoothing=0.1, allowed=allowed)
    assert float(criterion(features, labels)) == pytest.approx(expected, rel=1e-5)


def test_any_label_ids_and_unknown_label():
    criterion = ArcFaceLoss.from_data(4, [7, 3, 3, 100])
    assert criterion.num_classes == 3 and criterion.class_index(torch.tensor([3, 7, 100])).tolist() == [0, 1, 2]
    with pytest.raises(LookalikeError, match=r"label\(s\) \[5\]"):
        criterion(torch.randn(1, 4), torch.tensor([5]))
    with pytest.raises(LookalikeError, match="num_classes"):
        ArcFaceLoss(4, 2, labels=[1, 2, 3])


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
        first = float(loss) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert criterion.last_logs["accuracy"] == 1.0 and float(loss) < first / 4
