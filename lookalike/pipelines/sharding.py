"""Embedding on several devices (``devices: N``, ``num_nodes: M``) for ``predict`` and ``index``.

The source is split into contiguous runs of *whole batches*, one run per process; each process embeds its run
with the same `Embedder` loop as one device, rank 0 gathers the runs in rank order (which is source order) and
writes the one result. Every batch holds the same items as on one device, so on a CPU the store is bit-equal
to a one-device run with the same threads per process (tests/pipelines/test_sharding.py; with other thread
counts float sums may round differently, 6e-8 measured). Processes are started by Lightning Fabric's launcher
(children re-run the script, as in training) or by an external launcher (torchrun, srun).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

import numpy as np

from lookalike.errors import LookalikeError
from lookalike.pipelines.trainer import several_processes

__all__ = ["Processes", "start_processes", "shard_rows", "embed_sharded"]

T = TypeVar("T")


@dataclass
class Processes:
    """This process's place in an embedding job: ``rank`` of ``world_size``, its ``device`` (None: the config's
    accelerator, one process) and the Fabric that started the process group (None for one process)."""

    rank: int = 0
    world_size: int = 1
    device: Any = None
    fabric: Any = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, value: T) -> list[T] | None:
        """Every rank's ``value`` in rank order on rank 0; None on the other ranks."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        out: list | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, out, dst=0)
        return out

    def all_gather(self, value: T) -> list[T]:
        """Every rank's ``value`` in rank order, on every rank."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def on_main(self, work: Callable[[], T]) -> T:
        """``work()`` on rank 0, its result on every rank; an error on rank 0 is raised on every rank (the
        others would otherwise wait for a result forever)."""
        if self.world_size == 1:
            return work()
        outcome: list[Any] = [None]
        if self.is_main:
            try:
                outcome[0] = ("ok", work())
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others are told
                outcome[0] = ("error", f"{type(exc).__name__}: {exc}")
                self._broadcast(outcome)
                raise
        self._broadcast(outcome)
        status, value = outcome[0]
        if status == "error":
            raise LookalikeError(f"rank 0 failed, so rank {self.rank} stops too: {value}")
        return value

    def _broadcast(self, holder: list) -> None:
        import torch.distributed as dist

        dist.broadcast_object_list(holder, src=0)

    def same_weights(self, model: Any) -> None:
        """Copies rank 0's parameters and buffers to every rank (an extractor built without a checkpoint has a
        random initialisation of its own in each process)."""
        import torch

        if self.world_size == 1 or not isinstance(model, torch.nn.Module):
            return
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)

    def close(self) -> None:
        """Closes the process group this job opened (one opened by the caller, e.g. torchrun's, stays open)."""
        import torch.distributed as dist

        if self.owns_group and dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def start_processes(cfg: Mapping) -> Processes:
    """One process for one device; for several devices or nodes, Lightning Fabric launches the others (children
    re-run the script, so call the pipeline under ``if __name__ == "__main__":`` or from the CLI) and opens the
    process group (gloo on CPUs, NCCL on GPUs). Embedding always runs one process per device (``ddp``), whatever
    ``strategy`` a training config names (``ddp_spawn``, ``fsdp``, ... mean nothing for a forward pass)."""
    if not several_processes(cfg):
        return Processes()
    import torch.distributed as dist
    from lightning.fabric import Fabric

    from lookalike.pipelines.trainer import quiet_lightning

    quiet_lightning()
    already = dist.is_available() and dist.is_initialized()
    fabric = Fabric(accelerator=cfg["accelerator"], devices=cfg["devices"], num_nodes=cfg.get("num_nodes", 1),
                    strategy="ddp")
    fabric.launch()
    return Processes(fabric.global_rank, fabric.world_size, fabric.device, fabric, owns_group=not already)


def shard_rows(n_items: int, batch_size: int, world_size: int, rank: int) -> range:
    """The contiguous source rows of ``rank``: a run of whole batches of ``batch_size`` (the batches of one
    device, split as evenly as possible; the first ranks take one batch more, the last may get none)."""
    n_batches = -(-n_items // batch_size)
    per, extra = divmod(n_batches, world_size)
    first = rank * per + min(rank, extra)
    last = first + per + (rank < extra)
    return range(min(first * batch_size, n_items), min(last * batch_size, n_items))


def embed_sharded(embedder, images, processes: Processes, progress: bool = False):
    """``embedder.embed_source(images)`` (an ``ImageSource`` or a ``TextSource``) split over ``processes``: the
    `Embedded` of the whole source, rows in source order, on rank 0; None on the other ranks."""
    from dataclasses import replace

    from lookalike.inference import Embedded

    if processes.world_size == 1:
        return embedder.embed_source(images, progress=progress)
    rows = shard_rows(len(images.ids), embedder.batch_size, processes.world_size, processes.rank)
    # an ImageSource or a TextSource restricted to this rank's rows
    part = replace(images, table=images.table.iloc[rows.start:rows.stop].reset_index(drop=True),
                   ids=images.ids[rows.start:rows.stop])
    try:
        mine, error = embedder.embed_source(part, progress=progress and processes.is_main), None
    except Exception as exc:  # noqa: BLE001 - every rank learns of it below, then each raises
        mine, error = None, exc
    errors = processes.all_gather(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed_rank = next((rank for rank, message in enumerate(errors) if message is not None), None)
    if failed_rank is not None:  # the other ranks would otherwise wait for its shard until the group times out
        raise LookalikeError(f"embedding failed on rank {failed_rank}, so rank {processes.rank} stops too: "
                             f"{errors[failed_rank]}")
    shards = processes.gather((mine.embeddings, mine.rows + rows.start,
                               [(row + rows.start, error) for row, error in mine.failed]))
    if shards is None:
        return None
    filled = [emb for emb, _, _ in shards if len(emb)]
    embeddings = (np.concatenate(filled) if filled
                  else np.zeros((0, max(emb.shape[1] for emb, _, _ in shards)), np.float32))
    return Embedded(embeddings, np.concatenate([r for _, r, _ in shards]).astype(np.int64),
                    [item for _, _, failed in shards for item in failed])
