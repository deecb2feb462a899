"""Accumulate embeddings batch by batch (any order, any rank), then search and compute every metric once.

Under torch.distributed every rank's items are gathered before computing, and items seen twice (the padding
a distributed sampler adds to even out ranks) are counted once, by their dataset index.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from lookalike.errors import LookalikeError
from lookalike.metrics.fnmr import fnmr_at_fmr
from lookalike.metrics.functional import (
    cmc_at_k,
    has_relevant,
    map_at_k,
    map_at_r,
    precision_at_k,
    r_precision,
    reduce_metrics,
)
from lookalike.retrieval import RetrievalResults

__all__ = ["EmbeddingMetrics", "evaluate_embeddings", "per_query_metrics"]


def per_query_metrics(results: RetrievalResults, cmc_top_k: Iterable[int] = (1, 5),
                      precision_top_k: Iterable[int] = (5,), map_top_k: Iterable[int] = (5,),
                      compute_map_at_r: bool = False) -> dict[str, Any]:
    """Every requested metric per query: {"cmc": {k: (Nq,)}, "precision": {...}, "map": {...}, ...}."""
    out: dict[str, Any] = {}
    if cmc_top_k:
        out["cmc"] = cmc_at_k(results, cmc_top_k)
    if precision_top_k:
        out["precision"] = precision_at_k(results, precision_top_k)
    if map_top_k:
        out["map"] = map_at_k(results, map_top_k)
    if compute_map_at_r:
        out["map_at_r"] = map_at_r(results)
        out["r_precision"] = r_precision(results)
    return out


def _needed_k(labels: Tensor, is_gallery: Tensor, ks: Sequence[int], map_at_r: bool) -> int:
    k = max(ks) if ks else 1
    if map_at_r:
        k = max(k, int(torch.bincount(torch.unique(labels[is_gallery], return_inverse=True)[1]).max()))
    return k


class EmbeddingMetrics:
    """Retrieval metrics of embeddings accumulated with `update`; `compute` returns the nested dict.

    `compute()` -> {"OVERALL": {"cmc": {1: ..}, "precision": {5: ..}, "map": {5: ..}, ["map_at_r", "r_precision",]
    ["fnmr@fmr": {f: ..},] "n_queries", "n_queries_without_relevant"}, "<category>": {...}}. The search results
    and per-query values of the last `compute` stay in `last_results` and `last_per_query` (for pictures).
    """

    def __init__(self, cmc_top_k: Sequence[int] = (1, 5), precision_top_k: Sequence[int] = (5,),
                 map_top_k: Sequence[int] = (5,), fmr_vals: Sequence[float] = (), compute_map_at_r: bool = False,
                 distance: str = "cosine", backend: str = "exact") -> None:
        self.cmc_top_k, self.precision_top_k, self.map_top_k = tuple(cmc_top_k), tuple(precision_top_k), tuple(map_top_k)
        self.fmr_vals, self.compute_map_at_r = tuple(fmr_vals), bool(compute_map_at_r)
        self.distance, self.backend = distance, backend
        self.last_results: RetrievalResults | None = None
        self.last_per_query: dict[str, Any] | None = None
        self.last_paths: list[str] | None = None
        self.reset()

    def reset(self) -> None:
        self._tensors: dict[str, list[Tensor]] = {"embeddings": [], "labels": [], "is_query": [], "is_gallery": [],
                                                  "indices": []}
        self._objects: dict[str, list] = {"categories": [], "sequences": [], "paths": []}

    def update(self, embeddings: Tensor, labels: Tensor, is_query: Tensor, is_gallery: Tensor, indices: Tensor,
               categories: Sequence[str] | None = None, sequences: Sequence | None = None,
               paths: Sequence[str] | None = None) -> None:
        """Add one batch (dataset `indices` identify items; a repeated index is kept once)."""
        n = len(embeddings)
        for name, value in (("labels", labels), ("is_query", is_query), ("is_gallery", is_gallery),
                            ("indices", indices)):
            if len(value) != n:
                raise LookalikeError(f"EmbeddingMetrics.update: {name} has {len(value)} values for {n} embeddings")
        self._tensors["embeddings"].append(embeddings.detach().float().cpu())
        self._tensors["labels"].append(torch.as_tensor(labels).long().cpu())
        self._tensors["is_query"].append(torch.as_tensor(is_query).bool().cpu())
        self._tensors["is_gallery"].append(torch.as_tensor(is_gallery).bool().cpu())
        self._tensors["indices"].append(torch.as_tensor(indices).long().cpu())
        for name, value in (("categories", categories), ("sequences", sequences), ("paths", paths)):
            if value is not None:
                self._objects[name].extend(list(value))

    def _local(self) -> tuple[dict[str, Tensor], dict[str, list]]:
        if not self._tensors["embeddings"]:
            raise LookalikeError("EmbeddingMetrics.compute: no embeddings were added (is the validation set empty?)")
        tensors = {name: torch.cat(parts) for name, parts in self._tensors.items()}
        n = len(tensors["indices"])
        objects = {name: values for name, values in self._objects.items() if len(values) == n}
        return tensors, objects

    @staticmethod
    def _gather(tensors: dict[str, Tensor], objects: dict[str, list]) -> tuple[dict[str, Tensor], dict[str, list]]:
        """All ranks' items (every rank ends with the same, complete lists)."""
        world = dist.get_world_size()
        sizes = [None] * world
        dist.all_gather_object(sizes, len(tensors["indices"]))
        longest = max(sizes)
        gathered = {}
        for name, value in tensors.items():
            padded = torch.zeros((longest, *value.shape[1:]), dtype=value.dtype)
            padded[: len(value)] = value
            parts = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(parts, padded)
            gathered[name] = torch.cat([part[:size] for part, size in zip(parts, sizes)])
        all_objects = [None] * world
        dist.all_gather_object(all_objects, objects)
        merged = {name: [v for rank_objects in all_objects for v in rank_objects[name]]
                  for name in objects if all(name in o for o in all_objects)}
        return gathered, merged

    def compute(self) -> dict:
        """Gather, de-duplicate, search and compute every metric; see the class docstring for the layout."""
        tensors, objects = self._local()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            tensors, objects = self._gather(tensors, objects)
        order = torch.argsort(tensors["indices"], stable=True)
        sorted_ids = tensors["indices"][order]
        first = torch.ones_like(sorted_ids, dtype=torch.bool)
        first[1:] = sorted_ids[1:] != sorted_ids[:-1]
        keep = order[first]  # one row per dataset index, in index order
        tensors = {name: value[keep] for name, value in tensors.items()}
        keep_list = keep.tolist()
        objects = {name: [values[i] for i in keep_list] for name, values in objects.items()}
        self.last_paths = objects.get("paths")
        return self._compute(tensors, objects.get("categories"), objects.get("sequences"))

    def _compute(self, tensors: dict[str, Tensor], categories, sequences) -> dict:
        labels, is_query, is_gallery = tensors["labels"], tensors["is_query"], tensors["is_gallery"]
        ks = [*self.cmc_top_k, *self.precision_top_k, *self.map_top_k]
        results = RetrievalResults.from_embeddings(
            tensors["embeddings"], labels, is_query, is_gallery,
            k=_needed_k(labels, is_gallery, ks, self.compute_map_at_r), sequences=sequences,
            categories=categories, distance=self.distance, backend=self.backend,
        )
        per_query = per_query_metrics(results, self.cmc_top_k, self.precision_top_k, self.map_top_k,
                                      self.compute_map_at_r)
        metrics = reduce_metrics(per_query, has_relevant(results), results.query_categories)
        if self.fmr_vals:
            from lookalike.retrieval import factorize_sequences

            seq = factorize_sequences(sequences) if sequences is not None else None
            metrics["OVERALL"]["fnmr@fmr"] = fnmr_at_fmr(tensors["embeddings"], labels, is_query, is_gallery,
                                                         self.fmr_vals, sequences=seq, distance=self.distance)
        self.last_results, self.last_per_query = results, per_query
        return metrics


def evaluate_embeddings(embeddings: Tensor, labels: Any, is_query: Any, is_gallery: Any,
                        categories: Sequence[str] | None = None, sequences: Sequence | None = None,
                        cmc_top_k: Sequence[int] = (1, 5), precision_top_k: Sequence[int] = (5,),
                        map_top_k: Sequence[int] = (5,), fmr_vals: Sequence[float] = (),
                        compute_map_at_r: bool = False, distance: str = "cosine", backend: str = "exact") -> dict:
    """Retrieval metrics of one embedded validation set: {"OVERALL": {...}, "<category>": {...}}."""
    embeddings = torch.as_tensor(embeddings)
    n = len(embeddings)
    metrics = EmbeddingMetrics(cmc_top_k, precision_top_k, map_top_k, fmr_vals, compute_map_at_r, distance, backend)
    metrics.update(embeddings, torch.as_tensor(np.asarray(labels)), torch.as_tensor(np.asarray(is_query)),
                   torch.as_tensor(np.asarray(is_gallery)), torch.arange(n),
                   categories=None if categories is None else list(categories),
                   sequences=None if sequences is None else list(sequences))
    return metrics.compute()
