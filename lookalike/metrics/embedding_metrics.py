"""Accumulate embeddings batch by batch (any order, any rank), then search and compute every metric once.

Under torch.distributed every rank's items are gathered before computing, and items seen twice (the padding
a distributed sampler adds to even out ranks) are counted once, by their dataset index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from lookalike.data import schema
from lookalike.errors import LookalikeError
from lookalike.metrics.fnmr import fnmr_at_fmr
from lookalike.metrics.functional import OVERALL, per_query_metrics, reduce_metrics
from lookalike.retrieval import RetrievalResults

__all__ = ["EmbeddingMetrics", "evaluate_embeddings"]

_TENSORS = ("embeddings", "labels", "is_query", "is_gallery", "indices")
_OBJECTS = ("categories", "sequences", "paths")


def _needed_k(labels: Tensor, is_gallery: Tensor, ks: Sequence[int], map_at_r: bool) -> int:
    """The top-k to search: the largest requested k, and for MAP@R the largest label's gallery size."""
    k = max(ks) if ks else 1
    if map_at_r and bool(is_gallery.any()):
        k = max(k, int(torch.unique(labels[is_gallery], return_counts=True)[1].max()))
    return k


def _join(parts: list[Tensor]) -> Tensor:
    """The batches of one accumulated tensor as one tensor, without a second copy of the data.

    One batch is returned as it is; batches that are consecutive views of one tensor (e.g. slices of a table)
    become one view of it; other batches are copied into one tensor while the list releases each batch as soon as
    it is copied (``parts`` then holds the joined tensor only, so a second `compute` reuses it)."""
    if len(parts) == 1:
        return parts[0]
    first, size = parts[0], parts[0].element_size()
    consecutive = all(
        p.is_contiguous() and p.dtype == first.dtype and p.shape[1:] == first.shape[1:]
        and p.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        and p.data_ptr() == prev.data_ptr() + prev.numel() * size for prev, p in zip(parts, parts[1:]))
    total = sum(len(p) for p in parts)
    shape = (total, *first.shape[1:])
    if consecutive and first.is_contiguous():
        return first.as_strided(shape, torch.empty(shape, device="meta").stride())
    out = torch.empty((total, *first.shape[1:]), dtype=first.dtype)
    start = 0
    while parts:
        part = parts.pop(0)
        out[start : start + len(part)] = part
        start += len(part)
        del part
    parts.append(out)
    return out


def _as_list(values: Any) -> list:
    if isinstance(values, Tensor):
        return values.detach().cpu().tolist()
    return list(values)


