"""Pairwise models: symmetric scores, and models that must actually learn (held-out AUC well above 0.5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lookalike.errors import CheckpointError, LookalikeError
from lookalike.models import SmallCNNExtractor
from lookalike.models.pairwise import (
    EmbeddingPairClassifier,
    ImagePairClassifier,
    build_pairwise_model,
    conv_trunk,
    load_pairwise_model,
    save_pairwise_model,
)


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Probability that a random positive pair scores above a random negative one (ties count half)."""
    s, y = scores.double().numpy(), positive.numpy().astype(bool)
    pos, neg = s[y], s[~y]
    return float(((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()))


def pairs_of(labels: torch.Tensor, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n pairs, half of them of the same label."""
    order = torch.argsort(labels, stable=True)  # items grouped by label, groups of equal size
    size = int((labels == labels[0]).sum())
    a = torch.randint(len(labels), (n,), generator=generator)
    b = torch.randint(len(labels), (n,), generator=generator)
    rank = torch.argsort(order)  # position of each item in the grouped order
    partner = order[(rank[a] // size) * size + torch.randint(size, (n,), generator=generator)]
    same = torch.arange(n) % 2 == 0
    return a, torch.where(same, partner, b)


def fit(model, x, labels, steps: int, lr: float, generator) -> None:
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        a, b = pairs_of(labels, 32, generator)
        target = (labels[a] == labels[b]).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[a], x[b]), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def test_embedding_model_learns_a_relation_the_cosine_misses():
    # "same" = same class centre in the first 4 coordinates; 12 noise coordinates dominate the cosine
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(40, 4, generator=g)
    labels = torch.arange(400) % 40
    x = torch.cat([centres[labels] + 0.1 * torch.randn(400, 4, generator=g), 2.0 * torch.randn(400, 12, generator=g)], 1)
    train, test = labels < 30, labels >= 30  # held-out pairs of unseen labels, as in retrieval
    model = EmbeddingPairClassifier(16, hidden_dims=(64,), dropout=0.0, normalise=False)
    a, b = pairs_of(labels[test], 600, g)
    xt, lt = x[test], labels[test]
    before = auc(-model.predict(xt[a], xt[b]), lt[a] == lt[b])
    fit(model, x[train], labels[train], steps=150, lr=5e-3, generator=g)
    after = auc(-model.predict(xt[a], xt[b]), lt[a] == lt[b])
    cosine = auc(torch.nn.functional.cosine_similarity(xt[a], xt[b]), lt[a] == lt[b])
    assert after > 0.85 and after > cosine + 0.1, (before, after, cosine)


def test_residual_model_starts_at_the_cosine_order_and_learns_past_it():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(40, 4, generator=g)
    labels = torch.arange(400) % 40
    x = torch.cat([centres[labels] + 0.1 * torch.randn(400, 4, generator=g), 2.0 * torch.randn(400, 12, generator=g)], 1)
    model = EmbeddingPairClassifier(16, hidden_dims=(64,), dropout=0.0, residual=True).eval()
    a, b = torch.randint(400, (500,), generator=g), torch.randint(400, (500,), generator=g)
    cosine = torch.nn.functional.cosine_similarity(x[a], x[b])
    # untrained: the logit is an increasing affine function of the cosine, so candidates keep the search's order
    with torch.no_grad():
        assert torch.allclose(model(x[a], x[b]), 10.0 * (cosine - 0.5), atol=1e-5)
    train, test = labels < 30, labels >= 30
    ta, tb = pairs_of(labels[test], 600, g)
    xt, lt = x[test], labels[test]
    fit(model, x[train], labels[train], steps=150, lr=5e-3, generator=g)
    after = auc(-model.predict(xt[ta], xt[tb]), lt[ta] == lt[tb])
    assert after > auc(torch.nn.functional.cosine_similarity(xt[ta], xt[tb]), lt[ta] == lt[tb]) + 0.1


def test_image_model_learns_from_feature_maps():
    # 16 x 16 images: a bright 4 x 4 square at one of 8 positions (the label), plus noise
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(320) % 8
    images = 0.3 * torch.rand(320, 3, 16, 16, generator=g)
    for label in range(8):
        r, c = divmod(label, 4)
        images[labels == label, :, 4 + 6 * r: 8 + 6 * r, 4 * c: 4 * c + 4] += 0.7
    trunk, channels = conv_trunk(SmallCNNExtractor((8, 16), embedding_dim=None))
    model = ImagePairClassifier(trunk, channels, channels=8, hidden_dims=(16,), dropout=0.0, freeze_trunk=False)
    a, b = pairs_of(labels[240:], 400, g)
    xt, lt = images[240:], labels[240:]
    fit(model, images[:240], labels[:240], steps=25, lr=1e-2, generator=g)
    assert auc(-model.predict(xt[a], xt[b]), lt[a] == lt[b]) > 0.8


def test_scores_are_symmetric_and_the_checkpoint_round_trips(tmp_path):
    model = EmbeddingPairClassifier(8, hidden_dims=(5,)).eval()
    x, y = torch.randn(10, 8), torch.randn(10, 8)
    assert torch.allclose(model(x, y), model(y, x))
    path = tmp_path / "pair.pt"
    save_pairwise_model(model, {"name": "embedding_mlp", "args": {"hidden_dims": [5]}, "feat_dim": 8}, path)
    again = load_pairwise_model(path)
    assert torch.equal(again(x, y), model(x, y))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_pairwise_model(path)
    with pytest.raises(LookalikeError, match="pairwise model"):
        build_pairwise_model("embeding_mlp", {}, feat_dim=8)
    with pytest.raises(LookalikeError, match="hidden_dims"):
        EmbeddingPairClassifier(8, hidden_dims=(0,))


def test_the_trunk_of_a_timm_cnn_gives_its_feature_maps():
    pytest.importorskip("timm")
    from lookalike.models import TimmExtractor

    extractor = TimmExtractor("tf_efficientnet_lite0", embedding_dim=8).eval()
    trunk, channels = conv_trunk(extractor)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        maps = trunk(images)
        assert maps.shape == (2, channels, 2, 2) and channels == 1280
        # the same body as the extractor's: average-pooling its maps is the backbone's pooled output
        assert torch.allclose(maps.mean(dim=(2, 3)), extractor.backbone(images), atol=1e-5)



def test_under_embed_from_the_trunk_stops_where_the_embedding_does():
    pytest.importorskip("timm")
    from lookalike.models import TimmExtractor

    extractor = TimmExtractor("tf_efficientnet_lite0", embedding_dim=8, embed_from="backbone.net.blocks.6").eval()
    trunk, channels = conv_trunk(extractor)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        maps = trunk(images)
        assert channels == extractor.feat_dim == 320  # not conv_head's 1280: that is the training-only projection
        assert torch.allclose(torch.nn.functional.normalize(maps.mean(dim=(2, 3)), dim=1), extractor(images),
                              atol=1e-5)