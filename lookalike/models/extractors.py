"""Ready extractors: torchvision ResNets and ViTs, any timm model, and a small CNN for tests and CPU demos.

Weights never come from torchvision's or timm's hubs implicitly: `weights=None` is random init, a path or
"zoo:<name>" loads our checkpoint (timm's own `pretrained=True` is allowed where the user has hub access).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torchvision
from torch import Tensor, nn

from lookalike.errors import LookalikeError, unknown_choice
from lookalike.models.base import Extractor
from lookalike.models.pooling import make_pooling

__all__ = ["ResNetExtractor", "ViTExtractor", "TimmExtractor", "SmallCNNExtractor", "RESNETS", "VITS"]

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
VITS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")

Weights = str | os.PathLike | None


class ResNetExtractor(Extractor):
    """A torchvision ResNet without its classifier, pooled by `pooling` ("avg" or "gem")."""

    def __init__(self, arch: str = "resnet50", *, embedding_dim: int | None = None, pooling: str = "avg",
                 normalise: bool = True, weights: Weights = None) -> None:
        if arch not in RESNETS:
            raise LookalikeError(unknown_choice("ResNet arch", arch, RESNETS))
        net = getattr(torchvision.models, arch)(weights=None)
        body = nn.Sequential(*(m for name, m in net.named_children() if name not in ("avgpool", "fc")))
        super().__init__(nn.Sequential(body, make_pooling(pooling)), net.fc.in_features,
                         embedding_dim=embedding_dim, normalise=normalise, weights=weights)
        self.arch = arch


class _ViTBackbone(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.net.heads = nn.Identity()

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)  # the class token after the final norm


class ViTExtractor(Extractor):
    """A torchvision Vision Transformer; the embedding is the class token (inputs must be `image_size`)."""

    def __init__(self, arch: str = "vit_b_16", *, image_size: int = 224, embedding_dim: int | None = None,
                 normalise: bool = True, weights: Weights = None) -> None:
        if arch not in VITS:
            raise LookalikeError(unknown_choice("ViT arch", arch, VITS))
        net = getattr(torchvision.models, arch)(weights=None, image_size=image_size)
        super().__init__(_ViTBackbone(net), net.hidden_dim, embedding_dim=embedding_dim, normalise=normalise,
                         weights=weights)
        self.arch = arch


class _TimmBackbone(nn.Module):
    def __init__(self, net: nn.Module, pooling: nn.Module | None) -> None:
        super().__init__()
        self.net = net
        self.pooling = pooling

    def forward(self, images: Tensor) -> Tensor:
        if self.pooling is None:
            return self.net(images)
        return self.pooling(self.net.forward_features(images))


class TimmExtractor(Extractor):
    """Any timm model by name, without its classifier. pooling="avg" keeps the model's own pooling (CNNs and
    transformers alike); "gem" replaces it for CNNs whose features are (B, C, H, W) maps."""

    def __init__(self, model_name: str, *, pretrained: bool = False, embedding_dim: int | None = None,
                 pooling: str = "avg", normalise: bool = True, weights: Weights = None, **timm_kwargs) -> None:
        try:
            import timm
        except ImportError:
            raise LookalikeError("TimmExtractor needs timm: pip install 'lookalike[timm]'") from None
        if not timm.is_model(model_name.split(".")[0]):
            raise LookalikeError(f"unknown timm model {model_name!r}.{_close_timm_names(model_name, timm.list_models())}"
                                 " All names: timm.list_models().")
        if pooling == "avg":
            net = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **timm_kwargs)
            pool = None
        else:
            net = timm.create_model(model_name, pretrained=pretrained, num_classes=0, global_pool="", **timm_kwargs)
            pool = make_pooling(pooling)
        super().__init__(_TimmBackbone(net, pool), net.num_features, embedding_dim=embedding_dim,
                         normalise=normalise, weights=weights)
        self.model_name = model_name


def _close_timm_names(name: str, names: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, names, n=3)
    return f" Close names: {', '.join(close)}." if close else ""


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCNNExtractor(Extractor):
    """A small VGG-style CNN (two 3x3 convs + BatchNorm per stage) for tests and quick CPU runs at 32-64 px."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128), *, embedding_dim: int | None = 128,
                 pooling: str = "avg", normalise: bool = True, weights: Weights = None) -> None:
        if not channels:
            raise LookalikeError("SmallCNNExtractor needs at least one stage in `channels`")
        stages = [_conv_block(c_in, c_out) for c_in, c_out in zip((3, *channels[:-1]), channels)]
        super().__init__(nn.Sequential(*stages, make_pooling(pooling)), channels[-1], embedding_dim=embedding_dim,
                         normalise=normalise, weights=weights)