class EmbeddingMetrics:
    """Retrieval metrics of embeddings accumulated with `update`; `compute` returns the nested dict.

    ``compute()`` -> ``{"OVERALL": {"cmc": {1: .., 5: ..}, "precision": {5: ..}, "map": {5: ..}, ["map_at_r",
    "r_precision",] ["fnmr@fmr": {0.01: ..},] "n_queries", "n_queries_without_relevant"}, "<category>": {..}}``.
    The search results, per-query values and item paths of the last `compute` stay in `last_results`,
    `last_per_query` and `last_paths` (for pictures of the worst queries).

    ``backend``: ``"exact"`` (bf16 or fp32 screening picked per search, same results), ``"exact-fp32"``,
    ``"exact-bf16"``, ``"faiss:<factory>"`` or a search backend object;
    ``postprocessor``: a re-ranker applied to the search results before the metrics (e.g.
    `lookalike.postprocess.QueryExpansion`; its ``top_n`` sets how deep to search);
    ``categories_key`` / ``sequences_key`` / ``paths_key``: the batch keys `update_from_batch` reads (None: not
    read). Chunk sizes bound the search memory (None: the backend's default).
    """

    def __init__(self, cmc_top_k: Sequence[int] = (1, 5), precision_top_k: Sequence[int] = (5,),
                 map_top_k: Sequence[int] = (5,), fmr_vals: Sequence[float] = (), compute_map_at_r: bool = False,
                 distance: str = "cosine", backend: Any = "exact",
                 categories_key: str | None = schema.CATEGORY_KEY, sequences_key: str | None = schema.SEQUENCE_KEY,
                 paths_key: str | None = schema.PATH_KEY, query_chunk_size: int | None = None,
                 gallery_chunk_size: int | None = None, postprocessor: Any = None) -> None:
        self.cmc_top_k, self.precision_top_k = tuple(cmc_top_k), tuple(precision_top_k)
        self.map_top_k, self.fmr_vals = tuple(map_top_k), tuple(fmr_vals)
        self.compute_map_at_r = bool(compute_map_at_r)
        self.distance, self.backend = distance, backend
        self.categories_key, self.sequences_key, self.paths_key = categories_key, sequences_key, paths_key
        self.query_chunk_size, self.gallery_chunk_size = query_chunk_size, gallery_chunk_size
        if postprocessor is not None and not callable(postprocessor):
            raise LookalikeError("EmbeddingMetrics: postprocessor must be callable as "
                                 "postprocessor(results, query_embeddings, gallery_embeddings, distance)")
        self.postprocessor = postprocessor
        for name, ks in (("cmc_top_k", self.cmc_top_k), ("precision_top_k", self.precision_top_k),
                         ("map_top_k", self.map_top_k)):
            if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
                raise LookalikeError(f"EmbeddingMetrics: {name} must hold positive integers, got {list(ks)}")
        if any(not 0.0 < float(f) <= 1.0 for f in self.fmr_vals):
            raise LookalikeError(f"EmbeddingMetrics: fmr_vals are fractions in (0, 1] (0.01 = 1%), "
                                 f"got {list(self.fmr_vals)}")
        self.last_results: RetrievalResults | None = None
        self.last_per_query: dict[str, Any] | None = None
        self.last_paths: list[str] | None = None
        self.reset()

    def reset(self) -> None:
        """Forget every accumulated item (call at the start of each validation epoch)."""
        self._tensors: dict[str, list[Tensor]] = {name: [] for name in _TENSORS}
        self._objects: dict[str, list] = {name: [] for name in _OBJECTS}
        self._n = 0

    def update(self, embeddings: Tensor, labels: Any, is_query: Any, is_gallery: Any, indices: Any,
               categories: Sequence[str] | None = None, sequences: Sequence | None = None,
               paths: Sequence[str] | None = None) -> None:
        """Add one batch; dataset ``indices`` identify items (an index seen again is kept once)."""
        n = len(embeddings)
        values = {"labels": labels, "is_query": is_query, "is_gallery": is_gallery, "indices": indices}
        for name, value in (*values.items(), ("categories", categories), ("sequences", sequences),
                            ("paths", paths)):
            if value is not None and len(value) != n:
                raise LookalikeError(f"EmbeddingMetrics.update: {name} has {len(value)} values for {n} embeddings")
        tensor = lambda v: torch.as_tensor(np.asarray(v) if not isinstance(v, Tensor) else v).cpu()  # noqa: E731
        self._tensors["embeddings"].append(embeddings.detach().float().cpu())
        self._tensors["labels"].append(tensor(labels).long())
        self._tensors["is_query"].append(tensor(is_query).bool())
        self._tensors["is_gallery"].append(tensor(is_gallery).bool())
        self._tensors["indices"].append(tensor(indices).long())
        for name, value in (("categories", categories), ("sequences", sequences), ("paths", paths)):
            if value is not None:
                if len(self._objects[name]) != self._n:
                    raise LookalikeError(f"EmbeddingMetrics.update: {name} were given for some batches only; "
                                         f"pass them with every batch or with none")
                self._objects[name].extend(_as_list(value))
            elif self._objects[name]:
                raise LookalikeError(f"EmbeddingMetrics.update: {name} were given for some batches only; "
                                     f"pass them with every batch or with none")
        self._n += n

    def update_from_batch(self, embeddings: Tensor, batch: Mapping[str, Any]) -> None:
        """`update` from a dataset batch dict (keys of `lookalike.data.schema`; categories etc. when present)."""
        def optional(key: str | None):
            return batch.get(key) if key is not None else None

        self.update(embeddings, batch[schema.LABEL_KEY], batch[schema.IS_QUERY_KEY], batch[schema.IS_GALLERY_KEY],
                    batch[schema.INDEX_KEY], categories=optional(self.categories_key),
                    sequences=optional(self.sequences_key), paths=optional(self.paths_key))

    def _local(self) -> tuple[dict[str, Tensor], dict[str, list]]:
        if self._n == 0:
            tensors = {name: torch.empty(0, dtype=torch.float32 if name == "embeddings" else torch.long)
                       for name in _TENSORS}
            tensors["embeddings"] = torch.empty(0, 0)
            tensors["is_query"], tensors["is_gallery"] = (torch.empty(0, dtype=torch.bool),) * 2
            return tensors, {}
        tensors = {name: _join(parts) for name, parts in self._tensors.items()}
        return tensors, {name: values for name, values in self._objects.items() if values}

    @staticmethod
    def _gather(tensors: dict[str, Tensor], objects: dict[str, list]) -> tuple[dict[str, Tensor], dict[str, list]]:
        """All ranks' items, rank after rank (every rank ends with the same, complete lists)."""
        world = dist.get_world_size()
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":  # NCCL moves CUDA tensors only
            device = torch.device("cuda", torch.cuda.current_device())
        shapes: list = [None] * world
        dist.all_gather_object(shapes, (len(tensors["indices"]), tuple(tensors["embeddings"].shape[1:])))
        sizes = [size for size, _ in shapes]
        dims = {dim for size, dim in shapes if size}
        if len(dims) > 1:
            raise LookalikeError(f"EmbeddingMetrics: ranks hold embeddings of different sizes {sorted(dims)}")
        longest = max(sizes)
        gathered = {}
        for name, value in tensors.items():
            if name == "embeddings" and not len(value):
                value = torch.empty((0, *next(iter(dims), (0,))))
            padded = torch.zeros((longest, *value.shape[1:]), dtype=value.dtype, device=device)
            padded[: len(value)] = value.to(device)
            parts = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(parts, padded)
            gathered[name] = torch.cat([part[:size].cpu() for part, size in zip(parts, sizes)])
        all_objects: list = [None] * world
        dist.all_gather_object(all_objects, objects)
        merged = {}
        for name in _OBJECTS:
            present = [name in rank_objects for rank_objects, size in zip(all_objects, sizes) if size]
            if any(present) and not all(present):
                raise LookalikeError(f"EmbeddingMetrics: some ranks passed {name} and others did not")
            if any(present):
                merged[name] = [v for rank_objects in all_objects for v in rank_objects.get(name, [])]
        return gathered, merged

    def compute(self) -> dict:
        """Gather (all ranks), de-duplicate by index, search and compute every metric; layout: class docstring."""
        tensors, objects = self._local()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            tensors, objects = self._gather(tensors, objects)
        if not len(tensors["indices"]):
            raise LookalikeError("EmbeddingMetrics.compute: no embeddings were added (is the validation set empty?)")
        order = torch.argsort(tensors["indices"], stable=True)
        sorted_ids = tensors["indices"][order]
        first = torch.ones_like(sorted_ids, dtype=torch.bool)
        first[1:] = sorted_ids[1:] != sorted_ids[:-1]
        keep = order[first]  # one row per dataset index, in index order
        if len(keep) != len(order) or not bool((keep == torch.arange(len(keep))).all()):
            tensors = {name: value[keep] for name, value in tensors.items()}  # else: already so, no copy
        keep_np = keep.numpy()
        objects = {name: np.asarray(values, dtype=object)[keep_np] for name, values in objects.items()}
        paths = objects.get("paths")
        self.last_paths = None if paths is None else paths.tolist()
        return self._compute(tensors, objects.get("categories"), objects.get("sequences"))

    def _compute(self, tensors: dict[str, Tensor], categories: np.ndarray | None,
                 sequences: np.ndarray | None) -> dict:
        embeddings, labels = tensors["embeddings"], tensors["labels"]
        is_query, is_gallery = tensors["is_query"], tensors["is_gallery"]
        ks = [*self.cmc_top_k, *self.precision_top_k, *self.map_top_k, getattr(self.postprocessor, "top_n", 1)]
        results = RetrievalResults.from_embeddings(
            embeddings, labels, is_query, is_gallery,
            k=_needed_k(labels, is_gallery, ks, self.compute_map_at_r), sequences=sequences,
            categories=categories, distance=self.distance, backend=self.backend,
            query_chunk_size=self.query_chunk_size, gallery_chunk_size=self.gallery_chunk_size,
        )
        if self.postprocessor is not None:
            results = self.postprocessor(results, embeddings[results.query_ids], embeddings[results.gallery_ids],
                                         self.distance)
        per_query = per_query_metrics(results, self.cmc_top_k, self.precision_top_k, self.map_top_k,
                                      self.compute_map_at_r)
        metrics = reduce_metrics(per_query, results.query_categories)
        if self.fmr_vals:
            metrics[OVERALL]["fnmr@fmr"] = fnmr_at_fmr(embeddings, labels, is_query, is_gallery, self.fmr_vals,
                                                       sequences=sequences, distance=self.distance)
        self.last_results, self.last_per_query = results, per_query
        return metrics


