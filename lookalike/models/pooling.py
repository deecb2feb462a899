"""Global pooling of CNN feature maps: average, or generalised mean (GeM) with a learnable exponent."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lookalike.errors import LookalikeError, unknown_choice

__all__ = ["GeM", "AvgPool", "make_pooling", "POOLINGS"]

POOLINGS = ("avg", "gem")


class GeM(nn.Module):
    """Generalised mean pooling ``mean(x^p)^(1/p)`` over H, W; p=1 is average pooling, large p tends to max.

    Safe under mixed precision: inputs are clamped to ``eps`` (no 0^p or negative bases), p to ``>= 1``, and
    the power is taken in float32 (x^p overflows float16 for x > ~40 at p=3).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        if p < 1:
            raise LookalikeError(f"GeM needs p >= 1 (p=1 is average pooling), got p={p}")
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        p = self.p.float().clamp(min=1.0)
        pooled = x.float().clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)
        return pooled.to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={float(self.p):.3g}, eps={self.eps}"


class AvgPool(nn.Module):
    """Global average pooling (B, C, H, W) -> (B, C); works for any memory format."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(-2, -1))


def make_pooling(name: str) -> nn.Module:
    """The pooling module called `name` ("avg" or "gem"), mapping (B, C, H, W) to (B, C)."""
    if name == "avg":
        return AvgPool()
    if name == "gem":
        return GeM()
    raise LookalikeError(unknown_choice("pooling", name, POOLINGS))
