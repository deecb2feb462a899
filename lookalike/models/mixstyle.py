"""MixStyle (Zhou et al., ICLR 2021) for CNN feature maps (B, C, H, W): mixes the per-channel feature statistics
of images in a batch during training, so that the network sees each image's content under other images' "style"
(in a CNN's early layers the channel means and standard deviations carry style: palette, shading, line weight) and
learns features that do not depend on it. A domain-generalisation regulariser: here, for drawing styles a model
never saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lookalike.errors import LookalikeError

__all__ = ["MixStyle", "attach_mixstyle"]


class MixStyle(nn.Module):
    """With probability ``p`` per batch (training mode only), each feature map's channel mean and standard deviation
    are replaced by a mix ``lam * own + (1 - lam) * another image's`` (``lam ~ Beta(alpha, alpha)`` per image, the
    other image a random permutation of the batch); the normalised content is kept. No parameters."""

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6) -> None:
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise LookalikeError(f"MixStyle: p must be in [0, 1], got {p!r}.")
        if not float(alpha) > 0.0:
            raise LookalikeError(f"MixStyle: alpha must be > 0, got {alpha!r}.")
        self.p, self.alpha, self.eps = float(p), float(alpha), float(eps)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or x.ndim != 4 or x.shape[0] < 2 or torch.rand(()).item() >= self.p:
            return x
        b, dtype = x.shape[0], x.dtype
        x = x.float()  # statistics in fp32, also under autocast
        mu = x.mean(dim=(2, 3), keepdim=True)
        sig = (x.var(dim=(2, 3), keepdim=True) + self.eps).sqrt()
        mu, sig = mu.detach(), sig.detach()  # the statistics are mixed, not learned through
        content = (x - mu) / sig
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((b, 1, 1, 1)).to(x.device)
        perm = torch.randperm(b, device=x.device)
        mixed_mu = lam * mu + (1 - lam) * mu[perm]
        mixed_sig = lam * sig + (1 - lam) * sig[perm]
        return (content * mixed_sig + mixed_mu).to(dtype)


def attach_mixstyle(layers: Sequence[nn.Module], mixstyle: MixStyle) -> list:
    """Apply ``mixstyle`` to the outputs of the modules ``layers`` (forward hooks; returns their handles).
    ``mixstyle.training`` decides whether it acts, so it can be owned by a training wrapper whose train / eval
    switching it follows, whatever mode the hooked layers are in (frozen layers stay in eval)."""
    return [layer.register_forward_hook(_MixOutput(mixstyle)) for layer in layers]


class _MixOutput:
    """A forward hook that passes a layer's output through MixStyle (a class, not a lambda: it pickles)."""

    def __init__(self, mixstyle: MixStyle) -> None:
        self.mixstyle = mixstyle

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return self.mixstyle(output)
