"""`Extractor`: a backbone, an optional projection head and optional L2 normalisation, with one feat_dim."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Extractor", "Stages"]

#: a backbone as a plain sequence: its stages in order (extractor-level module names) and the pooling after them
Stages = tuple[list[tuple[str, nn.Module]], Callable[[Tensor], Tensor]]


class Extractor(nn.Module):
    """Images (B, 3, H, W) -> embeddings (B, feat_dim).

    `backbone` maps images to (B, backbone_dim) vectors; `embedding_dim` adds a linear projection to that size;
    `normalise` L2-normalises the output; `weights` (a checkpoint path or "zoo:<name>") is loaded last, so it
    covers the head too. Subclasses only build the backbone.

    `embed_from` (a stage of `backbone_stages`, e.g. ``backbone.net.blocks.6``) takes the embedding from that
    stage's globally averaged output instead; the later stages, the pooling and the head then form a projection
    that only the training loss sees (`training_features`), as SimCLR discards its projection head: features
    before it carry over better to labels never trained on.
    """

    def __init__(self, backbone: nn.Module, backbone_dim: int, *, embedding_dim: int | None = None,
                 normalise: bool = True, weights: str | os.PathLike | None = None,
                 embed_from: str | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone_dim, embedding_dim) if embedding_dim else nn.Identity()
        self.normalise = normalise
        self._training_dim = int(embedding_dim or backbone_dim)
        self._feat_dim = self._training_dim
        self.embed_from: str | None = None
        self._embed_stages: list[nn.Module] | None = None  # held in a plain list: the backbone registers them
        if embed_from is not None:
            self._tap(str(embed_from))
        if weights is not None:
            self.load_weights(weights)

    @property
    def feat_dim(self) -> int:
        """Size of the embeddings this extractor returns."""
        return self._feat_dim

    @property
    def training_dim(self) -> int:
        """Size of the vectors the training loss sees (`training_features`): `feat_dim` unless `embed_from`."""
        return self._training_dim

    def forward(self, images: Tensor) -> Tensor:
        """The embeddings of a batch of images."""
        if self._embed_stages is None:
            return self.training_features(images)
        maps = images
        for stage in self._embed_stages:
            maps = stage(maps)
        features = maps.mean(dim=(2, 3)) if maps.ndim == 4 else maps
        return F.normalize(features, dim=1) if self.normalise else features

    def training_features(self, images: Tensor) -> Tensor:
        """What the training loss sees: the head's output (normalised), which is the embedding itself unless
        `embed_from` takes the embedding from an earlier stage."""
        features = self.head(self.backbone(images))
        return F.normalize(features, dim=1) if self.normalise else features

    def _tap(self, name: str) -> None:
        """Takes the embedding from stage `name` of `backbone_stages` (see `embed_from`)."""
        from lookalike.errors import LookalikeError

        described = self.backbone_stages()
        if described is None:
            raise LookalikeError(f"{type(self).__name__}: embed_from needs a backbone that is a plain sequence of "
                                 "stages (ResNet, SmallCNN, timm's EfficientNet class and ResNets); this one is not.")
        order = [stage for stage, _ in described[0]]
        if name not in order:
            raise LookalikeError(f"embed_from: {name!r} is not a stage of {type(self).__name__}'s backbone; its "
                                 f"stages: {', '.join(order)}.")
        stages = [module for _, module in described[0][:order.index(name) + 1]]
        self._feat_dim = _output_channels(stages)
        self._embed_stages = stages
        self.embed_from = name

    def load_weights(self, weights: str | os.PathLike) -> str:
        """Load a checkpoint file, or "zoo:<name>" from the model zoo (hash-checked), and return one line saying
        what was loaded. A file of this extractor's keys loads whole; a plain backbone state dict (a torchvision
        or timm `state_dict()`) loads into the backbone, keeps the head as initialised and says so on stderr."""
        import sys

        from lookalike.models.checkpoints import load_pretrained

        text = str(weights)
        if text.startswith("zoo:"):
            from lookalike.models.zoo import zoo_state_dict

            state, source = zoo_state_dict(text[len("zoo:"):], model=self)
        else:
            state, source = weights, None
        report = load_pretrained(self, state, source=source)
        if report:
            print(report, file=sys.stderr)
        return report

    def plain_key(self, key: str) -> str | None:
        """This extractor's key for `key` of the plain network's own `state_dict()` (torchvision / timm names),
        or None for a key the extractor does not hold (the classifier). Subclasses with such a network
        override it; the default knows none."""
        return None

    def backbone_stages(self) -> Stages | None:
        """The backbone as ordered stages and the pooling after them, for backbones that are a plain sequence
        (CNNs); None where they are not. `split_frozen_prefix` uses it."""
        return None

    def split_frozen_prefix(self, names: Sequence[str]) -> tuple[nn.Module, nn.Module]:
        """``(trunk, rest)`` with ``rest(trunk(images)) == self(images)``: ``trunk`` runs the stages ``names``
        (extractor-level module names, e.g. ``backbone.net.blocks.0``), which must be the backbone's first stages,
        ``rest`` runs the others (none when every stage is named), the pooling, the head and the normalisation
        (``rest(trunk(images)) == self.training_features(images)`` under `embed_from`). Both share this
        extractor's modules. Lets training compute a frozen trunk's output once per image instead of once per step."""
        from lookalike.errors import LookalikeError

        described = self.backbone_stages()
        if described is None:
            raise LookalikeError(f"{type(self).__name__}: its backbone is not a plain sequence of stages, so it cannot "
                                 "be split after its first stages (supported: ResNet, SmallCNN, and timm's "
                                 "EfficientNet class (EfficientNet, -Lite, MobileNetV2, MNASNet) and ResNets).")
        stages, pool = described
        order = [name for name, _ in stages]
        wanted = list(dict.fromkeys(names))
        if not wanted or order[:len(wanted)] != wanted:
            shown = ", ".join(order[:6]) + (" ..." if len(order) > 6 else "")
            raise LookalikeError(f"the layers {wanted} are not the first stages of {type(self).__name__}'s backbone "
                                 f"in order; its stages: {shown}. Name a prefix of them, in that order.")
        trunk = nn.Sequential(*(module for _, module in stages[:len(wanted)]))
        return trunk, _Rest(self, [module for _, module in stages[len(wanted):]], pool)

    def freeze_backbone(self) -> None:
        """Train only the head (e.g. for the first epochs on top of pretrained weights). Only gradients are
        switched off: call `self.backbone.eval()` too to keep BatchNorm statistics fixed."""
        self.backbone.requires_grad_(False)

    def unfreeze_backbone(self) -> None:
        """Make the backbone trainable again."""
        self.backbone.requires_grad_(True)


def _output_channels(stages: list[nn.Module]) -> int:
    """Channels of what `stages` return, from one small blank image run in eval mode (BatchNorm statistics
    untouched)."""
    modes = [(module, module.training) for stage in stages for module in stage.modules()]
    try:
        for module, _ in modes:
            module.training = False
        with torch.no_grad():
            maps = torch.zeros(1, 3, 64, 64)
            for stage in stages:
                maps = stage(maps)
    finally:
        for module, training in modes:
            module.training = training
    return int(maps.shape[1])


class _Rest(nn.Module):
    """The part of an extractor after a split trunk: later stages, pooling, head, normalisation."""

    def __init__(self, extractor: Extractor, stages: list[nn.Module], pool: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.stages = nn.Sequential(*stages)
        self.head = extractor.head
        self.normalise = extractor.normalise
        self._pool = [pool]  # a bound method of the backbone, or a module it already holds

    def forward(self, maps: Tensor) -> Tensor:
        features = self.head(self._pool[0](self.stages(maps)))
        return F.normalize(features, dim=1) if self.normalise else features
