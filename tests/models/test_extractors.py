"""Extractors: shapes, feat_dim, normalisation, pooling, heads, freezing, and clear errors for unknown names."""

from __future__ import annotations

import pytest
import torch

from lookalike.errors import LookalikeError
from lookalike.models import GeM, ResNetExtractor, SmallCNNExtractor, TimmExtractor, ViTExtractor
from lookalike.models.pooling import make_pooling


@pytest.mark.parametrize(
    "build, dim",
    [
        (lambda: ResNetExtractor("resnet18"), 512),
        (lambda: ResNetExtractor("resnet18", embedding_dim=32, pooling="gem"), 32),
        (lambda: SmallCNNExtractor(channels=(8, 16), embedding_dim=24), 24),
        (lambda: SmallCNNExtractor(channels=(8, 16), embedding_dim=None), 16),
        (lambda: ViTExtractor("vit_b_32", image_size=32), 768),
        (lambda: TimmExtractor("resnet10t", embedding_dim=16), 16),
        (lambda: TimmExtractor("resnet10t", pooling="gem"), 512),
    ],
)
def test_shapes_and_unit_norm(build, dim):
    torch.manual_seed(0)
    model = build().eval()
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, dim) and model.feat_dim == dim
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_no_normalisation_and_gradients_flow():
    model = SmallCNNExtractor(channels=(8,), embedding_dim=8, normalise=False)
    out = model(torch.randn(4, 3, 16, 16))
    assert not torch.allclose(out.norm(dim=1), torch.ones(4))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_gem_with_p_one_is_average_pooling():
    x = torch.rand(2, 5, 4, 4)
    gem = GeM(p=1.0, learnable=False)
    assert torch.allclose(gem(x), make_pooling("avg")(x), atol=1e-6)
    assert torch.all(GeM(p=20.0)(x) <= x.amax(dim=(-2, -1)) + 1e-5)


def test_freeze_backbone_keeps_head_trainable():
    model = SmallCNNExtractor(channels=(8,), embedding_dim=4)
    model.freeze_backbone()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.unfreeze_backbone()
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_unknown_names_suggest_close_ones():
    with pytest.raises(LookalikeError, match="Did you mean 'resnet18'"):
        ResNetExtractor("resnet19")
    with pytest.raises(LookalikeError, match="valid choices"):
        ViTExtractor("vit_z_99")
    with pytest.raises(LookalikeError, match="unknown timm model"):
        TimmExtractor("resnett10t")
    with pytest.raises(LookalikeError, match="pooling"):
        SmallCNNExtractor(pooling="max")
