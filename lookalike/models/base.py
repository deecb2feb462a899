"""`Extractor`: a backbone, an optional projection head and optional L2 normalisation, with one feat_dim."""

from __future__ import annotations

import os

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Extractor"]


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

    def freeze_backbone(self) -> None:
        """Train only the head (e.g. for the first epochs on top of pretrained weights). Only gradients are
        switched off: call `self.backbone.eval()` too to keep BatchNorm statistics fixed."""
        self.backbone.requires_grad_(False)

    def unfreeze_backbone(self) -> None:
        """Make the backbone trainable again."""
        self.backbone.requires_grad_(True)
