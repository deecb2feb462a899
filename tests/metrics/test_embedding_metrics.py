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
from lookalike.retrieval import ExactSearch


def data(n: int = 80, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = torch.from_numpy(rng.integers(0, 16, n))
    emb = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed)) + torch.eye(16)[labels][:, :6] * 2
    is_query = torch.from_numpy(rng.random(n) < 0.8)
    is_gallery = torch.ones(n, dtype=torch.bool)
    categories = ["a" if int(l) % 2 else "b" for l in labels]
    return emb, labels, is_query, is_gallery, categories


def sequences_of(n: int) -> list:
    return [None if i % 3 else f"s{i % 7}" for i in range(n)]  # every third item in one of 7 sequences


def feed(metrics, order, emb, labels, is_query, is_gallery, categories, batch=9):
    sequences = sequences_of(len(emb))
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        metrics.update(emb[idx], labels[idx], is_query[idx], is_gallery[idx], idx,
                       categories=[categories[i] for i in idx.tolist()],
                       sequences=[sequences[i] for i in idx.tolist()], paths=[f"{i}.png" for i in idx.tolist()])


def test_order_and_duplicates_do_not_matter():
    emb, labels, is_query, is_gallery, categories = data()
    clean = evaluate_embeddings(emb, labels, is_query, is_gallery, categories=categories, fmr_vals=(0.1,),
                                sequences=sequences_of(len(emb)))
    metrics = EmbeddingMetrics(fmr_vals=(0.1,))
    shuffled = torch.randperm(len(emb), generator=torch.Generator().manual_seed(1))
    padded = torch.cat([shuffled, shuffled[:5]])  # what a distributed sampler's padding looks like
    feed(metrics, padded, emb, labels, is_query, is_gallery, categories)
    assert metrics.compute() == clean
    assert clean["OVERALL"]["n_queries"] == int(is_query.sum()) and set(clean) == {"OVERALL", "a", "b"}
    assert metrics.last_results.n_queries == int(is_query.sum())
    assert metrics.last_paths == [f"{i}.png" for i in range(len(emb))]  # one per dataset index, in index order
    metrics.reset()
    with pytest.raises(LookalikeError, match="no embeddings"):
        metrics.compute()


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    emb, labels, is_query, is_gallery, categories = data()
    order = torch.arange(len(emb))
    # uneven shards; every rank also sees item 0 and rank 1 sees item 5 twice: padded duplicates
    mine = torch.cat([order[rank::world], order[:1]] + ([order[5:6]] if rank else []))
    metrics = EmbeddingMetrics(fmr_vals=(0.1,))
    feed(metrics, mine, emb, labels, is_query, is_gallery, categories, batch=7)
    result = metrics.compute()
    assert metrics.last_paths == [f"{i}.png" for i in range(len(emb))]
    with open(f"{out_file}.{rank}", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


def test_two_process_gather_equals_single_process(tmp_path):
    out = tmp_path / "result.json"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    emb, labels, is_query, is_gallery, categories = data()
    single = evaluate_embeddings(emb, labels, is_query, is_gallery, categories=categories, fmr_vals=(0.1,),
                                 sequences=sequences_of(len(emb)))
    expected = json.loads(json.dumps(single))
    assert json.loads((tmp_path / "result.json.0").read_text()) == expected
    assert json.loads((tmp_path / "result.json.1").read_text()) == expected  # every rank has the same numbers
    assert single["OVERALL"]["fnmr@fmr"][0.1] is not None


def test_update_from_batch_and_partial_extras():
    emb, labels, is_query, is_gallery, categories = data(20)
    batch = {"label": labels, "is_query": is_query, "is_gallery": is_gallery, "index": torch.arange(20),
             "category": categories, "path": [f"p{i}" for i in range(20)]}
    metrics = EmbeddingMetrics(sequences_key=None)
    metrics.update_from_batch(emb, batch)
    assert set(metrics.compute()) == {"OVERALL", "a", "b"} and metrics.last_paths[3] == "p3"
    metrics = EmbeddingMetrics()
    metrics.update(emb[:10], labels[:10], is_query[:10], is_gallery[:10], torch.arange(10), categories=categories[:10])
    with pytest.raises(LookalikeError, match="some batches only"):
        metrics.update(emb[10:], labels[10:], is_query[10:], is_gallery[10:], torch.arange(10, 20))
    with pytest.raises(LookalikeError, match="3 values for 10"):
        metrics.update(emb[:10], labels[:3], is_query[:10], is_gallery[:10], torch.arange(10))
    with pytest.raises(LookalikeError, match="fractions"):
        EmbeddingMetrics(fmr_vals=(1,  5))
    with pytest.raises(LookalikeError, match="positive integers"):
        EmbeddingMetrics(cmc_top_k=(0,))


def test_map_at_r_searches_deep_enough():
    emb, labels, is_query, is_gallery, _ = data()
    metrics = EmbeddingMetrics(cmc_top_k=(1,), precision_top_k=(), map_top_k=(), compute_map_at_r=True)
    metrics.update(emb, labels, is_query, is_gallery, torch.arange(len(emb)))
    overall = metrics.compute()["OVERALL"]
    assert metrics.last_results.k == int(torch.bincount(labels[is_gallery]).max())
    assert set(overall) == {"cmc", "map_at_r", "r_precision", "n_queries", "n_queries_without_relevant"}


def test_accumulated_batches_are_not_copied_twice():
    # batches that are consecutive slices of one table are searched as one view of it (no copy); other batches
    # are joined once, and a second compute() reuses the joined tensor with the same result
    from lookalike.metrics.embedding_metrics import _join

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 8, generator=gen)
    joined = _join([x[:30], x[30:70], x[70:]])
    assert joined.data_ptr() == x.data_ptr() and torch.equal(joined, x)
    parts = [torch.randn(5, 8, generator=gen) for _ in range(3)]
    expected = torch.cat(parts)
    joined = _join(parts)
    assert torch.equal(joined, expected) and len(parts) == 1 and parts[0] is joined

    labels = torch.arange(100) % 20
    is_query = torch.arange(100) % 4 == 0
    is_gallery = ~is_query | (torch.arange(100) % 8 == 0)  # scattered gallery rows: searched without a copy
    metrics = EmbeddingMetrics(cmc_top_k=(1, 3), precision_top_k=(3,), map_top_k=(3,), distance="euclidean")
    for a in range(0, 100, 30):
        metrics.update(x[a : a + 30].clone(), labels[a : a + 30], is_query[a : a + 30], is_gallery[a : a + 30],
                       torch.arange(a, min(a + 30, 100)))
    first = metrics.compute()
    results = metrics.last_results
    assert metrics.compute() == first and metrics.last_results == results
    expected = evaluate_embeddings(x, labels, is_query, is_gallery, cmc_top_k=(1, 3), precision_top_k=(3,),
                                   map_top_k=(3,), distance="euclidean")
    assert first == expected
    # the same search on copied gallery rows
    q, g = x[is_query], x[is_gallery]
    keys = (is_query.nonzero().squeeze(1), is_gallery.nonzero().squeeze(1))
    d, i = ExactSearch("euclidean").search(q, g, 3, exclude=keys)
    assert torch.equal(results.retrieved_ids, i) and torch.equal(results.distances, d)


def test_join_of_single_rows_and_empty_batches():
    from lookalike.metrics.embedding_metrics import _join

    x = torch.arange(12.0).view(6, 2)
    assert torch.equal(_join([x[0:1], x[1:1], x[1:4], x[4:6]]), x)
    assert torch.equal(_join([x[0:1], x[1:2]]), x[:2])
    assert torch.equal(_join([torch.empty(0, 2), x[:3], x[3:].clone()]), x)
