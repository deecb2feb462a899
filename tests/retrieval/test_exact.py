"""ExactSearch against a float64 full-matrix brute force; bf16 screening against fp32; ties, exclusion, padding."""

import pytest
import torch
import torch.nn.functional as F

from lookalike.errors import LookalikeError
from lookalike.retrieval import ExactSearch, Exclusion, pair_distances
from lookalike.retrieval.bounds import U_BF16_OUT, ScreeningBounds

INF = float("inf")


def brute_force(q, g, k, distance, excluded=None):
    """Full float64 distance matrix rounded to float32 (like the reported distances, so ties at float32
    resolution are broken by index), masked, sorted by (distance, index); padding (-1, inf)."""
    q, g = q.double(), g.double()
    if distance == "cosine":
        D = (1 - F.normalize(q, dim=1) @ F.normalize(g, dim=1).T).clamp_min(0)
    elif distance == "inner_product":
        D = -(q @ g.T)
    else:
        D = torch.cdist(q, g)
    D = D.float().double()
    if excluded is not None:
        D = D.masked_fill(excluded, INF)
    if D.shape[1] < k:
        D = torch.cat([D, torch.full((len(q), k - D.shape[1]), INF, dtype=D.dtype)], dim=1)
    order = torch.sort(D, dim=1, stable=True).indices[:, :k]
    dist = D.gather(1, order)
    return dist, torch.where(torch.isinf(dist), -1, order)


def assert_matches_reference(d, i, rd, ri, atol=1e-5):
    assert torch.equal(i, ri)
    finite = torch.isfinite(rd)
    assert torch.equal(torch.isfinite(d), finite)
    assert torch.allclose(d[finite].double(), rd[finite], atol=atol, rtol=1e-5)


