"""Batch samplers for metric learning: P labels x K instances per batch (optionally C categories x P labels x K).

Every sampler here is a *batch* sampler (pass it as ``DataLoader(dataset, batch_sampler=sampler)``): ``__iter__``
yields lists of dataset indices and ``__len__`` is the exact number of batches this rank gets per epoch.

Reproducibility. The batches of an epoch are a pure function of ``(seed, epoch)``: call ``set_epoch(epoch)``
before each epoch (iterating does not advance the epoch by itself, so forgetting ``set_epoch`` repeats the
same batches). ``epoch_plan()`` returns the whole single-process plan of the current epoch as an array.

Distributed training. Every rank builds the same epoch plan (all ranks must use the same ``seed`` and epoch),
the plan is truncated to a multiple of ``world_size`` batches, and rank ``r`` takes batches
``r, r + world_size, r + 2 * world_size, ...``. The ranks' batches are therefore disjoint, each rank gets
``n_batches // world_size`` batches, and together they are the single-process plan without its last
``n_batches % world_size`` batches.

Layout of a batch: label-major, i.e. the K instances of the first label, then the K instances of the second
label, and so on (for the category samplers, the P labels of the first category come first).

Instances. A label with at least K items gives K distinct items, drawn at random. A label with fewer items
than K gives all its items in a random order, then cycles through that order again only as much as needed:
with c items, each item appears ``K // c`` or ``K // c + 1`` times.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from lookalike.errors import SamplerError

__all__ = ["BalanceSampler", "CategoryBalanceSampler", "DistinctCategoryBalanceSampler"]

_SHOWN = 10  # how many offending labels or categories an error message names


def _listing(values: Sequence[Any]) -> str:
    shown = ", ".join(repr(v) for v in values[:_SHOWN])
    return shown + (f", ... ({len(values) - _SHOWN} more)" if len(values) > _SHOWN else "")


def _as_label_array(labels: Any, who: str) -> np.ndarray:
    if hasattr(labels, "detach"):  # torch tensor
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise SamplerError(f"{who}: labels must be a 1-D sequence with one label per dataset item; got shape {array.shape}.")
    if array.size == 0:
        raise SamplerError(f"{who}: labels is empty; the sampler needs a dataset with labelled items.")
    return array


def _check_int(value: Any, name: str, minimum: int, who: str, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SamplerError(f"{who}: {name} must be an integer; got {value!r}.")
    if value < minimum:
        raise SamplerError(f"{who}: {name}={value} but it must be >= {minimum}{hint}.")
    return int(value)


class _LabelGroups:
    """Dataset indices grouped by label: ``order[starts[c]: starts[c] + counts[c]]`` are the items of label code c."""

    def __init__(self, labels: np.ndarray, who: str) -> None:
        self.values, codes, self.counts = np.unique(labels, return_inverse=True, return_counts=True)
        self.order = np.argsort(codes, kind="stable")
        self.starts = np.cumsum(self.counts) - self.counts
        singles = self.values[self.counts < 2].tolist()
        if singles:
            raise SamplerError(
                f"{who}: {len(singles)} label(s) have a single item, but a triplet needs at least 2 items per label: "
                f"{_listing(singles)}. Remove these labels from the training data (keep labels with >= 2 rows) "
                "before building the sampler."
            )

    def __len__(self) -> int:
        return len(self.values)

    def draw(self, chosen: np.ndarray, n_instances: int, rng: np.random.Generator) -> np.ndarray:
        """For every entry of ``chosen`` (label codes, repeats allowed) ``n_instances`` dataset indices: (M, K).

        Vectorised: the items of all chosen labels are laid out in one array, shuffled inside each block by
        sorting on random keys, and read cyclically (so items repeat only when the label has fewer than K).
        """
        counts = self.counts[chosen]
        block_start = np.cumsum(counts) - counts
        block = np.repeat(np.arange(len(chosen)), counts)
        local = np.arange(int(counts.sum())) - block_start[block]
        items = self.order[self.starts[chosen][block] + local]
        shuffled = items[np.lexsort((rng.random(len(items)), block))]
        positions = block_start[:, None] + np.arange(n_instances)[None, :] % counts[:, None]
        return shuffled[positions]


class _PlannedBatchSampler(Sampler[list[int]]):
    """Common machinery: epoch plan as a (n_batches, batch_size) array, set_epoch, rank/world_size split."""

    def __init__(self, seed: int, rank: int, world_size: int) -> None:
        who = type(self).__name__
        self.seed = _check_int(seed, "seed", 0, who)
        self.world_size = _check_int(world_size, "world_size", 1, who)
        self.rank = _check_int(rank, "rank", 0, who)
        if self.rank >= self.world_size:
            raise SamplerError(f"{who}: rank={rank} must be smaller than world_size={world_size}.")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches ``__iter__`` yields (the plan is a pure function of seed and epoch)."""
        self.epoch = _check_int(epoch, "epoch", 0, type(self).__name__)

    def _n_planned_batches(self) -> int:
        raise NotImplementedError

    def _make_plan(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def epoch_plan(self) -> np.ndarray:
        """The single-process plan of the current epoch: dataset indices, shape (n_batches, batch_size)."""
        return self._make_plan(np.random.default_rng([self.seed, self.epoch]))

    def _check_enough_batches(self) -> None:
        n = self._n_planned_batches()
        if n < self.world_size:
            raise SamplerError(
                f"{type(self).__name__}: an epoch has only {n} batch(es), fewer than world_size={self.world_size}, "
                "so some ranks would get no batch. Use smaller batches (n_labels / n_instances) or fewer processes."
            )

    def __len__(self) -> int:
        return self._n_planned_batches() // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        plan = self.epoch_plan()
        kept = plan[: len(plan) // self.world_size * self.world_size]
        for batch in kept[self.rank :: self.world_size]:
            yield batch.tolist()


class BalanceSampler(_PlannedBatchSampler):
    """Batches of P = ``n_labels`` distinct labels x K = ``n_instances`` items each.

    Epoch: the labels are shuffled (differently every epoch) and cut into groups of P, so an epoch uses every
    label at most once and has ``n_distinct_labels // P`` batches. The ``n_distinct_labels % P`` labels left
    over are skipped for this epoch only; as the shuffle changes with the epoch, every label is skipped equally
    often in the long run. With ``drop_last_labels=False`` they are not skipped: they form one more batch,
    completed with labels drawn at random from the other batches, so every label is used every epoch and the
    epoch has ``ceil(n_distinct_labels / P)`` batches.
    """

    def __init__(
        self,
        labels: Sequence[Any] | np.ndarray,
        n_labels: int,
        n_instances: int,
        *,
        seed: int = 0,
        drop_last_labels: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(seed, rank, world_size)
        who = type(self).__name__
        self.n_labels = _check_int(n_labels, "n_labels", 2, who, " so that every batch holds negatives")
        self.n_instances = _check_int(
            n_instances, "n_instances", 2, who, " so that every label in a batch has a positive pair"
        )
        self.drop_last_labels = bool(drop_last_labels)
        self._groups = _LabelGroups(_as_label_array(labels, who), who)
        n_distinct = len(self._groups)
        if n_distinct < self.n_labels:
            raise SamplerError(
                f"{who}: n_labels={self.n_labels} but the data has only {n_distinct} distinct labels; "
                f"use n_labels <= {n_distinct} (or add labels)."
            )
        self._check_enough_batches()

    @property
    def batch_size(self) -> int:
        return self.n_labels * self.n_instances

    def _n_planned_batches(self) -> int:
        n_distinct, p = len(self._groups), self.n_labels
        return n_distinct // p if self.drop_last_labels else -(-n_distinct // p)

    def _make_plan(self, rng: np.random.Generator) -> np.ndarray:
        p = self.n_labels
        order = rng.permutation(len(self._groups))
        n_full = len(order) // p * p
        chosen = order[:n_full]
        if not self.drop_last_labels and n_full < len(order):
            rest = order[n_full:]
            fill = rng.choice(chosen, size=p - len(rest), replace=False)
            chosen = np.concatenate([chosen, rest, fill])
        return self._groups.draw(chosen, self.n_instances, rng).reshape(-1, self.batch_size)


class _CategorySamplerBase(_PlannedBatchSampler):
    """Shared validation for the category samplers: label -> category lookup and the C / P / K checks.

    ``label2category`` maps every label of ``labels`` to its category; categories are compared as strings.
    """

    def __init__(
        self,
        labels: Sequence[Any] | np.ndarray,
        label2category: Mapping[Any, Any],
        n_categories: int,
        n_labels: int,
        n_instances: int,
        seed: int,
        rank: int,
        world_size: int,
        allow_small_categories: bool,
    ) -> None:
        super().__init__(seed, rank, world_size)
        who = type(self).__name__
        self.n_categories = _check_int(n_categories, "n_categories", 1, who)
        self.n_labels = _check_int(n_labels, "n_labels", 1, who)
        self.n_instances = _check_int(
            n_instances, "n_instances", 2, who, " so that every label in a batch has a positive pair"
        )
        if self.n_categories * self.n_labels < 2:
            raise SamplerError(
                f"{who}: n_categories * n_labels = {self.n_categories * self.n_labels} but a batch needs at least "
                "2 labels to hold negatives; increase n_labels or n_categories."
            )
        self._groups = _LabelGroups(_as_label_array(labels, who), who)
        label_values = self._groups.values.tolist()
        missing = [v for v in label_values if v not in label2category]
        if missing:
            raise SamplerError(
                f"{who}: label2category has no category for {len(missing)} label(s): {_listing(missing)}. "
                "Every label of the data needs a category (the CSV 'category' column)."
            )
        categories = [label2category[v] for v in label_values]
        names = np.asarray(categories, dtype=object).astype(str)
        self.category_names, self._category_of_label = np.unique(names, return_inverse=True)
        self._labels_of_category = [
            np.flatnonzero(self._category_of_label == c) for c in range(len(self.category_names))
        ]
        n_cat = len(self.category_names)
        if n_cat < self.n_categories:
            raise SamplerError(
                f"{who}: n_categories={self.n_categories} but the data has only {n_cat} categories "
                f"({_listing(self.category_names.tolist())}); use n_categories <= {n_cat}."
            )
        sizes = np.array([len(x) for x in self._labels_of_category])
        small = np.flatnonzero(sizes < self.n_labels)
        if len(small) and not allow_small_categories:
            described = [f"{str(self.category_names[c])!r} ({sizes[c]} labels)" for c in small]
            shown = ", ".join(described[:_SHOWN]) + (f", ... ({len(described) - _SHOWN} more)" if len(described) > _SHOWN else "")
            extra = ", pass resample_labels=True" if isinstance(self, CategoryBalanceSampler) else ""
            raise SamplerError(
                f"{who}: {len(small)} categor{'y has' if len(small) == 1 else 'ies have'} fewer than "
                f"n_labels={self.n_labels} labels: {shown}. Use n_labels <= {int(sizes.min())}{extra}, "
                "or merge those categories into others (or drop them) in the training data."
            )
        self._category_sizes = sizes

    @property
    def batch_size(self) -> int:
        return self.n_categories * self.n_labels * self.n_instances


class CategoryBalanceSampler(_CategorySamplerBase):
    """Batches of C = ``n_categories`` distinct categories x P = ``n_labels`` labels each x K = ``n_instances``.

    Every batch is drawn independently: C distinct categories (with probability proportional to their number
    of labels when ``weight_categories`` is True, so that every label is used about equally often; uniformly
    otherwise), then P distinct labels of each category uniformly at random. A label may therefore appear in
    several batches of an epoch (use ``DistinctCategoryBalanceSampler`` to forbid that). An epoch has
    ``max(1, n_distinct_labels // (C * P))`` batches, i.e. nominally one pass over the labels.

    A category with fewer than P labels is an error unless ``resample_labels=True``: it then gives all its
    labels and repeats them (each label repeated gets another K instances) to reach P.
    """

    def __init__(
        self,
        labels: Sequence[Any] | np.ndarray,
        label2category: Mapping[Any, Any],
        n_categories: int,
        n_labels: int,
        n_instances: int,
        *,
        seed: int = 0,
        resample_labels: bool = False,
        weight_categories: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.resample_labels = bool(resample_labels)
        self.weight_categories = bool(weight_categories)
        super().__init__(
            labels, label2category, n_categories, n_labels, n_instances, seed, rank, world_size,
            allow_small_categories=self.resample_labels,
        )
        self._check_enough_batches()

    def _n_planned_batches(self) -> int:
        return max(1, len(self._groups) // (self.n_categories * self.n_labels))

    def _make_plan(self, rng: np.random.Generator) -> np.ndarray:
        sizes = self._category_sizes
        weights = sizes / sizes.sum() if self.weight_categories else None
        chosen = []
        for _ in range(self._n_planned_batches()):
            for c in rng.choice(len(sizes), size=self.n_categories, replace=False, p=weights):
                members = self._labels_of_category[c]
                if len(members) >= self.n_labels:
                    chosen.append(rng.choice(members, size=self.n_labels, replace=False))
                else:  # resample_labels: all labels, then repeats only as much as needed
                    chosen.append(np.resize(rng.permutation(members), self.n_labels))
        labels = np.concatenate(chosen)
        return self._groups.draw(labels, self.n_instances, rng).reshape(-1, self.batch_size)


class DistinctCategoryBalanceSampler(_CategorySamplerBase):
    """Like ``CategoryBalanceSampler``, but a label is used at most once per epoch.

    Each category of n labels offers ``s = n // P`` groups of P labels per epoch (its labels shuffled anew
    each epoch). A batch takes one group from each of C distinct categories, choosing the C categories with
    the most groups left (ties broken at random), which yields the largest possible number of batches; the
    batches are then shuffled. The epoch ends when fewer than C categories have a group left.

    Epoch length rule: the largest t with ``sum_c min(s_c, t) >= C * t``. It depends only on the category
    sizes, not on the seed or the epoch. Labels not used in an epoch (the ``n % P`` remainder of each
    category, plus groups of categories that outlast the others) change from epoch to epoch.
    """

    def __init__(
        self,
        labels: Sequence[Any] | np.ndarray,
        label2category: Mapping[Any, Any],
        n_categories: int,
        n_labels: int,
        n_instances: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(
            labels, label2category, n_categories, n_labels, n_instances, seed, rank, world_size,
            allow_small_categories=False,
        )
        self._n_batches = self._epoch_length(self._category_sizes // self.n_labels, self.n_categories)
        self._check_enough_batches()

    @staticmethod
    def _epoch_length(groups: np.ndarray, n_categories: int) -> int:
        """Largest t with sum(min(groups, t)) >= n_categories * t (the feasible t form an interval from 0)."""
        lo, hi = 0, int(groups.sum()) // n_categories
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if np.minimum(groups, mid).sum() >= n_categories * mid:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _n_planned_batches(self) -> int:
        return self._n_batches

    def _make_plan(self, rng: np.random.Generator) -> np.ndarray:
        p, c_per_batch = self.n_labels, self.n_categories
        left = self._category_sizes // p
        queues = [rng.permutation(members) for members in self._labels_of_category]
        used = np.zeros(len(left), dtype=np.int64)
        batches = []
        for _ in range(self._n_batches):
            picked = np.lexsort((rng.random(len(left)), -left))[:c_per_batch]
            if left[picked].min() <= 0:  # cannot happen: greedy largest-first reaches the epoch length rule
                raise RuntimeError("DistinctCategoryBalanceSampler: internal error in the epoch plan")
            batches.append(np.concatenate([queues[c][used[c] * p : (used[c] + 1) * p] for c in picked]))
            left[picked] -= 1
            used[picked] += 1
        labels = np.stack(batches)[rng.permutation(self._n_batches)].reshape(-1)
        return self._groups.draw(labels, self.n_instances, rng).reshape(-1, self.batch_size)
