"""FaissSearch: Flat agrees with exact search, HNSW / IVF recall on easy data, exclusion and errors."""

import pytest
import torch

from lookalike.errors import LookalikeError
from lookalike.retrieval import ExactSearch, FaissSearch, make_backend

pytest.importorskip("faiss")


def clustered(n_clusters, per_cluster, n_queries, dim, seed):
    """Well separated clusters: approximate indexes should find the true neighbours."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, dim, generator=gen) * 4
    g = centres.repeat_interleave(per_cluster, 0) + torch.randn(n_clusters * per_cluster, dim, generator=gen)
    q = centres[torch.randint(0, n_clusters, (n_queries,), generator=gen)] + torch.randn(n_queries, dim, generator=gen)
    return q, g


def recall_at(k, approx_ids, exact_ids):
    hits = (approx_ids[:, :, None] == exact_ids[:, None, :]) & (approx_ids[:, :, None] >= 0)
    return float(hits.any(dim=2).sum()) / exact_ids.numel()


@pytest.mark.parametrize("distance", ["cosine", "inner_product", "euclidean"])
def test_flat_equals_exact(distance):
    gen = torch.Generator().manual_seed(0)
    q, g = torch.randn(100, 32, generator=gen), torch.randn(700, 32, generator=gen)
    ed, ei = ExactSearch(distance).search(q, g, 10)
    fd, fi = FaissSearch("Flat", distance).search(q, g, 10)
    assert torch.equal(fi, ei)
    assert torch.allclose(fd, ed, atol=1e-4, rtol=1e-4)


def test_flat_with_exclusion_and_padding():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(60, 8, generator=gen)
    q_pos, g_pos = torch.arange(0, 40), torch.arange(20, 60)
    seq = torch.arange(60) // 3  # sequences of 3 consecutive items
    keys = [(q_pos, g_pos), (seq[q_pos], seq[g_pos])]
    ed, ei = ExactSearch("euclidean").search(x[q_pos], x[g_pos], 45, exclude=keys)
    fd, fi = FaissSearch("Flat", "euclidean").search(x[q_pos], x[g_pos], 45, exclude=keys)
    assert torch.equal(fi, ei)  # k > valid items: same padding
    assert torch.allclose(fd[ei >= 0], ed[ei >= 0], atol=1e-4)
    assert torch.isinf(fd[ei < 0]).all()
    # a callable rule: faiss searches wider until each row has k items
    excluded = lambda a, b: (b % 2) == 0  # noqa: E731  (drop every even gallery position)
    fd, fi = FaissSearch("Flat", "euclidean").search(x[q_pos], x[g_pos], 10, exclude=excluded)
    ed, ei = ExactSearch("euclidean").search(x[q_pos], x[g_pos], 10, exclude=excluded)
    assert torch.equal(fi, ei) and bool((fi % 2 == 1).all())


@pytest.mark.parametrize("factory", ["HNSW32", "IVF16,Flat"])
def test_approximate_recall_on_easy_data(factory):
    q, g = clustered(n_clusters=40, per_cluster=100, n_queries=200, dim=24, seed=2)
    _, exact = ExactSearch("cosine").search(q, g, 10)
    _, approx = FaissSearch(factory, "cosine", nprobe=4, efSearch=64).search(q, g, 10)
    assert recall_at(10, approx, exact) > 0.9


def test_index_is_reused_for_the_same_gallery():
    q, g = clustered(10, 30, 5, 8, seed=3)
    s = FaissSearch("Flat", "cosine")
    s.search(q, g, 3)
    first = s.index
    s.search(q[:2], g, 3)
    assert s.index is first
    s.search(q, g * 2, 3)
    assert s.index is not first


def test_errors_are_user_errors():
    q, g = torch.randn(3, 8), torch.randn(20, 8)
    with pytest.raises(LookalikeError, match="factory string"):
        FaissSearch("NotAnIndex").search(q, g, 2)
    with pytest.raises(LookalikeError, match="IVF"):
        FaissSearch("IVF64,Flat").search(q, g, 2)
    with pytest.raises(LookalikeError, match="use_gpu"):
        FaissSearch("Flat", use_gpu="yes")


def test_make_backend_parses_specs():
    assert make_backend("exact").precision == "auto" and make_backend("exact-fp32").precision == "fp32"
    b = make_backend("exact-bf16", "euclidean", query_chunk_size=5, gallery_chunk_size=7)
    assert (b.precision, b.distance, b.query_chunk_size, b.gallery_chunk_size) == ("bf16", "euclidean", 5, 7)
    f = make_backend("faiss:IVF1024,Flat", "inner_product", nprobe=8)
    assert isinstance(f, FaissSearch) and f.factory == "IVF1024,Flat" and f.nprobe == 8
    own = ExactSearch("cosine")
    assert make_backend(own) is own
    with pytest.raises(LookalikeError, match="valid choices"):
        make_backend("annoy")
    with pytest.raises(LookalikeError, match="same distance"):
        make_backend(own, "euclidean")
    with pytest.raises(LookalikeError, match="factory string after"):
        make_backend("faiss:")


def test_gallery_rows_are_copied_for_faiss():
    # faiss builds its own index: gallery_rows give it a copy of the rows, with the same answer
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(200, 16, generator=gen)
    rows = torch.arange(200) % 3 != 1
    d, i = FaissSearch("Flat", "euclidean").search(x[:20], x, 5, gallery_rows=rows)
    d2, i2 = FaissSearch("Flat", "euclidean").search(x[:20], x[rows], 5)
    assert torch.equal(i, i2) and torch.equal(d, d2)
