"""Global pooling of CNN feature maps: average, or generalised mean (GeM) with a learnable exponent."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lookalike.errors import LookalikeError, unknown_choice

__all__ = ["GeM", "make_pooling", "POOLINGS"]

POOLINGS = ("avg", "gem")


class GeM(nn.Module):
    """Generalised mean pooling ``mean(x^p)^(1/p)`` over H, W; p=1 is average pooling, large p tends to max."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        p = self.p.clamp(min=1.0)
        return x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class _AvgPool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(-2, -1))


def make_pooling(name: str) -> nn.Module:
    """The pooling module called `name` ("avg" or "gem"), mapping (B, C, H, W) to (B, C)."""
    if name == "avg":
        return _AvgPool()
    if name == "gem":
        return GeM()
    raise LookalikeError(unknown_choice("pooling", name, POOLINGS))
