from __future__ import annotations

import pytest
import torch

from lookalike.errors import LookalikeError
from lookalike.models.mixstyle import MixStyle, attach_mixstyle


def _stats(x):
    return x.mean(dim=(2, 3)), x.var(dim=(2, 3)).sqrt()


def test_mixstyle_mixes_channel_statistics_and_keeps_the_content():
    """Output statistics are lam * own + (1 - lam) * the permuted image's; the normalised content is the input's."""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 8) * torch.rand(6, 3, 1, 1) * 4 + torch.randn(6, 3, 1, 1) * 3
    mix = MixStyle(p=1.0, alpha=0.3, eps=0.0).train()
    torch.manual_seed(1)
    out = mix(x)
    torch.manual_seed(1)  # replay the draws: the p test, lam, the permutation
    torch.rand(())
    lam = torch.distributions.Beta(0.3, 0.3).sample((6, 1, 1, 1)).view(6, 1)
    perm = torch.randperm(6)
    mu, sig = _stats(x)
    out_mu, out_sig = _stats(out)
    assert torch.allclose(out_mu, lam * mu + (1 - lam) * mu[perm], atol=1e-5)
    assert torch.allclose(out_sig, lam * sig + (1 - lam) * sig[perm], atol=1e-4)
    normalised = (x - mu[..., None, None]) / sig[..., None, None]
    assert torch.allclose((out - out_mu[..., None, None]) / out_sig[..., None, None], normalised, atol=1e-4)


def test_mixstyle_is_the_identity_in_eval_mode_and_at_p_zero():
    x = torch.randn(4, 3, 5, 5)
    assert torch.equal(MixStyle(p=1.0).eval()(x), x)
    assert torch.equal(MixStyle(p=0.0).train()(x), x)
    with pytest.raises(LookalikeError, match="p must be in"):
        MixStyle(p=1.5)


def test_attach_follows_the_owner_mode_not_the_hooked_layer_mode():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 3))
    mix = MixStyle(p=1.0)
    attach_mixstyle([net[0]], mix)
    net.eval()  # e.g. a frozen layer
    x = torch.randn(4, 3, 9, 9)
    mix.eval()
    reference = net(x)
    mix.train()
    torch.manual_seed(0)
    assert not torch.allclose(net(x), reference)
