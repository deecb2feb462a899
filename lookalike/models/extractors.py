"""Ready extractors: torchvision ResNets and ViTs, any timm model, and a small CNN for tests and CPU demos.

Weights never come from torchvision's or timm's hubs implicitly: `weights=None` is random init, a path or
"zoo:<name>" loads our checkpoint (timm's own `pretrained=True` is allowed where the user has hub access).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torchvision
from torch import Tensor, nn

from lookalike.errors import LookalikeError, unknown_choice
from lookalike.models.base import Extractor, Stages
from lookalike.models.pooling import POOLINGS, make_pooling

__all__ = ["ResNetExtractor", "ViTExtractor", "TimmExtractor", "SmallCNNExtractor", "RESNETS", "VITS"]

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
VITS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")

Weights = str | os.PathLike | None


class ResNetExtractor(Extractor):
    """A torchvision ResNet without its classifier, pooled by `pooling` ("avg" or "gem")."""

    def __init__(self, arch: str = "resnet50", *, embedding_dim: int | None = None, pooling: str = "avg",
                 normalise: bool = True, weights: Weights = None, embed_from: str | None = None) -> None:
        if arch not in RESNETS:
            raise LookalikeError(unknown_choice("ResNet arch", arch, RESNETS))
        net = getattr(torchvision.models, arch)(weights=None)
        names = [name for name, _ in net.named_children() if name not in ("avgpool", "fc")]
        body = nn.Sequential(*(getattr(net, name) for name in names))
        self._body_index = {name: str(i) for i, name in enumerate(names)}  # torchvision child name -> position
        self.arch = arch
        super().__init__(nn.Sequential(body, make_pooling(pooling)), net.fc.in_features,
                         embedding_dim=embedding_dim, normalise=normalise, weights=weights, embed_from=embed_from)

    def backbone_stages(self) -> Stages:
        """conv1, bn1, relu, maxpool, layer1-4 (``backbone.0.<i>``), then the pooling."""
        body, pool = self.backbone[0], self.backbone[1]
        return [(f"backbone.0.{i}", module) for i, module in enumerate(body)], pool

    def plain_key(self, key: str) -> str | None:
        """`layer1.0.conv1.weight` of torchvision's ResNet -> `backbone.0.4.0.conv1.weight`; `fc.*` -> None."""
        child, _, rest = key.partition(".")
        return f"backbone.0.{self._body_index[child]}.{rest}" if child in self._body_index and rest else None


class _ViTBackbone(nn.Module):
    def __init__(self, net: nn.Module, image_size: int) -> None:
        super().__init__()
        self.net = net
        self.net.heads = nn.Identity()
        self.image_size = image_size

    def forward(self, images: Tensor) -> Tensor:
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise LookalikeError(
                f"ViTExtractor was built for {self.image_size}x{self.image_size} images but got "
                f"{images.shape[-2]}x{images.shape[-1]}; set the extractor's image_size to the transforms' size."
            )
        return self.net(images)  # the class token after the final norm


class ViTExtractor(Extractor):
    """A torchvision Vision Transformer; the embedding is the class token (inputs must be `image_size`).

    A checkpoint trained at one `image_size` loads only into a model of the same `image_size` (the position
    embeddings have one row per patch).
    """

    def __init__(self, arch: str = "vit_b_16", *, image_size: int = 224, embedding_dim: int | None = None,
                 normalise: bool = True, weights: Weights = None) -> None:
        if arch not in VITS:
            raise LookalikeError(unknown_choice("ViT arch", arch, VITS))
        patch = int(arch.rsplit("_", 1)[1])
        if image_size <= 0 or image_size % patch:
            raise LookalikeError(f"ViTExtractor({arch!r}) needs image_size divisible by its patch size {patch}, "
                                 f"got {image_size}; e.g. {max(patch, round(image_size / patch) * patch)}.")
        net = getattr(torchvision.models, arch)(weights=None, image_size=image_size)
        self.arch = arch
        super().__init__(_ViTBackbone(net, image_size), net.hidden_dim, embedding_dim=embedding_dim,
                         normalise=normalise, weights=weights)

    def plain_key(self, key: str) -> str | None:
        """torchvision's ViT keys live under `backbone.net.`; its classifier `heads.*` is not kept."""
        return None if key.startswith("heads.") else f"backbone.net.{key}"


