"""FNMR@FMR streamed in blocks equals numpy's percentile definition on the full pair matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lookalike.errors import LookalikeError
from lookalike.metrics import fnmr_at_fmr


def reference(emb, labels, is_query, is_gallery, fmr_vals):
    e = torch.nn.functional.normalize(emb.double(), dim=1)
    q, g = np.flatnonzero(is_query), np.flatnonzero(is_gallery)
    dist = (1 - e[q] @ e[g].T).clamp(min=0).numpy()
    same = labels[q][:, None] == labels[g][None, :]
    pair = q[:, None] != g[None, :]
    pos, neg = dist[same & pair], dist[~same & pair]
    return {f: float((pos > np.percentile(neg, f * 100)).mean()) for f in fmr_vals}


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_equals_percentile_reference(chunk):
    rng = np.random.default_rng(0)
    n = 300
    labels = rng.integers(0, 30, n)
    emb = torch.from_numpy(rng.normal(size=(n, 5)) + np.eye(30)[labels][:, :5] * 1.5).float()
    is_query, is_gallery = rng.random(n) < 0.6, rng.random(n) < 0.9
    fmr_vals = (0.001, 0.01, 0.1, 0.5, 1.0)
    ours = fnmr_at_fmr(emb, torch.from_numpy(labels), torch.from_numpy(is_query), torch.from_numpy(is_gallery),
                       fmr_vals, chunk_size=chunk)
    expected = reference(emb, labels, is_query, is_gallery, fmr_vals)
    for f in fmr_vals:
        assert ours[f] == pytest.approx(expected[f], abs=2e-3), f  # float32 blocks vs float64 reference


def test_undefined_without_negatives_or_positives():
    emb = torch.randn(4, 3)
    flags = torch.ones(4, dtype=torch.bool)
    assert fnmr_at_fmr(emb, torch.zeros(4, dtype=torch.long), flags, flags, (0.1,)) == {0.1: None}
    assert fnmr_at_fmr(emb, torch.arange(4), flags, flags, (0.1,)) == {0.1: None}


def test_fmr_values_are_fractions():
    flags = torch.ones(4, dtype=torch.bool)
    with pytest.raises(LookalikeError, match="fractions"):
        fnmr_at_fmr(torch.randn(4, 3), torch.arange(4), flags, flags, (10,))
