"""The single-process reference of a 2-rank DDP run: one process that sees the same global batches.

With a P x K sampler, rank r takes batches r, r + 2, ... of the one-process plan (``lookalike.data.samplers``), so
one process with ``accumulate_grad_batches: 2`` already steps on the same global batches. Plain shuffled batches
(``sampler: null``) split each rank's share of a DistributedSampler into batches; ``RankInterleaved`` yields rank
0's first batch, rank 1's first, rank 0's second, ... for that case.
"""

from __future__ import annotations

from typing import Iterator

from torch.utils.data import DistributedSampler


class RankInterleaved:
    """Batches of ``n_ranks`` DDP ranks with shuffled batches of ``batch_size``, interleaved rank by rank."""

    def __init__(self, labels, label2category=None, rank: int = 0, world_size: int = 1, seed: int = 0,
                 batch_size: int = 8, n_ranks: int = 2) -> None:
        self.batch_size = batch_size
        self.samplers = [DistributedSampler(range(len(labels)), num_replicas=n_ranks, rank=r, shuffle=True,
                                            seed=seed, drop_last=True) for r in range(n_ranks)]

    def set_epoch(self, epoch: int) -> None:
        for sampler in self.samplers:
            sampler.set_epoch(epoch)

    def _batches(self, sampler) -> list[list[int]]:
        indices = list(sampler)
        batches = [indices[i:i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        if len(indices) >= self.batch_size and len(batches[-1]) < self.batch_size:
            batches.pop()  # the pipeline's loader drops the last short batch when a full one exists
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for group in zip(*(self._batches(s) for s in self.samplers)):
            yield from group

    def __len__(self) -> int:
        return sum(len(self._batches(s)) for s in self.samplers)
