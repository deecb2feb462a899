"""Alpha query expansion on a hand-worked 2-D case, its invariants on random data, and its use in metrics."""

from __future__ import annotations

import math

import pytest
import torch

from lookalike.errors import LookalikeError
from lookalike.metrics import EmbeddingMetrics
from lookalike.postprocess import QueryExpansion
from lookalike.retrieval import RetrievalResults


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def test_expansion_pulls_in_the_relevant_item_behind_a_distractor():
    # query at 0 deg (label 0); gallery: g1 at 15 (label 0), n1 at -22 (label 1), g2 at 30 (label 0).
    # Plain search: g1 (15), n1 (22), g2 (30): precision@2 = 1/2. Expanded with its nearest neighbour g1
    # (alpha = 0: weight 1): q' at 7.5 deg, so g1 (7.5), g2 (22.5), n1 (29.5): precision@2 = 1.
    embeddings = torch.tensor([unit(0), unit(15), unit(-22), unit(30)])
    labels = torch.tensor([0, 0, 1, 0])
    is_query = torch.tensor([True, False, False, False])
    results = RetrievalResults.from_embeddings(embeddings, labels, is_query, ~is_query, k=3)
    assert results.retrieved_ids.tolist() == [[0, 1, 2]]
    expanded = QueryExpansion(n_neighbours=1, alpha=0.0, top_n=3)(results, embeddings[:1], embeddings[1:])
    assert expanded.retrieved_ids.tolist() == [[0, 2, 1]]
    assert expanded.is_relevant.tolist() == [[True, True, False]]
    expected = [1 - math.cos(math.radians(a)) for a in (7.5, 22.5, 29.5)]
    assert expanded.distances[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert torch.equal(expanded.n_relevant, results.n_relevant)

    metrics = EmbeddingMetrics(cmc_top_k=(1,), precision_top_k=(2,), map_top_k=(2,),
                               postprocessor=QueryExpansion(n_neighbours=1, alpha=0.0, top_n=3))
    metrics.update(embeddings, labels, is_query, ~is_query, torch.arange(4))
    assert metrics.compute()["OVERALL"]["precision"][2] == pytest.approx(1.0)
    plain = EmbeddingMetrics(cmc_top_k=(1,), precision_top_k=(2,), map_top_k=(2,))
    plain.update(embeddings, labels, is_query, ~is_query, torch.arange(4))
    assert plain.compute()["OVERALL"]["precision"][2] == pytest.approx(0.5)


def test_expansion_permutes_each_row_sorts_distances_and_keeps_padding_last():
    torch.manual_seed(0)
    embeddings = torch.randn(60, 8)
    labels = torch.arange(60) // 3
    is_query = torch.ones(60, dtype=torch.bool)
    results = RetrievalResults.from_embeddings(embeddings, labels, is_query, is_query, k=10)
    results = results.with_threshold(float(results.distances[:, 6].median()))  # some rows padded
    expanded = QueryExpansion(n_neighbours=3, top_n=10)(results, embeddings, embeddings)
    assert torch.equal(expanded.retrieved_ids.sort(1).values, results.retrieved_ids.sort(1).values)
    assert bool((expanded.distances[:, 1:] >= expanded.distances[:, :-1]).all())
    assert torch.equal(expanded.retrieved_ids < 0, results.retrieved_ids < 0)
    pairs = lambda r: {(q, g, rel) for q, (ids, rels) in enumerate(zip(r.retrieved_ids.tolist(),  # noqa: E731
                                                                        r.is_relevant.tolist()))
                       for g, rel in zip(ids, rels)}
    assert pairs(expanded) == pairs(results)  # relevance travels with its item


def test_bad_arguments_and_distances_are_refused():
    with pytest.raises(LookalikeError, match="top_n"):
        QueryExpansion(n_neighbours=5, top_n=3)
    with pytest.raises(LookalikeError, match="n_neighbours"):
        QueryExpansion(n_neighbours=0)
    embeddings = torch.eye(3)
    flags = torch.ones(3, dtype=torch.bool)
    results = RetrievalResults.from_embeddings(embeddings, torch.tensor([0, 0, 1]), flags, flags, k=2,
                                               distance="euclidean")
    with pytest.raises(LookalikeError, match="cosine"):
        QueryExpansion()(results, embeddings, embeddings, "euclidean")