def evaluate_embeddings(embeddings: Any, labels: Any, is_query: Any, is_gallery: Any,
                        categories: Sequence[str] | None = None, sequences: Sequence | None = None,
                        cmc_top_k: Sequence[int] = (1, 5), precision_top_k: Sequence[int] = (5,),
                        map_top_k: Sequence[int] = (5,), fmr_vals: Sequence[float] = (),
                        distance: str = "cosine", backend: Any = "exact", compute_map_at_r: bool = False) -> dict:
    """Retrieval metrics of one embedded validation set: ``{"OVERALL": {...}, "<category>": {...}}``.

    Item i is ``embeddings[i]`` with ``labels[i]``, ``is_query[i]``, ``is_gallery[i]`` (and ``categories[i]``,
    ``sequences[i]``); an item that is both query and gallery never retrieves itself.
    """
    embeddings = torch.as_tensor(np.asarray(embeddings)) if not isinstance(embeddings, Tensor) else embeddings
    metrics = EmbeddingMetrics(cmc_top_k, precision_top_k, map_top_k, fmr_vals, compute_map_at_r, distance, backend)
    metrics.update(embeddings, labels, is_query, is_gallery, torch.arange(len(embeddings)),
                   categories=categories, sequences=sequences)
    return metrics.compute()
