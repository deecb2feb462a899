"""`Extractor`: a backbone, an optional projection head and optional L2 normalisation, with one feat_dim."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

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
    """

    def __init__(self, backbone: nn.Module, backbone_dim: int, *, embedding_dim: int | None = None,
                 normalise: bool = True, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone_dim, embedding_dim) if embedding_dim else nn.Identity()
        self.normalise = normalise
        self._feat_dim = int(embedding_dim or backbone_dim)
        if weights is not None:
            self.load_weights(weights)

    @property
    def feat_dim(self) -> int:
        """Size of the embeddings this extractor returns."""
        return self._feat_dim

    def forward(self, images: Tensor) -> Tensor:
        features = self.head(self.backbone(images))
        return F.normalize(features, dim=1) if self.normalise else features

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
        ``rest`` runs the others (none when every stage is named), the pooling, the head and the normalisation.
        Both share this extractor's modules. Lets training compute a frozen trunk's output once per image instead of once per step."""
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
