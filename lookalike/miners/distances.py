"""Euclidean distances with a numerically safe square root (value 0 and gradient 0 at zero distance)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["safe_sqrt", "paired_euclidean", "pairwise_euclidean"]


def safe_sqrt(squared: Tensor, eps: float = 1e-12) -> Tensor:
    """sqrt that is 0 with a zero gradient where ``squared <= eps`` (a plain sqrt has an infinite gradient at 0)."""
    ok = squared > eps
    return torch.where(ok, torch.where(ok, squared, torch.ones_like(squared)).sqrt(), torch.zeros_like(squared))


def paired_euclidean(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise distances ``||x_i - y_i||`` of two (n, dim) tensors: (n,)."""
    return safe_sqrt((x - y).pow(2).sum(-1))


def pairwise_euclidean(x: Tensor, y: Tensor | None = None) -> Tensor:
    """All distances ``||x_i - y_j||``: (n, m); ``y=None`` means ``y = x`` (then the diagonal is exactly 0).

    Computed as ``|x|^2 + |y|^2 - 2 x.y`` (one matmul), clamped at 0 against rounding.
    """
    other = x if y is None else y
    squared = x.pow(2).sum(1, keepdim=True) + other.pow(2).sum(1)[None, :] - 2.0 * (x @ other.T)
    if y is None:
        eye = torch.eye(len(x), dtype=torch.bool, device=x.device)
        squared = squared.masked_fill(eye, 0.0)
    return safe_sqrt(squared.clamp_min(0.0))