@pytest.mark.parametrize("distance", ["cosine", "inner_product", "euclidean"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_matches_full_matrix_reference_for_any_chunking(distance, precision):
    gen = torch.Generator().manual_seed(0)
    q, g = torch.randn(203, 24, generator=gen), torch.randn(517, 24, generator=gen)
    rd, ri = brute_force(q, g, 7, distance)
    results = []
    for qc, gc in [(7, 13), (64, 100), (203, 517), (1000, 2000)]:
        s = ExactSearch(distance, query_chunk_size=qc, gallery_chunk_size=gc, precision=precision)
        d, i = s.search(q, g, 7)
        assert_matches_reference(d, i, rd, ri)
        results.append((d, i))
    # canonical distances: bit-identical whatever the chunking
    for d, i in results[1:]:
        assert torch.equal(d, results[0][0]) and torch.equal(i, results[0][1])


def test_grouped_merge_path_matches_reference():
    # gallery chunks of 64 (a multiple of the merge's group width) over many blocks exercise the filtered merge
    gen = torch.Generator().manual_seed(1)
    q, g = torch.randn(300, 16, generator=gen), torch.randn(3000, 16, generator=gen)
    rd, ri = brute_force(q, g, 5, "cosine")
    for precision in ("fp32", "bf16"):
        d, i = ExactSearch("cosine", query_chunk_size=128, gallery_chunk_size=64, precision=precision).search(q, g, 5)
        assert_matches_reference(d, i, rd, ri)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_exact_ties_are_ordered_by_gallery_index(precision):
    # 6 distinct vectors, each repeated 50 times in shuffled positions: every distance has 50 exact ties
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(6, 12, generator=gen)
    g = base[torch.randperm(300, generator=gen) % 6]
    q = torch.randn(40, 12, generator=gen)
    for distance in ("cosine", "inner_product", "euclidean"):
        rd, ri = brute_force(q, g, 60, distance)
        s = ExactSearch(distance, query_chunk_size=16, gallery_chunk_size=64, precision=precision, extra_candidates=4)
        d, i = s.search(q, g, 60)
        assert torch.equal(i, ri)
        assert s.last_stats["fallback"] > 0  # the ties exceed the candidate margin: fallback path used
        # within each tie group indices ascend
        same = d[:, 1:] == d[:, :-1]
        assert bool((i[:, 1:][same] > i[:, :-1][same]).all())


def test_bf16_equals_fp32_on_random_data():
    gen = torch.Generator().manual_seed(3)
    for distance in ("cosine", "inner_product", "euclidean"):
        for dim in (8, 64, 384):
            q, g = torch.randn(150, dim, generator=gen), torch.randn(900, dim, generator=gen) * 2
            a = ExactSearch(distance, precision="fp32", gallery_chunk_size=256).search(q, g, 10)
            b = ExactSearch(distance, precision="bf16", gallery_chunk_size=256).search(q, g, 10)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bf16_equals_fp32_on_adversarial_near_ties():
    # gallery = a few centres plus perturbations far below bf16 resolution (1e-5 .. 1e-3) and exact duplicates:
    # bf16 cannot order them, the bound must send those queries to the exact fallback
    gen = torch.Generator().manual_seed(4)
    centres = torch.randn(5, 64, generator=gen)
    scales = torch.tensor([0.0, 1e-6, 1e-5, 1e-4, 1e-3, 3e-3])
    g = centres.repeat_interleave(60, 0) + torch.randn(300, 64, generator=gen) * scales.repeat(50)[:, None]
    g = g[torch.randperm(300, generator=gen)]
    q = torch.cat([centres + 1e-4 * torch.randn(5, 64, generator=gen), torch.randn(20, 64, generator=gen)])
    for distance in ("cosine", "inner_product", "euclidean"):
        fp32 = ExactSearch(distance, precision="fp32", gallery_chunk_size=64)
        bf16 = ExactSearch(distance, precision="bf16", gallery_chunk_size=64)
        a, b = fp32.search(q, g, 25), bf16.search(q, g, 25)
        assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
        assert bf16.last_stats["fallback"] > 0
        rd, ri = brute_force(q, g, 25, distance)
        # float64 reference may order pairs closer than float32 resolution differently: compare distances only
        assert torch.allclose(a[0].double(), rd, atol=1e-5, rtol=1e-5)


def test_bf16_bound_covers_observed_error():
    # cancellation-heavy vectors and a wide dynamic range: the measured bf16 screening error stays within the bound
    gen = torch.Generator().manual_seed(5)
    d = 384
    q = torch.randn(64, d, generator=gen) * torch.logspace(-3, 3, d)[torch.randperm(d, generator=gen)]
    g = torch.randn(512, d, generator=gen) * torch.logspace(-3, 3, d)[torch.randperm(d, generator=gen)]
    g[:, ::2] += 100.0
    q[:, 1::2] -= 100.0
    for distance in ("cosine", "inner_product"):
        prep = ScreeningBounds(q, g, distance, "bf16")
        qs = prep.prep32(q, prep.q_inv).bfloat16()
        gs = prep.prep32(g, prep.g_inv).bfloat16()
        observed = (qs @ gs.T).double()
        qh = q.double() if distance == "inner_product" else F.normalize(q.double(), dim=1)
        gh = g.double() if distance == "inner_product" else F.normalize(g.double(), dim=1)
        exact = qh @ gh.T
        bound = prep.score_error(torch.arange(len(q)), "bf16")[:, None] + U_BF16_OUT * observed.abs()
        assert bool(((observed - exact).abs() <= bound).all())
        assert float(((observed - exact).abs() / bound).max()) > 0.05  # and the bound is not absurdly loose


def test_zero_vectors_with_cosine():
    q = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    g = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    d, i = ExactSearch("cosine").search(q, g, 3)
    assert i.tolist() == [[0, 1, 2], [1, 0, 2]]  # a zero vector is at distance 1 from everything; ties by index
    assert d.tolist() == [[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_self_and_key_exclusion_and_callable_agree(precision, monkeypatch):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(120, 10, generator=gen)
    q_pos, g_pos = torch.arange(0, 80), torch.arange(30, 120)  # overlap 30..79 (dataset indices)
    seq = torch.randint(-1, 8, (120,), generator=gen)  # -1 = no sequence
    same_seq = (seq[q_pos][:, None] == seq[g_pos][None, :]) & (seq[q_pos][:, None] >= 0)
    excluded = (q_pos[:, None] == g_pos[None, :]) | same_seq
    rd, ri = brute_force(x[q_pos], x[g_pos], 15, "euclidean", excluded)
    keys = [(q_pos, g_pos), (seq[q_pos], seq[g_pos])]
    s = ExactSearch("euclidean", query_chunk_size=32, gallery_chunk_size=20, precision=precision)
    d, i = s.search(x[q_pos], x[g_pos], 15, exclude=keys)
    assert_matches_reference(d, i, rd, ri)
    d2, i2 = s.search(x[q_pos], x[g_pos], 15, exclude=lambda a, b: excluded[a, b])
    assert torch.equal(d2, d) and torch.equal(i2, i)
    monkeypatch.setattr(Exclusion, "MAX_SPARSE_PAIRS", 0)  # dense key comparison per block
    d3, i3 = s.search(x[q_pos], x[g_pos], 15, exclude=keys)
    assert torch.equal(d3, d) and torch.equal(i3, i)


def test_padding_when_k_exceeds_valid_items():
    gen = torch.Generator().manual_seed(7)
    q, g = torch.randn(4, 3, generator=gen), torch.randn(5, 3, generator=gen)
    d, i = ExactSearch("cosine").search(q, g, 8, exclude=(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 9, 9, 9])))
    assert (i[:, 5:] == -1).all() and torch.isinf(d[:, 5:]).all()
    assert (i[0] >= 0).sum() == 4 and 0 not in i[0].tolist()  # query 0 lost gallery item 0
    assert (i[2] >= 0).sum() == 5
    rd, ri = brute_force(q, g, 8, "cosine")
    assert torch.equal(i[2:], ri[2:])


def test_one_item_gallery_and_single_query():
    g = torch.tensor([[1.0, 2.0]])
    d, i = ExactSearch("euclidean").search(torch.tensor([[1.0, 2.0], [4.0, 6.0]]), g, 3)
    assert i.tolist() == [[0, -1, -1], [0, -1, -1]]
    assert d[:, 0].tolist() == [0.0, 5.0] and torch.isinf(d[:, 1:]).all()
    d, i = ExactSearch("cosine", precision="bf16").search(torch.tensor([[1.0, 0.0]]), g, 1, exclude=([0], [0]))
    assert i.tolist() == [[-1]] and torch.isinf(d).all()


def test_input_validation():
    s = ExactSearch()
    with pytest.raises(LookalikeError, match="dimension"):
        s.search(torch.randn(2, 3), torch.randn(4, 5), 1)
    bad = torch.randn(6, 3)
    bad[[1, 4], 0] = float("nan")
    with pytest.raises(LookalikeError, match="2 of 6 rows"):
        s.search(torch.randn(2, 3), bad, 1)
    with pytest.raises(LookalikeError, match="positive integer"):
        s.search(torch.randn(2, 3), torch.randn(2, 3), 0)
    with pytest.raises(LookalikeError, match="Unknown distance"):
        ExactSearch("manhattan")
    with pytest.raises(LookalikeError, match="precision"):
        ExactSearch(precision="fp16")
    with pytest.raises(LookalikeError, match="query_chunk_size"):
        ExactSearch(query_chunk_size=0)
    with pytest.raises(LookalikeError, match="keys"):
        s.search(torch.randn(2, 3), torch.randn(4, 3), 1, exclude=([0, 1, 2], [0, 1, 2, 3]))


def test_reduced_precision_fp32_matmul_setting_keeps_results_exact():
    # torch.set_float32_matmul_precision("medium") lets oneDNN run fp32 matmuls in bf16: the bound widens
    gen = torch.Generator().manual_seed(8)
    q, g = torch.randn(50, 64, generator=gen), torch.randn(600, 64, generator=gen)
    expected = ExactSearch("inner_product").search(q, g, 10)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        got = ExactSearch("inner_product").search(q, g, 10)
    finally:
        torch.set_float32_matmul_precision(before)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_auto_precision_picks_bf16_only_for_large_searches_on_bf16_hardware(monkeypatch):
    from lookalike.retrieval import exact

    torch.manual_seed(0)
    q, g = torch.randn(60, 16), torch.randn(50, 16)
    reference = ExactSearch("cosine", precision="fp32").search(q, g, 5)
    for native, min_pairs, expected in ((True, 1, "bf16"), (True, 10**9, "fp32"), (False, 1, "fp32")):
        monkeypatch.setattr(exact, "native_bf16_matmul", lambda native=native: native)
        monkeypatch.setattr(exact, "AUTO_BF16_MIN_PAIRS", min_pairs)
        search = ExactSearch("cosine")
        d, i = search.search(q, g, 5)
        assert search.last_stats["precision"] == expected
        assert torch.equal(d, reference[0]) and torch.equal(i, reference[1])


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "inner_product"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_cached_gallery_gives_the_same_results_bit_for_bit(distance, precision):
    """cache_gallery keeps the gallery's norms and screening vectors between searches (an index searched one
    query at a time); the answers are those of a fresh search, and an in-place change of the gallery is seen."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(3000, 24, generator=gen)
    q = torch.randn(40, 24, generator=gen)
    plain = ExactSearch(distance, precision=precision, gallery_chunk_size=512)
    cached = ExactSearch(distance, precision=precision, gallery_chunk_size=512, cache_gallery=True)
    for rows in (slice(0, 1), slice(1, 40), slice(0, 40)):
        d0, i0 = plain.search(q[rows], g, 7)
        d1, i1 = cached.search(q[rows], g, 7)
        assert torch.equal(d0, d1) and torch.equal(i0, i1)
    g[5] = q[0] * (2.0 if distance == "inner_product" else 1.0)  # in place: the cache must not be used any more
    d0, i0 = plain.search(q[:1], g, 3)
    d1, i1 = cached.search(q[:1], g, 3)
    assert torch.equal(d0, d1) and torch.equal(i0, i1) and int(i1[0, 0]) == 5


@pytest.mark.parametrize("distance", ["cosine", "inner_product", "euclidean"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gallery_rows_equal_a_copied_gallery_with_ties(distance, precision):
    # rows of a table searched in place (scattered rows, a contiguous run, a bool mask) give exactly what the
    # copied rows give, ties (duplicated rows) and exclusions included; the scattered case reads a RowSubset
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(60, 12, generator=gen)
    x = torch.cat([base, base[:40], base[:20]])  # every row of base[:20] three times: exact ties
    q = x[torch.randperm(len(x), generator=gen)[:50]]
    scattered = torch.randperm(len(x), generator=gen)[:90].sort().values
    for rows in (scattered, torch.arange(30, 110), torch.arange(len(x)) % 3 != 0):
        g = x[rows]
        keys = (torch.arange(len(q)) % 7, torch.arange(len(g)) % 5)
        s = ExactSearch(distance, query_chunk_size=16, gallery_chunk_size=32, precision=precision)
        d_rows, i_rows = s.search(q, x, 9, exclude=keys, gallery_rows=rows)
        d_copy, i_copy = s.search(q, g, 9, exclude=keys)
        assert torch.equal(i_rows, i_copy) and torch.equal(d_rows, d_copy)
        # reference: every pair's float64 distance (per pair, so duplicated rows tie exactly), sorted by
        # (distance, index)
        qq, gg = torch.meshgrid(torch.arange(len(q)), torch.arange(len(g)), indexing="ij")
        D = pair_distances(q, g, qq.reshape(-1), gg.reshape(-1), distance).view(len(q), len(g)).double()
        D = D.masked_fill(keys[0][:, None] == keys[1][None, :], INF)
        order = torch.sort(D, dim=1, stable=True).indices[:, :9]
        assert torch.equal(i_rows, order) and torch.equal(d_rows.double(), D.gather(1, order))


def test_gallery_rows_are_checked():
    x = torch.randn(10, 4)
    with pytest.raises(LookalikeError, match="gallery_rows"):
        ExactSearch().search(x, x, 2, gallery_rows=torch.tensor([0, 10]))
    with pytest.raises(LookalikeError, match="bool mask"):
        ExactSearch().search(x, x, 2, gallery_rows=torch.ones(9, dtype=torch.bool))


def test_bf16_euclidean_bound_covers_observed_error_and_is_as_tight_as_cosine():
    # the screening score 2 s - |g|^2 computed as _screen does (bf16 product, fp32 addition) stays within the
    # bound for every pair, including wide norm ranges; for unit vectors the bound is about twice cosine's (the
    # squared distance is 2 - 2 cos), not the global worst case of the largest product
    gen = torch.Generator().manual_seed(11)
    d = 384
    for scale in (torch.ones(600), torch.logspace(-2, 2, 600)):
        x = F.normalize(torch.randn(600, d, generator=gen), dim=1) * scale[torch.randperm(600, generator=gen), None]
        q, g = x[:100], x[100:]
        prep = ScreeningBounds(q, g, "euclidean", "bf16")
        T = torch.mm(q.bfloat16(), g.bfloat16().T)
        S = torch.add(prep.neg_gsq, T, alpha=2)
        ideal = 2 * (q.double() @ g.double().T) - g.double().square().sum(1)
        lower = prep.lower_bound(torch.arange(len(q)), S, "bf16")  # of the squared distance
        true_key = q.double().square().sum(1)[:, None] - ideal
        assert bool((true_key >= lower).all())
        assert float(((S.double() - ideal).abs() / (prep.q_norm[:, None].square() - S.double() - lower)).max()) > 0.02
    unit = F.normalize(torch.randn(600, d, generator=gen), dim=1)
    e_prep = ScreeningBounds(unit[:100], unit[100:], "euclidean", "bf16")
    c_prep = ScreeningBounds(unit[:100], unit[100:], "cosine", "bf16")
    s = torch.full((100,), 0.3)  # a near neighbour's cosine in high dimension
    qpos = torch.arange(100)
    e_margin = e_prep.q_norm.square() - (2 * s - 1).double() - e_prep.lower_bound(qpos, 2 * s - 1, "bf16")
    c_margin = 1 - s.double() - c_prep.lower_bound(qpos, s, "bf16")
    assert bool((e_margin <= 2.2 * c_margin).all()), (e_margin.max(), c_margin.max())


def test_a_new_gallery_at_a_freed_gallerys_address_is_not_taken_for_it():
    """The cache key of a freed tensor never matches a new tensor that reuses its memory and id."""
    import copy
    import pickle

    from lookalike.retrieval.base import gallery_key

    base = torch.randn(64, 8)
    first = base[torch.arange(32)]
    key = gallery_key(first)
    assert key == gallery_key(first)
    del first
    reused = [base[torch.arange(32, 64)] for _ in range(4)]  # the allocator hands the freed block out again
    assert all(gallery_key(t) != key for t in reused)
    assert copy.deepcopy({"k": key})["k"] is None and pickle.loads(pickle.dumps(key)) is None


def test_a_backend_reused_on_a_new_gallery_of_the_same_shape_searches_the_new_one():
    search = ExactSearch(distance="cosine", cache_gallery=True)
    q = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    for seed in range(4):
        g = torch.nn.functional.normalize(torch.randn(40, 8, generator=torch.Generator().manual_seed(seed)), dim=1)
        got = search.search(q, g, k=3)[1]
        expected = (q @ g.T).topk(3, dim=1).indices
        assert torch.equal(got, expected)
        del g


def test_a_row_subset_search_keeps_the_whole_gallerys_cache_and_builds_none():
    search = ExactSearch(distance="cosine", cache_gallery=True)
    q, g = torch.randn(4, 8), torch.randn(30, 8)
    whole = search.search(q, g, k=3)
    cache = search._gallery_cache
    rows = torch.arange(1, 30, 3)  # not one run of rows: searched as a RowSubset
    subset = search.search(q, g, k=3, gallery_rows=rows)
    assert torch.equal(subset[1], search.search(q, g[rows].clone(), k=3)[1])  # same answer as the copied rows
    search.search(q, g, k=3, gallery_rows=rows)
    assert search._gallery_cache is not cache  # the copied-rows search above replaced it ...
    search.search(q, g, k=3)
    cache = search._gallery_cache
    search.search(q, g, k=3, gallery_rows=rows)
    assert search._gallery_cache is cache and torch.equal(search.search(q, g, k=3)[1], whole[1])  # ... a subset does not