class _TimmBackbone(nn.Module):
    def __init__(self, net: nn.Module, pooling: nn.Module | None) -> None:
        super().__init__()
        self.net = net
        self.pooling = pooling

    def forward(self, images: Tensor) -> Tensor:
        if self.pooling is None:
            return self.net(images)  # timm's own pooled output (global_pool of CNNs, class token of ViTs)
        maps = self.net.forward_features(images)
        channels = self.net.num_features
        if maps.ndim == 4 and maps.shape[1] != channels and maps.shape[-1] == channels:
            maps = maps.permute(0, 3, 1, 2)  # channels-last layout (B, H, W, C) of some timm models
        if maps.ndim != 4 or maps.shape[1] != channels:
            raise LookalikeError(
                f"pooling={type(self.pooling).__name__} needs CNN feature maps (B, C, H, W), but this timm model "
                f"returns {tuple(maps.shape)} (tokens of a transformer?); use pooling='avg' (timm's own pooling)."
            )
        return self.pooling(maps)


class TimmExtractor(Extractor):
    """Any timm model by name, without its classifier (`num_classes=0`).

    pooling="avg" keeps the model's own pooled output (global average of CNNs, class token / token pooling of
    transformers); "gem" pools the feature maps of CNNs with our GeM instead. `pretrained=True` asks timm to
    download its own weights (needs network access); `**timm_kwargs` go to `timm.create_model` (e.g.
    `img_size=` for ViTs, `drop_path_rate=`).
    """

    def __init__(self, model_name: str, *, pretrained: bool = False, embedding_dim: int | None = None,
                 pooling: str = "avg", normalise: bool = True, weights: Weights = None, embed_from: str | None = None,
                 **timm_kwargs) -> None:
        from lookalike.extras import require

        timm = require("timm", "the timm extractor")
        if pooling not in POOLINGS:
            raise LookalikeError(unknown_choice("pooling", pooling, POOLINGS))
        if not timm.is_model(model_name.split(".")[0]):
            close = _close_timm_names(model_name, timm.list_models())
            raise LookalikeError(f"unknown timm model {model_name!r}.{close} All names: timm.list_models().")
        if pooling == "avg":
            net = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **timm_kwargs)
            pool = None
            # models with a layer after pooling (MobileNetV3, MambaOut) return head_hidden_size features
            dim = getattr(net, "head_hidden_size", None) or net.num_features
        else:
            net = timm.create_model(model_name, pretrained=pretrained, num_classes=0, global_pool="", **timm_kwargs)
            pool = make_pooling(pooling)
            dim = net.num_features
        self._classifier = _timm_classifier_name(net)
        self.model_name = model_name  # before the weights load: the zoo checks the architecture
        super().__init__(_TimmBackbone(net, pool), int(dim), embedding_dim=embedding_dim, normalise=normalise,
                         weights=weights, embed_from=embed_from)

    def backbone_stages(self) -> Stages | None:
        """timm's EfficientNet class (EfficientNet, -Lite, MobileNetV2, MNASNet: conv_stem, bn1, blocks.<i>,
        conv_head, bn2) and ResNets (conv1, bn1, act1, maxpool, layer1-4) as ``backbone.net.<name>`` stages, then
        timm's pooling (or ours); None for other timm models."""
        net, pool = self.backbone.net, self.backbone.pooling
        if all(hasattr(net, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
            names = ["conv_stem", "bn1", *(f"blocks.{i}" for i in range(len(net.blocks))), "conv_head", "bn2"]
        elif all(hasattr(net, a) for a in ("conv1", "bn1", "act1", "maxpool", "layer4")):
            names = ["conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        else:
            return None
        modules = dict(net.named_modules())
        tail = net.forward_head if pool is None else pool
        return [(f"backbone.net.{name}", modules[name]) for name in names], tail

    def plain_key(self, key: str) -> str | None:
        """timm's keys live under `backbone.net.`; its classifier (`classifier.*`, `fc.*`, `head.fc.*`) is not
        kept (num_classes=0)."""
        if self._classifier and (key == self._classifier or key.startswith(self._classifier + ".")):
            return None
        return f"backbone.net.{key}"


def _timm_classifier_name(net: nn.Module) -> str | None:
    """The module name of a timm model's classifier ('classifier', 'fc', 'head.fc'), from its pretrained config."""
    cfg = getattr(net, "pretrained_cfg", None) or getattr(net, "default_cfg", None) or {}
    name = cfg.get("classifier")
    return name[0] if isinstance(name, (list, tuple)) else name


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
                 pooling: str = "avg", normalise: bool = True, weights: Weights = None,
                 embed_from: str | None = None) -> None:
        if not channels:
            raise LookalikeError("SmallCNNExtractor needs at least one stage in `channels`")
        stages = [_conv_block(c_in, c_out) for c_in, c_out in zip((3, *channels[:-1]), channels)]
        super().__init__(nn.Sequential(*stages, make_pooling(pooling)), channels[-1], embedding_dim=embedding_dim,
                         normalise=normalise, weights=weights, embed_from=embed_from)

    def backbone_stages(self) -> Stages:
        """The conv stages (``backbone.<i>``), then the pooling."""
        *stages, pool = self.backbone
        return [(f"backbone.{i}", module) for i, module in enumerate(stages)], pool

