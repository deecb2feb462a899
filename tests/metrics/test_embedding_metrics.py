"""EmbeddingMetrics: any batch order, duplicates counted once, and a real 2-process gather equals 1 process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lookalike.errors import LookalikeError
from lookalike.metrics import EmbeddingMetrics, evaluate_embeddings


def data(n: int = 80, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = torch.from_numpy(rng.integers(0, 16, n))
    emb = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed)) + torch.eye(16)[labels][:, :6] * 2
    is_query = torch.from_numpy(rng.random(n) < 0.8)
    is_gallery = torch.ones(n, dtype=torch.bool)
    categories = ["a" if int(l) % 2 else "b" for l in labels]
    return emb, labels, is_query, is_gallery, categories


def feed(metrics, order, emb, labels, is_query, is_gallery, categories, batch=9):
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        metrics.update(emb[idx], labels[idx], is_query[idx], is_gallery[idx], idx,
                       categories=[categories[i] for i in idx.tolist()])


def test_order_and_duplicates_do_not_matter():
    emb, labels, is_query, is_gallery, categories = data()
    clean = evaluate_embeddings(emb, labels, is_query, is_gallery, categories=categories, fmr_vals=(0.1,))
    metrics = EmbeddingMetrics(fmr_vals=(0.1,))
    shuffled = torch.randperm(len(emb), generator=torch.Generator().manual_seed(1))
    padded = torch.cat([shuffled, shuffled[:5]])  # what a distributed sampler's padding looks like
    feed(metrics, padded, emb, labels, is_query, is_gallery, categories)
    assert metrics.compute() == clean
    assert clean["OVERALL"]["n_queries"] == int(is_query.sum()) and set(clean) == {"OVERALL", "a", "b"}
    assert metrics.last_results.n_queries == int(is_query.sum())
    metrics.reset()
    with pytest.raises(LookalikeError, match="no embeddings"):
        metrics.compute()


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    emb, labels, is_query, is_gallery, categories = data()
    order = torch.arange(len(emb))
    mine = torch.cat([order[rank::world], order[:1]])  # every rank also sees item 0: a padded duplicate
    metrics = EmbeddingMetrics(fmr_vals=(0.1,))
    feed(metrics, mine, emb, labels, is_query, is_gallery, categories, batch=7)
    result = metrics.compute()
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


def test_two_process_gather_equals_single_process(tmp_path):
    out = tmp_path / "rank0.json"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    emb, labels, is_query, is_gallery, categories = data()
    single = evaluate_embeddings(emb, labels, is_query, is_gallery, categories=categories, fmr_vals=(0.1,))
    assert json.loads(out.read_text()) == json.loads(json.dumps(single))
