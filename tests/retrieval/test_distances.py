"""Canonical pair distances: float64 accuracy, and bit-identical whatever the batch they are computed in."""

import torch

from lookalike.retrieval.distances import pair_distances, row_sq_norms, tree_sum, tree_sum_


def test_tree_sums_agree_bit_for_bit_and_are_accurate():
    gen = torch.Generator().manual_seed(0)
    for d in (1, 2, 3, 7, 384, 385):
        x = torch.randn(9, d, dtype=torch.float64, generator=gen)
        a = tree_sum(x)
        assert torch.equal(a, tree_sum_(x.clone()))
        assert torch.allclose(a, x.sum(dim=1), rtol=1e-12, atol=1e-12)
        # a row's sum does not depend on the other rows of the batch
        assert torch.equal(tree_sum(x[3:4]), a[3:4])


def test_pair_distances_match_float64_and_do_not_depend_on_batching():
    gen = torch.Generator().manual_seed(1)
    q, g = torch.randn(30, 50, generator=gen), torch.randn(40, 50, generator=gen)
    qi, gi = torch.randint(0, 30, (500,), generator=gen), torch.randint(0, 40, (500,), generator=gen)
    q64, g64 = q.double()[qi], g.double()[gi]
    expected = {
        "cosine": 1 - torch.nn.functional.cosine_similarity(q64, g64, dim=1),
        "inner_product": -(q64 * g64).sum(1),
        "euclidean": (q64 - g64).norm(dim=1),
    }
    for distance, ref in expected.items():
        full = pair_distances(q, g, qi, gi, distance)
        assert full.dtype == torch.float32
        assert torch.allclose(full.double(), ref, rtol=1e-6, atol=1e-6)
        pieces = torch.cat([pair_distances(q, g, qi[a : a + 7], gi[a : a + 7], distance) for a in range(0, 500, 7)])
        assert torch.equal(full, pieces)
    assert torch.equal(
        pair_distances(q, g, qi, gi, "cosine", row_sq_norms(q)), pair_distances(q, g, qi, gi, "cosine")
    )


def test_identical_vectors_are_at_distance_zero():
    x = torch.randn(2000, 33, generator=torch.Generator().manual_seed(2)) * torch.logspace(-3, 3, 2000)[:, None]
    idx = torch.arange(2000)
    assert (pair_distances(x, x, idx, idx, "euclidean") == 0).all()
    assert (pair_distances(x, x, idx, idx, "cosine") == 0).all()
    to_zero = pair_distances(x, torch.zeros(1, 33), idx, torch.zeros(2000, dtype=torch.int64), "cosine")
    assert to_zero.tolist() == [1.0] * 2000
