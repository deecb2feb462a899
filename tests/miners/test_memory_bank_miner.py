"""MemoryBankMiner: ring buffer contents and wrap-around, mining over batch + bank against a brute force."""

from __future__ import annotations

import torch

from lookalike.miners import HardTripletsMiner, MemoryBankMiner


def batch(seed: int, n: int = 6, dim: int = 4, n_labels: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64), torch.randint(0, n_labels, (n,), generator=g)


def brute_mine(features, labels, cand_features, cand_labels, n_batch, k):
    """Per anchor: the k farthest positives and k nearest negatives among candidates, paired by rank."""
    out = []
    for a in range(len(features)):
        d = [float((features[a] - c).norm()) for c in cand_features]
        pos = sorted((j for j in range(len(cand_labels)) if cand_labels[j] == labels[a] and j != a), key=lambda j: (-d[j], j))
        neg = sorted((j for j in range(len(cand_labels)) if cand_labels[j] != labels[a]), key=lambda j: (d[j], j))
        out += [(a, p, q) for p, q in zip(pos[:k], neg[:k])]
    return out


def as_list(triplets):
    return list(zip(*(t.tolist() for t in triplets)))


def test_empty_bank_is_batch_hard_mining():
    features, labels = batch(0)
    miner = MemoryBankMiner(bank_size_in_batches=3)
    assert as_list(miner.mine(features, labels)) == as_list(HardTripletsMiner().mine(features, labels))
    assert miner.capacity == 18 and miner.n_filled == 0


def test_ring_buffer_fills_and_wraps():
    miner = MemoryBankMiner(bank_size_in_batches=2)
    batches = [batch(seed, n=4) for seed in range(3)]
    miner(*batches[0])
    assert miner.n_filled == 4 and torch.equal(miner.bank_features[:4], batches[0][0])
    miner(*batches[1])
    assert miner.n_filled == 8
    miner(*batches[2])  # wraps: the oldest batch is overwritten
    assert miner.n_filled == 8 and miner.capacity == 8
    assert torch.equal(miner.bank_features[:4], batches[2][0]) and torch.equal(miner.bank_labels[:4], batches[2][1])
    assert torch.equal(miner.bank_features[4:], batches[1][0]) and torch.equal(miner.bank_labels[4:], batches[1][1])
    # a smaller batch continues from the write position, an oversized one keeps its tail
    small = batch(9, n=3)
    miner.push(*small)
    assert torch.equal(miner.bank_features[4:7], small[0]) and torch.equal(miner.bank_features[7], batches[1][0][3])
    big = batch(10, n=11)
    miner.push(*big)
    assert sorted(map(tuple, miner.bank_features.tolist())) == sorted(map(tuple, big[0][3:].tolist()))
    miner.reset()
    assert miner.n_filled == 0


def test_mining_over_batch_and_partially_filled_bank_matches_brute_force():
    miner = MemoryBankMiner(bank_size_in_batches=3, tri_expand_k=2)
    history = []
    for step in range(5):
        features, labels = batch(step)
        filled = miner.bank_filled.clone() if miner.capacity else torch.zeros(0, dtype=torch.bool)
        cand_f = torch.cat([features, miner.bank_features[filled]]) if step else features
        cand_l = torch.cat([labels, miner.bank_labels[filled]]) if step else labels
        slot = torch.cat([torch.arange(6), 6 + filled.nonzero().squeeze(1)]) if step else torch.arange(6)
        expected = [(a, int(slot[p]), int(slot[q])) for a, p, q in brute_mine(features, labels, cand_f, cand_l, 6, 2)]
        got = as_list(miner.mine(features, labels))
        assert got == expected
        if step == 2:  # bank partially filled (2 of 3 batches): never an empty slot, some bank items used
            assert all(p < 6 + 12 and q < 6 + 12 for _, p, q in got)
            assert any(p >= 6 for _, p, _ in got) and any(q >= 6 for _, _, q in got)
        history.append(len(got))
        features.requires_grad_(True)
        anchors, positives, negatives = miner(features, labels)
        ia, ip, ineg = (torch.tensor(x) for x in zip(*expected))
        assert torch.equal(anchors, features[ia])
        assert len(positives) == len(negatives) == len(expected)
    assert history[0] <= 2 * 6 and history[-1] > history[0]


def test_forward_values_and_gradients():
    miner = MemoryBankMiner(bank_size_in_batches=1)
    old_features, old_labels = batch(0)
    miner(old_features, old_labels)
    features, labels = batch(1)
    features.requires_grad_(True)
    ia, ip, ineg = miner.mine(features, labels)
    union = torch.cat([features.detach(), old_features])
    anchors, positives, negatives = miner(features, labels)
    assert torch.equal(anchors, features[ia])
    assert torch.equal(positives, union[ip]) and torch.equal(negatives, union[ineg])
    (positives.sum() + negatives.sum()).backward()
    from_batch = torch.cat([ip[ip < 6], ineg[ineg < 6]]).unique()
    assert torch.all(features.grad.abs().sum(1)[from_batch] > 0)
    assert not miner.bank_features.requires_grad
    assert torch.equal(miner.bank_features, features.detach())  # the newest batch replaced the old one
