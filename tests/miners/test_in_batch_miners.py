"""In-batch miners (all, hard, N-hard) against brute-force triple loops on small random batches."""

from __future__ import annotations

import pytest
import torch

from lookalike.miners import AllTripletsMiner, HardTripletsMiner, NHardTripletsMiner, pairwise_euclidean


def random_batch(seed: int, n: int = 11, dim: int = 5, n_labels: int = 4):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, n_labels, (n,), generator=g)
    labels[-1] = n_labels + 7  # a singleton label: an anchor without positives, still a negative for others
    return features, labels


def brute_distances(features):
    n = len(features)
    return [[float(((features[i] - features[j]) ** 2).sum().sqrt()) for j in range(n)] for i in range(n)]


def brute_all(labels):
    lab = labels.tolist()
    n = len(lab)
    return [
        (a, p, q)
        for a in range(n)
        for p in range(n)
        for q in range(n)
        if a != p and lab[a] == lab[p] and lab[q] != lab[a]
    ]


def as_list(triplets):
    return list(zip(*(t.tolist() for t in triplets)))


@pytest.mark.parametrize("seed", range(5))
def test_all_triplets_equal_brute_force_in_lexicographic_order(seed):
    features, labels = random_batch(seed)
    assert as_list(AllTripletsMiner().mine(features, labels)) == brute_all(labels)


def test_pairwise_euclidean_matches_brute_force():
    features, _ = random_batch(0)
    assert torch.allclose(pairwise_euclidean(features), torch.tensor(brute_distances(features), dtype=torch.float64))
    assert torch.all(pairwise_euclidean(features).diagonal() == 0)


def test_all_triplets_cap_is_a_uniform_subset():
    features, labels = random_batch(1)
    everything = brute_all(labels)
    miner = AllTripletsMiner(max_output_triplets=20, seed=3)
    first = as_list(miner.mine(features, labels))
    second = as_list(miner.mine(features, labels))
    assert len(first) == len(set(first)) == 20 and set(first) <= set(everything)
    assert first == sorted(first) and first != second  # the generator advances between calls
    assert as_list(AllTripletsMiner(max_output_triplets=20, seed=3).mine(features, labels)) == first
    assert as_list(AllTripletsMiner(max_output_triplets=10**6).mine(features, labels)) == everything
    # uniform: over many draws every triplet is picked about 20 / len(everything) of the time
    counts = torch.zeros(len(everything))
    position = {t: i for i, t in enumerate(everything)}
    for _ in range(300):
        for t in as_list(miner.mine(features, labels)):
            counts[position[t]] += 1
    expected = 300 * 20 / len(everything)
    assert counts.min() > 0.3 * expected and counts.max() < 2.0 * expected


def test_all_triplets_none_when_one_label_or_no_pairs():
    features = torch.randn(4, 3)
    for labels in (torch.zeros(4, dtype=torch.long), torch.arange(4)):
        ia, ip, ineg = AllTripletsMiner().mine(features, labels)
        assert len(ia) == len(ip) == len(ineg) == 0
        anchors, positives, negatives = AllTripletsMiner()(features, labels)
        assert anchors.shape == positives.shape == negatives.shape == (0, 3)


@pytest.mark.parametrize("seed", range(5))
def test_hard_triplets_equal_brute_arg_max_and_min(seed):
    features, labels = random_batch(seed)
    dist, lab = brute_distances(features), labels.tolist()
    expected = []
    for a in range(len(lab)):
        positives = [p for p in range(len(lab)) if p != a and lab[p] == lab[a]]
        negatives = [q for q in range(len(lab)) if lab[q] != lab[a]]
        if positives and negatives:
            expected.append((a, max(positives, key=lambda p: dist[a][p]), min(negatives, key=lambda q: dist[a][q])))
    assert as_list(HardTripletsMiner().mine(features, labels)) == expected


def brute_n_hard(features, labels, pos_range, neg_range):
    dist, lab = brute_distances(features), labels.tolist()
    out = []
    for a in range(len(lab)):
        positives = sorted((p for p in range(len(lab)) if p != a and lab[p] == lab[a]), key=lambda p: -dist[a][p])
        negatives = sorted((q for q in range(len(lab)) if lab[q] != lab[a]), key=lambda q: dist[a][q])
        out += [(a, p, q) for p in positives[slice(*pos_range)] for q in negatives[slice(*neg_range)]]
    return out


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("n_positive", "n_negative"), [((0, 1), (0, 1)), ((0, 2), (1, 4)), ((1, 5), (0, 2)), ((2, 3), (8, 30))])
def test_n_hard_triplets_equal_brute_sort(seed, n_positive, n_negative):
    features, labels = random_batch(seed, n=12)
    got = as_list(NHardTripletsMiner(n_positive, n_negative).mine(features, labels))
    assert got == brute_n_hard(features, labels, n_positive, n_negative)


def test_n_hard_int_shorthand_and_hard_equivalence():
    features, labels = random_batch(4)
    hard = as_list(HardTripletsMiner().mine(features, labels))
    assert as_list(NHardTripletsMiner(1, 1).mine(features, labels)) == hard
    assert as_list(NHardTripletsMiner(2, 3).mine(features, labels)) == brute_n_hard(features, labels, (0, 2), (0, 3))
    with pytest.raises(ValueError, match="n_positive"):
        NHardTripletsMiner((2, 2), 1)


@pytest.mark.parametrize("miner", [AllTripletsMiner(), HardTripletsMiner(), NHardTripletsMiner((0, 2), (0, 2))])
def test_forward_gathers_batch_rows_with_gradient(miner):
    features, labels = random_batch(2)
    features.requires_grad_(True)
    anchors, positives, negatives = miner(features, labels)
    ia, ip, ineg = miner.mine(features, labels)
    assert torch.equal(anchors, features[ia]) and torch.equal(positives, features[ip]) and torch.equal(negatives, features[ineg])
    (anchors.sum() + positives.sum() - negatives.sum()).backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="2-D"):
        HardTripletsMiner()(torch.randn(4), torch.arange(4))
    with pytest.raises(ValueError, match="one label per row"):
        HardTripletsMiner()(torch.randn(4, 2), torch.arange(3))
