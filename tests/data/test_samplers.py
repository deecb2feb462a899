"""Batch samplers: batch structure, epoch coverage, reproducibility, DDP split, category rules, error messages."""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lookalike.data.samplers import BalanceSampler, CategoryBalanceSampler, DistinctCategoryBalanceSampler
from lookalike.errors import SamplerError


def make_labels(counts: list[int], seed: int = 0) -> np.ndarray:
    """Labels 0..len(counts)-1 with the given item counts, in a shuffled dataset order."""
    labels = np.repeat(np.arange(len(counts)), counts)
    return labels[np.random.default_rng(seed).permutation(len(labels))]


COUNTS = [2, 3, 5, 9, 2, 4, 7, 3, 6, 2, 8, 4, 3]  # 13 labels, several with fewer than K=4 items


def check_chunks(batch: list[int], labels: np.ndarray, n_groups: int, k: int) -> list[int]:
    """Assert the batch is n_groups label chunks of k items; return the chunk labels."""
    assert len(batch) == n_groups * k
    chunk_labels = []
    for chunk in np.asarray(batch).reshape(n_groups, k):
        (label,) = set(labels[chunk].tolist())
        n_items = int((labels == label).sum())
        # distinct where possible: min(n, k) distinct items, each repeated at most ceil(k / n) times
        assert len(set(chunk.tolist())) == min(n_items, k)
        assert max(Counter(chunk.tolist()).values()) == (-(-k // n_items) if n_items < k else 1)
        chunk_labels.append(label)
    return chunk_labels


# --- BalanceSampler -------------------------------------------------------------------------------------


def test_balance_batches_hold_p_labels_times_k_items_and_cover_labels_once():
    labels = make_labels(COUNTS)
    sampler = BalanceSampler(labels, n_labels=4, n_instances=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 13 // 4
    used = []
    for batch in batches:
        chunk_labels = check_chunks(batch, labels, 4, 4)
        assert len(set(chunk_labels)) == 4
        used += chunk_labels
    assert len(used) == len(set(used)) == 12  # every label at most once; 13 % 4 = 1 label skipped this epoch


def test_balance_skipped_labels_rotate_across_epochs():
    labels = make_labels(COUNTS)
    sampler = BalanceSampler(labels, n_labels=4, n_instances=2)
    skipped = set()
    for epoch in range(30):
        sampler.set_epoch(epoch)
        used = set(labels[np.concatenate(list(sampler))].tolist())
        skipped |= set(range(13)) - used
    assert len(skipped) > 5


def test_balance_every_label_when_divisible_and_with_drop_last_labels_false():
    labels = make_labels(COUNTS[:12])
    used = [labels[b[0]] for b in BalanceSampler(labels, 4, 2) for b in np.reshape(b, (4, 2))]
    assert sorted(used) == list(range(12))

    labels = make_labels(COUNTS)
    sampler = BalanceSampler(labels, n_labels=4, n_instances=4, drop_last_labels=False)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4
    used = [label for batch in batches for label in check_chunks(batch, labels, 4, 4)]
    assert set(used) == set(range(13))
    assert all(len(set(check_chunks(b, labels, 4, 4))) == 4 for b in batches)


def test_balance_reproducible_under_seed_and_epoch():
    labels = make_labels(COUNTS)
    a, b = BalanceSampler(labels, 3, 4, seed=7), BalanceSampler(labels, 3, 4, seed=7)
    assert list(a) == list(b) == list(a)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(BalanceSampler(labels, 3, 4, seed=8)) != list(BalanceSampler(labels, 3, 4, seed=7))


def test_balance_ddp_ranks_are_disjoint_and_rebuild_the_truncated_plan():
    labels = make_labels([3] * 23)
    single = BalanceSampler(labels, 2, 3, seed=1)
    single.set_epoch(5)
    plan = [b.tolist() for b in single.epoch_plan()]
    assert plan == list(single) and len(plan) == 11
    ranks = []
    for rank in range(3):
        sampler = BalanceSampler(labels, 2, 3, seed=1, rank=rank, world_size=3)
        sampler.set_epoch(5)
        ranks.append(list(sampler))
        assert len(ranks[-1]) == len(sampler) == 3
    interleaved = [ranks[i % 3][i // 3] for i in range(9)]
    assert interleaved == plan[:9]
    flat = [i for r in ranks for b in r for i in b]
    owner = {}
    for r, batches in enumerate(ranks):  # no batch shared between ranks
        for batch in batches:
            assert tuple(batch) not in owner
            owner[tuple(batch)] = r
    assert len(flat) == 9 * 6


def test_balance_with_dataloader_batch_sampler():
    labels = make_labels(COUNTS)
    dataset = TensorDataset(torch.arange(len(labels)), torch.as_tensor(labels))
    sampler = BalanceSampler(labels, 3, 2, seed=0)
    loaded = list(DataLoader(dataset, batch_sampler=sampler))
    assert len(loaded) == len(sampler)
    for (index, label), batch in zip(loaded, sampler):
        assert index.tolist() == batch
        assert torch.equal(label, torch.as_tensor(labels[batch]))
        assert len(label.unique()) == 3


@pytest.mark.parametrize(
    ("kwargs", "parts"),
    [
        (dict(labels=make_labels([2] * 5), n_labels=8, n_instances=2), ["n_labels=8", "only 5 distinct labels", "n_labels <= 5"]),
        (dict(labels=make_labels([1, 2, 1, 3, 1]), n_labels=2, n_instances=2), ["3 label(s) have a single item", "0, 2, 4", "Remove"]),
        (dict(labels=make_labels([1] * 14 + [2]), n_labels=2, n_instances=2), ["14 label(s)", "(4 more)"]),
        (dict(labels=make_labels([2] * 5), n_labels=2, n_instances=1), ["n_instances=1", ">= 2"]),
        (dict(labels=make_labels([2] * 5), n_labels=1, n_instances=2), ["n_labels=1", ">= 2"]),
        (dict(labels=[], n_labels=2, n_instances=2), ["labels is empty"]),
        (dict(labels=make_labels([2] * 5), n_labels=2, n_instances=2, rank=2, world_size=2), ["rank=2", "world_size=2"]),
        (dict(labels=make_labels([2] * 5), n_labels=2, n_instances=2, world_size=3), ["only 2 batch(es)", "world_size=3"]),
        (dict(labels=make_labels([2] * 5), n_labels=2, n_instances=2, seed=-1), ["seed=-1"]),
    ],
)
def test_balance_errors(kwargs, parts):
    with pytest.raises(SamplerError) as error:
        BalanceSampler(**kwargs)
    for part in parts:
        assert part in str(error.value)


# --- category samplers ------------------------------------------------------------------------------------

CAT_COUNTS = [2, 3, 4, 2, 5, 3, 2, 6, 2, 3, 4, 2, 3, 2, 4, 5, 2, 3]  # 18 labels
L2C = {label: ["shoes", "hats", "flags"][label % 3] for label in range(18)}  # 6 labels per category


def check_category_batch(batch, labels, c, p, k, label2category, distinct_labels=True):
    chunk_labels = check_chunks(batch, labels, c * p, k)
    per_category = [chunk_labels[i * p : (i + 1) * p] for i in range(c)]
    categories = []
    for group in per_category:
        (category,) = {label2category[label] for label in group}
        categories.append(category)
        if distinct_labels:
            assert len(set(group)) == p
    assert len(set(categories)) == c
    return chunk_labels


def test_category_balance_structure_and_length():
    labels = make_labels(CAT_COUNTS)
    sampler = CategoryBalanceSampler(labels, L2C, n_categories=2, n_labels=3, n_instances=3, seed=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 18 // 6
    for batch in batches:
        check_category_batch(batch, labels, 2, 3, 3, L2C)
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_category_balance_resample_labels_for_small_categories():
    labels = make_labels(CAT_COUNTS)
    l2c = {label: ("tiny" if label < 2 else "big") for label in range(18)}
    with pytest.raises(SamplerError) as error:
        CategoryBalanceSampler(labels, l2c, n_categories=2, n_labels=3, n_instances=2)
    for part in ["1 category has fewer than n_labels=3", "'tiny' (2 labels)", "n_labels <= 2", "resample_labels=True"]:
        assert part in str(error.value)
    sampler = CategoryBalanceSampler(labels, l2c, n_categories=2, n_labels=3, n_instances=2, resample_labels=True)
    for batch in sampler:
        chunk_labels = check_category_batch(batch, labels, 2, 3, 2, l2c, distinct_labels=False)
        tiny = [x for x in chunk_labels if l2c[x] == "tiny"]
        assert sorted(set(tiny)) == [0, 1] and len(tiny) == 3  # both labels, one repeated only once


@pytest.mark.parametrize("cls", [CategoryBalanceSampler, DistinctCategoryBalanceSampler])
def test_category_errors(cls):
    labels = make_labels(CAT_COUNTS)
    with pytest.raises(SamplerError, match=r"n_categories=4 but the data has only 3 categories .*n_categories <= 3"):
        cls(labels, L2C, n_categories=4, n_labels=2, n_instances=2)
    with pytest.raises(SamplerError, match=r"no category for 2 label\(s\): 16, 17"):
        cls(labels, {k: v for k, v in L2C.items() if k < 16}, n_categories=2, n_labels=2, n_instances=2)
    with pytest.raises(SamplerError, match=r"3 categories have fewer than n_labels=7 labels"):
        cls(labels, L2C, n_categories=2, n_labels=7, n_instances=2)
    with pytest.raises(SamplerError, match=r"n_instances=1"):
        cls(labels, L2C, n_categories=2, n_labels=2, n_instances=1)
    with pytest.raises(SamplerError, match=r"at least 2 labels"):
        cls(labels, L2C, n_categories=1, n_labels=1, n_instances=2)


def test_distinct_category_uses_each_label_at_most_once():
    labels = make_labels(CAT_COUNTS)
    l2c = {label: ("a" if label < 9 else "b" if label < 14 else "c") for label in range(18)}  # 9, 5, 4 labels
    sampler = DistinctCategoryBalanceSampler(labels, l2c, n_categories=2, n_labels=2, n_instances=2, seed=2)
    # groups of 2 labels: a=4, b=2, c=2 -> largest t with sum(min(s, t)) >= 2t is 4
    assert len(sampler) == 4
    for epoch in range(5):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 4
        used = [x for batch in batches for x in check_category_batch(batch, labels, 2, 2, 2, l2c)]
        assert len(used) == len(set(used)) == 16


@functools.lru_cache(maxsize=None)
def brute_max_batches(groups: tuple[int, ...], c: int) -> int:
    """Most batches of c distinct categories, each category used at most groups[i] times (exhaustive search)."""
    import itertools

    best = 0
    for picked in itertools.combinations([i for i, g in enumerate(groups) if g > 0], c):
        left = list(groups)
        for i in picked:
            left[i] -= 1
        best = max(best, 1 + brute_max_batches(tuple(left), c))
    return best


def test_distinct_category_epoch_length_is_optimal():
    rng = np.random.default_rng(0)
    for _ in range(25):
        n_cat, p = int(rng.integers(2, 5)), int(rng.integers(1, 3))
        c = int(rng.integers(1, n_cat + 1))
        if c * p < 2:
            p = 2
        sizes = rng.integers(p, 4 * p + 1, size=n_cat)
        l2c, counts, label = {}, [], 0
        for cat, size in enumerate(sizes):
            for _ in range(size):
                l2c[label] = f"c{cat}"
                counts.append(2)
                label += 1
        expected = brute_max_batches(tuple(sorted((sizes // p).tolist())), c)
        sampler = DistinctCategoryBalanceSampler(make_labels(counts), l2c, c, p, 2, seed=int(rng.integers(100)))
        assert len(sampler) == len(list(sampler)) == expected


def test_category_samplers_ddp_split():
    labels = make_labels(CAT_COUNTS * 3)
    l2c = {label: f"c{label % 4}" for label in range(54)}
    for cls in (CategoryBalanceSampler, DistinctCategoryBalanceSampler):
        plan = [b.tolist() for b in cls(labels, l2c, 2, 2, 2, seed=5).epoch_plan()]
        ranks = [list(cls(labels, l2c, 2, 2, 2, seed=5, rank=r, world_size=2)) for r in range(2)]
        n = len(plan) // 2
        assert all(len(r) == n for r in ranks)
        assert [ranks[i % 2][i // 2] for i in range(2 * n)] == plan[: 2 * n]
