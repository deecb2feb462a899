"""RetrievalResults.from_embeddings against a brute force (self / sequence exclusion, n_relevant) and its methods."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lookalike.errors import LookalikeError
from lookalike.retrieval import RetrievalResults, factorize_sequences

INF = float("inf")


def make_dataset(n=90, dim=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, dim, generator=gen)
    labels = torch.randint(0, 6, (n,), generator=gen) * 10 - 7  # arbitrary (negative too) integer labels
    is_query = torch.rand(n, generator=gen) < 0.6
    is_gallery = torch.rand(n, generator=gen) < 0.7
    is_query[0] = is_gallery[0] = True
    seq_pool = np.array(["a", "b", "c", None, float("nan"), 7], dtype=object)
    sequences = seq_pool[torch.randint(0, 6, (n,), generator=gen).numpy()]
    categories = np.array(["shoes", "bags", "hats"], dtype=object)[np.arange(n) % 3]
    return emb, labels, is_query, is_gallery, sequences, categories


def same_sequence(sequences, i, j):
    a, b = sequences[i], sequences[j]
    missing = lambda v: v is None or (isinstance(v, float) and np.isnan(v))  # noqa: E731
    return not missing(a) and not missing(b) and a == b


def brute_force_results(emb, labels, is_query, is_gallery, sequences, k):
    """Python loops on purpose: the independent reference of the vectorised code."""
    q_ids, g_ids = is_query.nonzero().squeeze(1).tolist(), is_gallery.nonzero().squeeze(1).tolist()
    x = F.normalize(emb.double(), dim=1)
    ids, n_rel = [], []
    for qi in q_ids:
        allowed = [
            p
            for p, gi in enumerate(g_ids)
            if gi != qi and not (sequences is not None and same_sequence(sequences, qi, gi))
        ]
        dist = {p: float((1 - x[qi] @ x[g_ids[p]]).float()) for p in allowed}
        ranked = sorted(allowed, key=lambda p: (dist[p], p))[:k]
        ids.append(ranked + [-1] * (k - len(ranked)))
        n_rel.append(sum(int(labels[g_ids[p]] == labels[qi]) for p in allowed))
    return torch.tensor(ids), torch.tensor(n_rel)


@pytest.mark.parametrize("backend", ["exact", "exact-bf16", "faiss:Flat"])
@pytest.mark.parametrize("with_sequences", [False, True])
def test_from_embeddings_matches_brute_force(backend, with_sequences):
    emb, labels, is_query, is_gallery, sequences, categories = make_dataset()
    seq = sequences if with_sequences else None
    r = RetrievalResults.from_embeddings(
        emb, labels, is_query, is_gallery, k=8, sequences=seq, categories=categories, backend=backend,
        query_chunk_size=None if backend.startswith("faiss") else 16,
    )
    ref_ids, ref_n_rel = brute_force_results(emb, labels, is_query, is_gallery, seq, 8)
    assert torch.equal(r.retrieved_ids, ref_ids)
    assert torch.equal(r.n_relevant, ref_n_rel)
    assert torch.equal(r.query_ids, is_query.nonzero().squeeze(1))
    assert torch.equal(r.gallery_ids, is_gallery.nonzero().squeeze(1))
    assert torch.equal(r.query_labels, labels[r.query_ids]) and torch.equal(r.gallery_labels, labels[r.gallery_ids])
    valid = r.retrieved_ids >= 0
    expected_rel = valid & (r.gallery_labels[r.retrieved_ids.clamp(min=0)] == r.query_labels[:, None])
    assert torch.equal(r.is_relevant, expected_rel)
    assert torch.isinf(r.distances[~valid]).all() and torch.isfinite(r.distances[valid]).all()
    # never itself, never its own sequence
    dataset_ids = r.retrieved_dataset_ids
    assert not bool((dataset_ids == r.query_ids[:, None]).any())
    assert list(r.query_categories) == list(categories[r.query_ids.numpy()])
    assert (r.k, r.n_queries, r.n_gallery) == (8, int(is_query.sum()), int(is_gallery.sum()))


def test_n_relevant_counts_the_whole_gallery_not_top_k():
    # 1 query, 10 gallery items of its label: k=3 but n_relevant=10 (minus the query itself, which is in the gallery)
    emb = torch.randn(11, 4)
    labels = torch.zeros(11, dtype=torch.int64)
    r = RetrievalResults.from_embeddings(emb, labels, torch.arange(11) == 0, torch.ones(11, dtype=torch.bool), k=3)
    assert r.n_relevant.tolist() == [10]
    assert r.is_relevant.all()


def test_factorize_sequences_handles_missing_values():
    codes = factorize_sequences(np.array(["x", None, "y", float("nan"), "x", 3], dtype=object))
    assert codes.tolist() == [0, -1, 1, -1, 0, 2]
    assert factorize_sequences(torch.tensor([5, 5, 2])).tolist() == [0, 0, 1]


def small_results():
    return RetrievalResults(
        retrieved_ids=torch.tensor([[2, 0, 1], [1, -1, -1], [0, 2, 1]]),
        distances=torch.tensor([[0.1, 0.5, 0.9], [0.3, INF, INF], [0.2, 0.2, 0.6]]),
        is_relevant=torch.tensor([[True, False, True], [False, False, False], [True, True, False]]),
        n_relevant=torch.tensor([2, 1, 3]),
        query_ids=torch.tensor([10, 11, 12]),
        gallery_ids=torch.tensor([20, 21, 22]),
        query_labels=torch.tensor([1, 2, 3]),
        gallery_labels=torch.tensor([3, 1, 1]),
        query_categories=np.array(["a", "b", "a"], dtype=object),
    )


def test_with_threshold_top_subset():
    r = small_results()
    t = r.with_threshold(0.5)
    assert t.retrieved_ids.tolist() == [[2, 0, -1], [1, -1, -1], [0, 2, -1]]
    assert torch.isinf(t.distances[:, 2]).all() and t.distances[0, :2].tolist() == pytest.approx([0.1, 0.5])
    assert t.is_relevant.tolist() == [[True, False, False], [False, False, False], [True, True, False]]
    assert torch.equal(t.n_relevant, r.n_relevant)
    top = r.top(2)
    assert top.k == 2 and torch.equal(top.retrieved_ids, r.retrieved_ids[:, :2])
    assert torch.equal(top.n_relevant, r.n_relevant)
    with pytest.raises(LookalikeError, match="k=3"):
        r.top(4)
    sub = r.subset(torch.tensor([True, False, True]))
    assert sub.n_queries == 2 and sub.query_ids.tolist() == [10, 12] and list(sub.query_categories) == ["a", "a"]
    assert torch.equal(sub.gallery_ids, r.gallery_ids)
    assert r.subset([2, 0]).query_labels.tolist() == [3, 1]
    assert r.subset(np.array([], dtype=np.int64)).n_queries == 0
    assert r.retrieved_dataset_ids.tolist() == [[22, 20, 21], [21, -1, -1], [20, 22, 21]]
    assert r == small_results() and r != t


def test_from_embeddings_validation():
    emb, labels, is_query, is_gallery, _, _ = make_dataset(n=10)
    with pytest.raises(LookalikeError, match="No query items"):
        RetrievalResults.from_embeddings(emb, labels, torch.zeros(10, dtype=torch.bool), is_gallery, k=2)
    with pytest.raises(LookalikeError, match="No gallery items"):
        RetrievalResults.from_embeddings(emb, labels, is_query, torch.zeros(10, dtype=torch.bool), k=2)
    with pytest.raises(LookalikeError, match="labels"):
        RetrievalResults.from_embeddings(emb, labels[:5], is_query, is_gallery, k=2)
    with pytest.raises(LookalikeError, match="integers"):
        RetrievalResults.from_embeddings(emb, labels.float(), is_query, is_gallery, k=2)
    with pytest.raises(LookalikeError, match="is_query"):
        RetrievalResults.from_embeddings(emb, labels, torch.full((10,), 2), is_gallery, k=2)
    bad = emb.clone()
    bad[[3, 7, 8]] = float("nan")
    with pytest.raises(LookalikeError, match=r"3 of 10 rows \(first rows: \[3, 7, 8\]\)"):
        RetrievalResults.from_embeddings(bad, labels, is_query, is_gallery, k=2)
    with pytest.raises(LookalikeError, match="sequences"):
        RetrievalResults.from_embeddings(emb, labels, is_query, is_gallery, k=2, sequences=[1, 2])
    with pytest.raises(LookalikeError, match="Unknown search backend"):
        RetrievalResults.from_embeddings(emb, labels, is_query, is_gallery, k=2, backend="exact-fp16")
    with pytest.raises(LookalikeError, match="shape"):
        RetrievalResults(
            retrieved_ids=torch.zeros(2, 3, dtype=torch.int64), distances=torch.zeros(2, 2),
            is_relevant=torch.zeros(2, 3, dtype=torch.bool), n_relevant=torch.zeros(2, dtype=torch.int64),
            query_ids=torch.arange(2), gallery_ids=torch.arange(3), query_labels=torch.zeros(2, dtype=torch.int64),
            gallery_labels=torch.zeros(3, dtype=torch.int64),
        )
