"""Components a user might write, named by import path in the pipeline tests."""

from __future__ import annotations

import torch
from torch import nn


class NoFeatDim(nn.Module):
    """An extractor that forgets to say how long its embeddings are (no ``feat_dim``)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class NoBackbone(NoFeatDim):
    """A plain extractor with `feat_dim` but no `backbone` part."""

    feat_dim = 4
