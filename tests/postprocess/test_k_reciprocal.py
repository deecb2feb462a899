"""k-reciprocal re-ranking: a hand-worked 1-D case, and equality with a dense full-matrix reference (written
here after the paper's algorithm) when the retrieved lists cover the whole gallery."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lookalike.errors import LookalikeError
from lookalike.metrics import EmbeddingMetrics
from lookalike.postprocess import KReciprocalReranker
from lookalike.retrieval import RetrievalResults


def dense_k_reciprocal(x: np.ndarray, query: np.ndarray, gallery: np.ndarray, k1: int, k2: int,
                       lam: float, distance: str) -> np.ndarray:
    """The paper's algorithm on the full (N x N) matrix of all items; returns final distances (Q x G)."""
    n = len(x)
    if distance == "cosine":
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        d = np.maximum(0.0, 1.0 - u @ u.T)
    else:
        d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    d = d / d.max(axis=1, keepdims=True)
    rank = np.argsort(d, axis=1, kind="stable")

    def reciprocal(i: int, k: int) -> np.ndarray:
        forward = rank[i, : k + 1]
        return np.array([j for j in forward if i in rank[j, : k + 1]])

    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = list(r)
        for c in r:
            rc = reciprocal(c, int(round(k1 / 2)))
            if len(np.intersect1d(rc, r)) > 2.0 / 3.0 * len(rc):
                expanded += list(rc)
        e = np.unique(expanded)
        w = np.exp(-d[i, e])
        v[i, e] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    jaccard = np.zeros((n, n))
    for i in range(n):
        overlap = np.minimum(v[i][None, :], v).sum(1)
        jaccard[i] = 1.0 - overlap / (2.0 - overlap)
    final = (1 - lam) * jaccard + lam * d
    return final[np.ix_(query, gallery)]


@pytest.mark.parametrize("distance,k1,k2,lam", [("cosine", 4, 3, 0.3), ("euclidean", 5, 1, 0.5),
                                                 ("cosine", 20, 6, 0.3)])
def test_equals_the_dense_reference_when_lists_cover_the_gallery(distance, k1, k2, lam):
    rng = np.random.default_rng(k1)
    n_q, n_g = 9, 31
    x = rng.normal(size=(n_q + n_g, 6)).astype(np.float32)
    labels = torch.from_numpy(rng.integers(0, 6, n_q + n_g))
    is_query = torch.zeros(n_q + n_g, dtype=torch.bool)
    is_query[:n_q] = True
    emb = torch.from_numpy(x)
    results = RetrievalResults.from_embeddings(emb, labels, is_query, ~is_query, k=n_g, distance=distance)
    out = KReciprocalReranker(k1=k1, k2=k2, lambda_=lam, top_n=n_g)(results, emb[:n_q], emb[n_q:], distance)
    reference = dense_k_reciprocal(x.astype(np.float64), np.arange(n_q), np.arange(n_q, n_q + n_g), k1, k2, lam,
                                   distance)
    expected_order = np.argsort(reference, axis=1, kind="stable")
    assert out.retrieved_ids.tolist() == expected_order.tolist()
    np.testing.assert_allclose(out.distances.numpy(), np.sort(reference, axis=1), rtol=1e-5, atol=1e-6)
    relevant = (labels[n_q:][out.retrieved_ids] == labels[:n_q, None])
    assert torch.equal(out.is_relevant, relevant)


def test_shared_query_and_gallery_items_are_one_item_each():
    # every item is a query and a gallery item (like a validation set of one split): the joint set is the
    # items themselves, a query never retrieves itself, and with full lists the order is the dense one's
    rng = np.random.default_rng(3)
    x = rng.normal(size=(24, 5)).astype(np.float32)
    emb = torch.from_numpy(x)
    flags = torch.ones(24, dtype=torch.bool)
    labels = torch.arange(24) // 3
    results = RetrievalResults.from_embeddings(emb, labels, flags, flags, k=23)
    out = KReciprocalReranker(k1=6, k2=2, top_n=23)(results, emb, emb)
    reference = dense_k_reciprocal(x.astype(np.float64), np.arange(24), np.arange(24), 6, 2, 0.3, "cosine")
    np.fill_diagonal(reference, np.inf)
    assert out.retrieved_ids.tolist() == np.argsort(reference, axis=1, kind="stable")[:, :23].tolist()


