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
        (lambda: SmallCNNExtractor(channels=(8, 16), embedding_dim=24), 24),
        (lambda: SmallCNNExtractor(channels=(8, 16), embedding_dim=None), 16),
        (lambda: TimmExtractor("test_efficientnet", embedding_dim=16), 16),
        (lambda: TimmExtractor("test_resnet", pooling="gem"), 96),
        (lambda: TimmExtractor("test_vit", img_size=32), 64),  # a transformer: timm's own pooled output
        (lambda: TimmExtractor("test_mambaout"), 256),  # a layer after pooling: head_hidden_size, not num_features
        (lambda: TimmExtractor("test_mambaout", pooling="gem", embedding_dim=8), 8),  # (B, H, W, C) feature maps
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
    big = torch.full((1, 1, 2, 2), 100.0, dtype=torch.bfloat16)  # 100^3 overflows float16: computed in float32
    assert GeM(p=3.0)(big).dtype == torch.bfloat16 and float(GeM(p=3.0)(big).detach()) == pytest.approx(100.0, rel=1e-2)
    with pytest.raises(LookalikeError, match="p >= 1"):
        GeM(p=0.5)


def test_gem_p_is_learnable_and_stays_finite_on_zeros():
    gem = GeM(p=3.0)
    out = gem(torch.zeros(2, 4, 3, 3, requires_grad=True))
    out.sum().backward()
    assert torch.isfinite(out).all() and gem.p.grad is not None and torch.isfinite(gem.p.grad)


def test_freeze_backbone_keeps_head_trainable():
    model = SmallCNNExtractor(channels=(8,), embedding_dim=4)
    model.freeze_backbone()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.unfreeze_backbone()
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_unknown_names_suggest_close_ones():
    with pytest.raises(LookalikeError, match="did you mean 'resnet18'"):
        ResNetExtractor("resnet19")
    with pytest.raises(LookalikeError, match="valid choices"):
        ViTExtractor("vit_z_99")
    with pytest.raises(LookalikeError, match="unknown timm model"):
        TimmExtractor("resnett10t")
    with pytest.raises(LookalikeError, match="pooling"):
        SmallCNNExtractor(pooling="max")
    with pytest.raises(LookalikeError, match="did you mean 'gem'"):
        TimmExtractor("test_resnet", pooling="gen")


def test_vit_class_token_and_image_size_check():
    with pytest.raises(LookalikeError, match="divisible by its patch size 32"):
        ViTExtractor("vit_b_32", image_size=40)
    torch.manual_seed(0)
    model = ViTExtractor("vit_b_32", image_size=32, embedding_dim=16).eval()  # the smallest torchvision ViT
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 16) and model.feat_dim == 16
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(LookalikeError, match="built for 32x32 images but got 64x64"):
        model(torch.randn(1, 3, 64, 64))


def test_timm_gem_on_transformer_tokens_is_a_clear_error():
    model = TimmExtractor("test_vit", img_size=32, pooling="gem")
    with pytest.raises(LookalikeError, match="use pooling='avg'"):
        model(torch.randn(1, 3, 32, 32))


def test_channels_last_gives_the_same_embeddings():
    torch.manual_seed(0)
    model = ResNetExtractor("resnet18", embedding_dim=16, pooling="gem").eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    assert torch.allclose(model(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5)


@pytest.mark.parametrize("build, prefix", [
    (lambda: ResNetExtractor("resnet18", embedding_dim=16), ["backbone.0.0", "backbone.0.1", "backbone.0.2"]),
    (lambda: SmallCNNExtractor((8, 16), embedding_dim=8), ["backbone.0"]),
    (lambda: TimmExtractor("tf_efficientnet_lite0", embedding_dim=32),
     ["backbone.net.conv_stem", "backbone.net.bn1", "backbone.net.blocks.0", "backbone.net.blocks.1"]),
    (lambda: TimmExtractor("resnet18", embedding_dim=32, pooling="gem"), ["backbone.net.conv1", "backbone.net.bn1"]),
])
def test_split_after_the_frozen_prefix_computes_the_same_embeddings(build, prefix):
    torch.manual_seed(0)
    extractor = build().eval()
    trunk, rest = extractor.split_frozen_prefix(prefix)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = trunk(images)
        assert maps.ndim == 4 and maps.shape[-1] < 64  # feature maps, not embeddings
        assert torch.allclose(rest(maps), extractor(images), atol=1e-6)
    shared = {id(p) for p in extractor.parameters()}
    assert all(id(p) in shared for p in [*trunk.parameters(), *rest.parameters()])  # no copies


def test_split_refuses_what_is_not_a_prefix():
    lite = TimmExtractor("tf_efficientnet_lite0")
    with pytest.raises(LookalikeError, match=r"not the first stages.*backbone\.net\.conv_stem, backbone\.net\.bn1"):
        lite.split_frozen_prefix(["backbone.net.bn1"])
    with pytest.raises(LookalikeError, match="not the first stages"):
        lite.split_frozen_prefix(["backbone.net.bn1", "backbone.net.conv_stem"])  # out of order
    small = SmallCNNExtractor((8, 16)).eval()  # every stage frozen: the rest is the pooling and the head
    trunk, rest = small.split_frozen_prefix(["backbone.0", "backbone.1"])
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rest(trunk(images)), small(images), atol=1e-6)
    with pytest.raises(LookalikeError, match="not a plain sequence of stages"):  # a transformer
        ViTExtractor("vit_b_32", image_size=32).split_frozen_prefix(["backbone.net.conv_proj"])


