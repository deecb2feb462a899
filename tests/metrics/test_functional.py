"""Metrics on a hand-worked case, against brute force on random data, and in every corner case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lookalike.errors import LookalikeError
from lookalike.metrics import (
    EmbeddingMetrics,
    cmc_at_k,
    evaluate_embeddings,
    has_relevant,
    map_at_r,
    per_query_metrics,
    precision_at_k,
    reduce_metrics,
    worst_queries,
)
from lookalike.retrieval import RetrievalResults


def hand_results() -> RetrievalResults:
    """4 queries, top-3 each. Relevance of the top 3 and number of relevant gallery items:
    q0 [1, 0, 1], R=3 | q1 [0, 1, 0], R=1 | q2 [0, 0, 0], R=2 | q3 [0, 0, 0], R=0 (no relevant item at all).
    """
    relevant = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=torch.bool)
    return RetrievalResults(
        retrieved_ids=torch.tensor([[0, 3, 1], [0, 2, 4], [0, 1, 2], [0, 1, 2]]),
        distances=torch.tensor([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3]]),
        is_relevant=relevant,
        n_relevant=torch.tensor([3, 1, 2, 0]),
        query_ids=torch.tensor([10, 11, 12, 13]),
        gallery_ids=torch.arange(6),
        query_labels=torch.tensor([0, 1, 2, 3]),
        gallery_labels=torch.tensor([0, 0, 1, 5, 6, 0]),
        query_categories=np.array(["x", "x", "y", "y"], dtype=object),
    )


def test_hand_worked_metrics():
    results = hand_results()
    valid = has_relevant(results)
    assert valid.tolist() == [True, True, True, False]
    per_query = per_query_metrics(results, cmc_top_k=(1, 3), precision_top_k=(3,), map_top_k=(3,),
                                  compute_map_at_r=True)
    # CMC@1: q0 hit at rank 1 -> 1; q1, q2 -> 0.  CMC@3: q0, q1 -> 1; q2 -> 0.
    assert per_query["cmc"][1][:3].tolist() == [1, 0, 0] and per_query["cmc"][3][:3].tolist() == [1, 1, 0]
    # precision@3 = hits / min(3, R): q0 2/3, q1 1/min(3, 1) = 1, q2 0
    assert per_query["precision"][3][:3].tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    # AP@3 = sum of precision@i at hits / min(3, R): q0 (1/1 + 2/3) / 3 = 5/9; q1 (1/2) / 1 = 1/2; q2 0
    assert per_query["map"][3][:3].tolist() == pytest.approx([5 / 9, 1 / 2, 0.0])
    # MAP@R: q0 R=3 -> 5/9; q1 R=1: rank 1 misses -> 0; q2 R=2 -> 0.   R-precision: 2/3, 0, 0
    assert per_query["map_at_r"][:3].tolist() == pytest.approx([5 / 9, 0.0, 0.0])
    assert per_query["r_precision"][:3].tolist() == pytest.approx([2 / 3, 0.0, 0.0])

    reduced = reduce_metrics(per_query, results.query_categories)
    overall = reduced["OVERALL"]
    assert overall["cmc"][1] == pytest.approx(1 / 3) and overall["cmc"][3] == pytest.approx(2 / 3)
    assert overall["precision"][3] == pytest.approx(5 / 9)
    assert overall["map"][3] == pytest.approx(19 / 54)          # (5/9 + 1/2 + 0) / 3
    assert overall["map_at_r"] == pytest.approx(5 / 27)
    assert overall["r_precision"] == pytest.approx(2 / 9)
    assert overall["n_queries"] == 4 and overall["n_queries_without_relevant"] == 1
    # category x = q0, q1; category y = q2 (q3 has no relevant item)
    assert reduced["x"]["map"][3] == pytest.approx((5 / 9 + 1 / 2) / 2)
    assert reduced["y"]["cmc"][3] == 0.0 and reduced["y"]["n_queries_without_relevant"] == 1


def test_category_with_only_unscorable_queries_is_none_not_nan():
    results = hand_results().subset(torch.tensor([3]))
    reduced = reduce_metrics(per_query_metrics(results), results.query_categories)
    assert reduced["OVERALL"]["cmc"][1] is None and reduced["y"]["n_queries_without_relevant"] == 1


def test_k_larger_than_retrieved_counts_missing_columns_as_misses():
    results = hand_results()
    assert cmc_at_k(results, [10])[10][:3].tolist() == [1, 1, 0]
    assert precision_at_k(results, [10])[10][:3].tolist() == pytest.approx([2 / 3, 1.0, 0.0])


def test_empty_lists_after_threshold():
    results = hand_results().with_threshold(0.15)  # only the first column survives
    assert results.retrieved_ids[:, 1:].eq(-1).all()
    assert cmc_at_k(results, [3])[3][:3].tolist() == [1, 0, 0]
    empty = hand_results().with_threshold(0.0)
    per_query = per_query_metrics(empty)
    assert reduce_metrics(per_query)["OVERALL"]["cmc"][1] == 0.0


def test_map_at_r_needs_enough_columns():
    results = hand_results().top(2)
    with pytest.raises(LookalikeError, match="k >= 3"):
        map_at_r(results)


def test_worst_queries_order_and_validity():
    results = hand_results()
    metric = torch.tensor([0.5, 0.0, 0.0, 0.0])
    assert worst_queries(metric, 3, has_relevant(results)).tolist() == [1, 2, 0]
    # ties on the metric: the first tie-breaker (ascending), then the second, then the query order
    first, second = torch.tensor([0.0, 2.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 0.3, 0.2])
    assert worst_queries(metric, 4, None, (first, second)).tolist() == [3, 2, 1, 0]
    assert worst_queries(metric, 4, None, (first,)).tolist() == [2, 3, 1, 0]


# --- brute force --------------------------------------------------------------------------------------------

def brute_force(emb, labels, is_query, is_gallery, sequences, ks, only=None):
    """Every metric with plain loops over a full cosine distance matrix."""
    e = torch.nn.functional.normalize(emb.double(), dim=1)
    dist = (1 - e @ e.T).numpy()
    out = {"cmc": {k: [] for k in ks}, "precision": {k: [] for k in ks}, "map": {k: [] for k in ks},
           "map_at_r": [], "r_precision": []}
    for q in np.flatnonzero(is_query):
        if only is not None and q not in only:
            continue
        gallery = [g for g in np.flatnonzero(is_gallery) if g != q
                   and not (sequences is not None and sequences[g] == sequences[q] and sequences[q] >= 0)]
        gallery.sort(key=lambda g: (dist[q, g], g))
        rel = [labels[g] == labels[q] for g in gallery]
        n_rel = sum(rel)
        if n_rel == 0:
            continue
        for k in ks:
            top = rel[:k]
            out["cmc"][k].append(float(any(top)))
            out["precision"][k].append(sum(top) / min(k, n_rel))
            out["map"][k].append(sum(sum(top[: i + 1]) / (i + 1) for i, h in enumerate(top) if h) / min(k, n_rel))
        top_r = rel[:n_rel]
        out["map_at_r"].append(sum(sum(top_r[: i + 1]) / (i + 1) for i, h in enumerate(top_r) if h) / n_rel)
        out["r_precision"].append(sum(top_r) / n_rel)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {name: ({k: mean(v) for k, v in value.items()} if isinstance(value, dict) else mean(value))
            for name, value in out.items()}


@pytest.mark.parametrize("seed, with_sequences", [(0, False), (1, True), (2, True)])
def test_against_brute_force(seed, with_sequences):
    rng = np.random.default_rng(seed)
    n = 90
    labels = rng.integers(0, 15, n)
    emb = torch.from_numpy(rng.normal(size=(n, 6)) + 2.0 * np.eye(15)[labels][:, :6]).float()
    is_query, is_gallery = rng.random(n) < 0.7, rng.random(n) < 0.8
    sequences = rng.integers(-1, 20, n) if with_sequences else None
    ks = (1, 3, 7)
    as_ids = None if sequences is None else [None if s < 0 else f"seq{s}" for s in sequences]  # None: no sequence
    categories = np.array(["even", "odd"])[labels % 2]
    everything = evaluate_embeddings(emb, labels, is_query, is_gallery, categories=categories, sequences=as_ids,
                                     cmc_top_k=ks, precision_top_k=ks, map_top_k=ks, compute_map_at_r=True)
    for group, only in (("OVERALL", None), ("odd", set(np.flatnonzero(labels % 2 == 1))),
                        ("even", set(np.flatnonzero(labels % 2 == 0)))):
        ours = everything[group]
        expected = brute_force(emb, labels, is_query, is_gallery, sequences, ks, only)
        for name in ("cmc", "precision", "map"):
            for k in ks:
                assert ours[name][k] == pytest.approx(expected[name][k], abs=1e-6), (group, name, k)
        assert ours["map_at_r"] == pytest.approx(expected["map_at_r"], abs=1e-6)
        assert ours["r_precision"] == pytest.approx(expected["r_precision"], abs=1e-6)


def test_chunked_equals_one_piece():
    from lookalike.retrieval import ExactSearch

    rng = np.random.default_rng(5)
    emb = torch.from_numpy(rng.normal(size=(200, 8))).float()
    labels = rng.integers(0, 40, 200)
    flags = np.ones(200, dtype=bool)
    one = evaluate_embeddings(emb, labels, flags, flags, backend=ExactSearch(query_chunk_size=1000))
    chunked = evaluate_embeddings(emb, labels, flags, flags,
                                  backend=ExactSearch(query_chunk_size=7, gallery_chunk_size=13))
    assert one == chunked


def test_one_item_gallery_and_ties():
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = [0, 1, 0, 2]
    is_query = [True, True, False, False]
    is_gallery = [False, False, True, False]
    metrics = evaluate_embeddings(emb, labels, is_query, is_gallery, cmc_top_k=(1, 5))["OVERALL"]
    assert metrics["cmc"] == {1: 1.0, 5: 1.0} and metrics["n_queries_without_relevant"] == 1
    # exact ties are ordered by gallery position: the relevant item at position 1 comes second
    tie = evaluate_embeddings(emb[:3], [0, 1, 0], [True, False, False], [False, True, True], cmc_top_k=(1, 2))
    assert tie["OVERALL"]["cmc"] == {1: 0.0, 2: 1.0}
    assert math.isclose(tie["OVERALL"]["map"][5], 0.5)


def test_category_with_one_query():
    results = hand_results()
    results.query_categories = np.array(["x", "solo", "x", "y"], dtype=object)
    reduced = reduce_metrics(per_query_metrics(results, cmc_top_k=(1, 3), precision_top_k=(3,), map_top_k=(3,)),
                             results.query_categories)
    # "solo" holds q1 only: its values are the means (CMC@1 0, CMC@3 1, precision@3 1/1, AP@3 (1/2) / 1)
    assert reduced["solo"]["cmc"] == {1: 0.0, 3: 1.0}
    assert reduced["solo"]["precision"][3] == 1.0 and reduced["solo"]["map"][3] == 0.5
    assert reduced["solo"]["n_queries"] == 1 and reduced["solo"]["n_queries_without_relevant"] == 0
    assert reduced["x"]["map"][3] == pytest.approx((5 / 9 + 0) / 2)  # q0 and q2


def test_k_larger_than_gallery():
    # 3 items, all queries and gallery, labels [0, 1, 0]; angles 0, atan(0.2) = 0.197, atan(0.5) = 0.464 rad.
    # q0: gallery {1, 2}: 1 is nearer (label 1, miss), 2 second (hit) -> CMC@1 0, CMC@10 1,
    #     precision@10 = 1 / min(10, R=1) = 1, AP@10 = (1/2) / min(10, 1) = 0.5
    # q1: no other item with label 1 -> excluded, counted in n_queries_without_relevant
    # q2: 1 is nearer (0.267 rad) than 0 (0.464 rad) -> the same values as q0
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.2], [1.0, 0.5]])
    metrics = EmbeddingMetrics(cmc_top_k=(1, 10), precision_top_k=(10,), map_top_k=(10,))
    metrics.update(emb, torch.tensor([0, 1, 0]), torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool),
                   torch.arange(3))
    overall = metrics.compute()["OVERALL"]
    assert overall["cmc"] == {1: 0.0, 10: 1.0} and overall["precision"] == {10: 1.0} and overall["map"] == {10: 0.5}
    assert overall["n_queries"] == 3 and overall["n_queries_without_relevant"] == 1
    results = metrics.last_results
    assert results.k == 10 and results.retrieved_ids[:, 2:].eq(-1).all()
    assert results.distances[:, 2:].isinf().all() and not results.is_relevant[:, 2:].any()


def test_reduce_guards_and_defaults():
    results = hand_results()
    per_query = per_query_metrics(results)
    assert per_query["has_relevant"].tolist() == [True, True, True, False]
    explicit = reduce_metrics(per_query, valid=torch.tensor([True, True, True, True]))
    assert explicit["OVERALL"]["n_queries_without_relevant"] == 0 and "has_relevant" not in explicit["OVERALL"]
    with pytest.raises(LookalikeError, match="reserved"):
        reduce_metrics(per_query, ["OVERALL", "x", "x", "x"])
    with pytest.raises(LookalikeError, match="positive integers"):
        cmc_at_k(results, [0])