def test_hand_worked_two_clusters():
    # 1-D points (euclidean): cluster a = {0, 1, 2}, cluster b = {10, 11}, the query q at 5.4. With k1 = 2,
    # k2 = 1, lambda = 0: q's 2 nearest are {q, 2, 1}, but 2's are {2, 1, 0} and 1's {1, 0, 2}, so q is
    # reciprocal only with itself: V[q] = {q: 1}; q is in no other item's set, so the Jaccard distance of q to
    # every gallery item is 1 and the search order stays (ties keep it).
    points = torch.tensor([[5.4], [0.0], [1.0], [2.0], [10.0], [11.0]])
    labels = torch.tensor([9, 0, 0, 0, 1, 1])
    is_query = torch.tensor([True, False, False, False, False, False])
    results = RetrievalResults.from_embeddings(points, labels, is_query, ~is_query, k=5, distance="euclidean")
    assert results.retrieved_ids.tolist() == [[2, 1, 3, 0, 4]]  # by |5.4 - x|: 2, 1, 10, 0, 11
    out = KReciprocalReranker(k1=2, k2=1, lambda_=0.0, top_n=5)(results, points[:1], points[1:], "euclidean")
    assert out.distances.tolist() == [[1.0] * 5]
    assert out.retrieved_ids.tolist() == results.retrieved_ids.tolist()  # ties keep the search order
    # Now q sits inside cluster b (at 10.4): its 2 nearest {q, 10, 11}; 10's {10, q, 11}; 11's {11, q, 10}:
    # all reciprocal. Half sets (k = round(2/2) = 1): q {q, 10}, 10 {10, q}, 11 {11} (11's nearest is q, whose
    # nearest is 10); each is > 2/3 inside q's set, so E(q) = {q, 10, 11}. The farthest item from q is 0 at
    # 10.4^2 = 108.16, so over (q, 10, 11) V[q] = softmax(-(0, 0.16, 0.36) / 108.16) = (0.33387, 0.33338,
    # 0.33276); V[10] = softmax(-(0.16, 0, 1) / 100) = (0.33409, 0.33462, 0.33129) (10's farthest is 0 at 100).
    # The sum of minima is 0.99854, so the Jaccard distance is 1 - 0.99854 / 1.00146 = 0.00292; the items of
    # cluster a share nothing with q.
    points[0, 0] = 10.4
    results = RetrievalResults.from_embeddings(points, labels, is_query, ~is_query, k=5, distance="euclidean")
    assert results.retrieved_ids.tolist() == [[3, 4, 2, 1, 0]]
    out = KReciprocalReranker(k1=2, k2=1, lambda_=0.0, top_n=5)(results, points[:1], points[1:], "euclidean")
    jac = out.distances[0].tolist()
    assert out.retrieved_ids[0, :2].tolist() == [3, 4]  # 10 and 11 stay first
    assert jac[0] == pytest.approx(0.00292, abs=2e-5) and jac[1] < 0.01  # nearly identical vectors
    assert jac[2:] == [1.0, 1.0, 1.0]  # cluster a shares nothing with q


def test_items_beyond_top_n_keep_their_order_and_metrics_use_it():
    torch.manual_seed(0)
    emb = torch.randn(80, 8)
    labels = torch.arange(80) // 4
    flags = torch.ones(80, dtype=torch.bool)
    results = RetrievalResults.from_embeddings(emb, labels, flags, flags, k=30)
    out = KReciprocalReranker(top_n=10)(results, emb, emb)
    assert torch.equal(out.retrieved_ids[:, 10:], results.retrieved_ids[:, 10:])
    assert torch.equal(out.retrieved_ids[:, :10].sort(1).values, results.retrieved_ids[:, :10].sort(1).values)
    assert bool((out.distances[:, 1:] >= out.distances[:, :-1]).all())
    metrics = EmbeddingMetrics(cmc_top_k=(1,), postprocessor=KReciprocalReranker(top_n=10))
    metrics.update(emb, labels, flags, flags, torch.arange(80))
    metrics.compute()
    assert metrics.last_results.k == 10


def test_bad_arguments_are_refused():
    with pytest.raises(LookalikeError, match="k1"):
        KReciprocalReranker(k1=0)
    with pytest.raises(LookalikeError, match="lambda_"):
        KReciprocalReranker(lambda_=1.5)
    emb = torch.eye(3)
    flags = torch.ones(3, dtype=torch.bool)
    results = RetrievalResults.from_embeddings(emb, torch.tensor([0, 0, 1]), flags, flags, k=2,
                                               distance="inner_product")
    with pytest.raises(LookalikeError, match="cosine or euclidean"):
        KReciprocalReranker()(results, emb, emb, "inner_product")