@pytest.mark.parametrize("build, stage, channels", [
    (lambda **kw: ResNetExtractor("resnet18", embedding_dim=16, **kw), "backbone.0.6", 256),  # layer3
    (lambda **kw: SmallCNNExtractor((8, 16, 24), embedding_dim=8, **kw), "backbone.1", 16),
    (lambda **kw: TimmExtractor("tf_efficientnet_lite0", embedding_dim=32, **kw), "backbone.net.blocks.6", 320),
])
def test_embed_from_takes_the_embedding_before_the_training_projection(build, stage, channels):
    torch.manual_seed(0)
    plain = build().eval()
    tapped = build(embed_from=stage).eval()
    tapped.load_state_dict(plain.state_dict())  # the same weights: embed_from adds none
    assert (tapped.feat_dim, tapped.training_dim) == (channels, plain.feat_dim)
    images = torch.randn(3, 3, 64, 64)
    stages, _ = tapped.backbone_stages()
    with torch.no_grad():
        maps = images
        for name, module in stages:
            maps = module(maps)
            if name == stage:
                break
        expected = torch.nn.functional.normalize(maps.mean(dim=(2, 3)), dim=1)  # worked out by hand
        assert torch.allclose(tapped(images), expected, atol=1e-6)
        # the loss still sees the whole network and the head, as without embed_from
        assert torch.allclose(tapped.training_features(images), plain(images), atol=1e-6)
        trunk, rest = tapped.split_frozen_prefix([stages[0][0]])
        assert torch.allclose(rest(trunk(images)), tapped.training_features(images), atol=1e-6)


def test_embed_from_leaves_batchnorm_statistics_alone_and_refuses_unknown_stages():
    torch.manual_seed(0)
    before = SmallCNNExtractor((8, 16)).state_dict()
    torch.manual_seed(0)
    tapped = SmallCNNExtractor((8, 16), embed_from="backbone.0")  # sizing the embedding runs a probe
    after = tapped.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(module.training for module in tapped.modules())  # the probe's eval mode does not leak
    with pytest.raises(LookalikeError, match=r"'blocks\.6' is not a stage.*backbone\.net\.blocks\.6"):
        TimmExtractor("tf_efficientnet_lite0", embed_from="blocks.6")
    with pytest.raises(LookalikeError, match="embed_from needs a backbone that is a plain sequence"):
        TimmExtractor("vit_tiny_patch16_224", img_size=32, embed_from="backbone.net.blocks.0")
    with pytest.raises(LookalikeError, match=r"embed_from: 'backbone\.7': a 128 px image does not pass"):
        SmallCNNExtractor((4,) * 8, embed_from="backbone.7")  # eight 2x poolings: nothing left of 128 px


def test_embed_from_pools_as_the_extractor_pools():
    torch.manual_seed(0)
    model = ResNetExtractor("resnet18", pooling="gem", embed_from="backbone.0.6").eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.backbone[0][:7](images)
        p = float(model.backbone[1].p)
        expected = maps.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1 / p)  # GeM by hand
        assert p != 1.0 and torch.allclose(model(images), torch.nn.functional.normalize(expected, dim=1), atol=1e-5)
