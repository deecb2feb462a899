"""FNMR@FMR streamed in blocks: a hand-worked case, numpy's quantile on the full pair matrix, every pass path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lookalike.errors import LookalikeError
from lookalike.metrics import fmr_thresholds, fnmr, fnmr_at_fmr
from lookalike.retrieval import pair_distances
from lookalike.retrieval.pairs import PairStream


def test_hand_worked():
    # four 1-D points, every item a query and a gallery item, euclidean distance:
    #   x = [0, 1, 3, 6], labels [0, 0, 1, 1]
    # ordered pairs without self-pairs: positives |0-1| = 1 (twice), |3-6| = 3 (twice) -> [1, 1, 3, 3]
    # negatives |0-3| = 3, |0-6| = 6, |1-3| = 2, |1-6| = 5, each twice -> sorted [2, 2, 3, 3, 5, 5, 6, 6] (n = 8)
    # FMR 0.25: position 0.25 * (8 - 1) = 1.75 -> threshold 2 + 0.75 * (3 - 2) = 2.75 -> positives above: 3, 3 -> 2/4
    # FMR 0.5:  position 3.5 -> threshold 3 + 0.5 * (5 - 3) = 4 -> no positive above -> 0
    # FMR 0.1:  position 0.7 -> threshold 2 + 0.7 * (2 - 2) = 2 -> 3, 3 above -> 0.5
    # FMR 1.0:  position 7 -> threshold 6 -> 0
    emb = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    flags = torch.ones(4, dtype=torch.bool)
    out = fnmr_at_fmr(emb, [0, 0, 1, 1], flags, flags, (0.1, 0.25, 0.5, 1.0), distance="euclidean")
    assert out == pytest.approx({0.1: 0.5, 0.25: 0.5, 0.5: 0.0, 1.0: 0.0})
    # the same set with items 0 and 1 in one sequence: the positive pairs (0, 1) and (1, 0) are gone, so
    # positives [3, 3]; negatives unchanged -> FMR 0.25: threshold 2.75 -> 2/2 above = 1.0
    out = fnmr_at_fmr(emb, [0, 0, 1, 1], flags, flags, (0.25,), distance="euclidean", sequences=["s", "s", None, None])
    assert out == pytest.approx({0.25: 1.0})


def reference(emb, labels, is_query, is_gallery, fmr_vals, distance="cosine", sequences=None):
    e = emb.double()
    q, g = np.flatnonzero(is_query), np.flatnonzero(is_gallery)
    if distance == "cosine":
        e = torch.nn.functional.normalize(e, dim=1)
        dist = (1 - e[q] @ e[g].T).clamp(min=0).numpy()
    elif distance == "euclidean":
        dist = torch.cdist(e[q], e[g]).numpy()
    else:
        dist = -(e[q] @ e[g].T).numpy()
    same = labels[q][:, None] == labels[g][None, :]
    pair = q[:, None] != g[None, :]
    if sequences is not None:
        pair &= ~((sequences[q][:, None] == sequences[g][None, :]) & (sequences[q][:, None] >= 0))
    pos, neg = dist[same & pair], dist[~same & pair]
    return {f: float((pos > np.quantile(neg, f)).mean()) for f in fmr_vals}


def random_set(seed=0, n=300):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 30, n)
    emb = torch.from_numpy(rng.normal(size=(n, 5)) + np.eye(30)[labels][:, :5] * 1.5).float()
    return emb, labels, rng.random(n) < 0.6, rng.random(n) < 0.9, rng.integers(-1, 40, n)


FMRS = (0.001, 0.01, 0.1, 0.5, 1.0)


def canonical_reference(emb, labels, is_query, is_gallery, fmr_vals, distance="cosine", sequences=None):
    """The full Nq x Ng matrix of the retrieval layer's canonical distances, then numpy's quantile."""
    q, g = np.flatnonzero(is_query), np.flatnonzero(is_gallery)
    qq, gg = np.meshgrid(np.arange(len(q)), np.arange(len(g)), indexing="ij")
    dist = pair_distances(emb[q], emb[g], torch.from_numpy(qq.ravel()), torch.from_numpy(gg.ravel()), distance)
    dist = dist.double().numpy().reshape(len(q), len(g))
    same = labels[q][:, None] == labels[g][None, :]
    pair = q[:, None] != g[None, :]
    if sequences is not None:
        pair &= ~((sequences[q][:, None] == sequences[g][None, :]) & (sequences[q][:, None] >= 0))
    pos, neg = dist[same & pair], dist[~same & pair]
    return {f: float((pos > np.quantile(neg, f)).mean()) for f in fmr_vals}


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "inner_product"])
def test_equals_canonical_full_matrix_exactly(distance):
    emb, labels, is_query, is_gallery, sequences = random_set(seed=5)
    as_ids = [None if s < 0 else f"seq{s}" for s in sequences]
    ours = fnmr_at_fmr(emb, labels, is_query, is_gallery, FMRS, sequences=as_ids, distance=distance,
                       query_chunk_size=64, gallery_chunk_size=100)
    assert ours == canonical_reference(emb, labels, is_query, is_gallery, FMRS, distance, sequences)


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "inner_product"])
@pytest.mark.parametrize("chunks", [(7, 11), (1000, 1000)])
def test_equals_quantile_reference(distance, chunks):
    emb, labels, is_query, is_gallery, _ = random_set()
    ours = fnmr_at_fmr(emb, torch.from_numpy(labels), torch.from_numpy(is_query), torch.from_numpy(is_gallery),
                       FMRS, distance=distance, query_chunk_size=chunks[0], gallery_chunk_size=chunks[1])
    expected = reference(emb, labels, is_query, is_gallery, FMRS, distance)
    for f in FMRS:
        # float32 blocks vs a float64 reference: a positive within ~1e-7 of the threshold may flip (1 of ~1600)
        assert ours[f] == pytest.approx(expected[f], abs=2e-3), f


def test_sequences_match_reference():
    emb, labels, is_query, is_gallery, sequences = random_set(seed=3)
    as_ids = [None if s < 0 else f"seq{s}" for s in sequences]
    ours = fnmr_at_fmr(emb, labels, is_query, is_gallery, FMRS, sequences=as_ids, query_chunk_size=50)
    expected = reference(emb, labels, is_query, is_gallery, FMRS, sequences=sequences)
    assert ours == pytest.approx(expected, abs=2e-3)


def test_chunked_equals_one_piece():
    emb, labels, is_query, is_gallery, _ = random_set(seed=1)
    one = fnmr_at_fmr(emb, labels, is_query, is_gallery, FMRS, query_chunk_size=10_000, gallery_chunk_size=10_000)
    chunked = fnmr_at_fmr(emb, labels, is_query, is_gallery, FMRS, query_chunk_size=13, gallery_chunk_size=29)
    assert chunked == one  # canonical distances: bit-for-bit the same whatever the blocks


def test_full_bins_are_split_again(monkeypatch):
    """Tiny histograms and a tiny keep limit force the extra histogram passes; the answer must not change."""
    emb, labels, is_query, is_gallery, _ = random_set(seed=2, n=120)
    expected = fnmr_at_fmr(emb, labels, is_query, is_gallery, FMRS)
    monkeypatch.setattr(fnmr, "_BINS", 4)
    monkeypatch.setattr(fnmr, "_MAX_KEPT", 3)
    calls = []
    original = PairStream.blocks
    monkeypatch.setattr(PairStream, "blocks", lambda self: calls.append(1) or original(self))
    assert fnmr_at_fmr(emb, labels, is_query, is_gallery, FMRS) == expected
    assert len(calls) > 3  # more than pass 1 + pass 2


def test_ties_everywhere():
    # all negatives at the same distance (1 for orthogonal one-hot vectors): the bins never separate them
    emb = torch.eye(6).repeat_interleave(2, dim=0)  # items 2i, 2i+1 identical -> positive distance 0
    labels = torch.arange(6).repeat_interleave(2)
    flags = torch.ones(12, dtype=torch.bool)
    assert fnmr_at_fmr(emb, labels, flags, flags, (0.01, 1.0)) == {0.01: 0.0, 1.0: 0.0}
    # labels that disagree with the geometry: the 12 positives at distance 1; of the 120 negatives the 12 pairs
    # of identical vectors are at 0, the other 108 at 1. FMR 0.05: position 0.05 * 119 = 5.95 -> threshold 0 ->
    # every positive above -> 1.0; FMR 0.5: position 59.5 -> threshold 1 -> no positive above -> 0.0
    shifted = torch.tensor([0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 0])
    assert fnmr_at_fmr(emb, shifted, flags, flags, (0.05, 0.5)) == {0.05: 1.0, 0.5: 0.0}


def test_undefined_without_negatives_or_positives():
    emb = torch.randn(4, 3)
    flags = torch.ones(4, dtype=torch.bool)
    assert fnmr_at_fmr(emb, torch.zeros(4, dtype=torch.long), flags, flags, (0.1,)) == {0.1: None}
    assert fnmr_at_fmr(emb, torch.arange(4), flags, flags, (0.1,)) == {0.1: None}
    assert fnmr_at_fmr(emb, torch.arange(4), flags, flags, ()) == {}


def test_bad_input():
    flags = torch.ones(4, dtype=torch.bool)
    with pytest.raises(LookalikeError, match="fractions"):
        fnmr_at_fmr(torch.randn(4, 3), torch.arange(4), flags, flags, (10,))
    with pytest.raises(LookalikeError, match="one of each per item"):
        fnmr_at_fmr(torch.randn(4, 3), torch.arange(3), flags, flags, (0.1,))
    with pytest.raises(LookalikeError, match="distance"):
        fnmr_at_fmr(torch.randn(4, 3), torch.arange(4), flags, flags, (0.1,), distance="manhattan")


def near_ties(seed=0, n=240, dim=48):
    """Items 1e-6 apart around a few centres, in large norms: far below fp32 matmul resolution."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, dim)) * 30
    emb = centres[rng.integers(0, 4, n)] + 1e-6 * rng.normal(size=(n, dim))
    labels = rng.integers(0, 40, n)
    return torch.from_numpy(emb).float(), labels, rng.random(n) < 0.7, np.ones(n, dtype=bool)


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "inner_product"])
def test_screening_bound_holds_on_near_ties(distance):
    emb, labels, is_query, is_gallery = near_ties()
    flags = torch.ones(len(emb), dtype=torch.bool)
    pairs = PairStream(emb, torch.from_numpy(labels), flags, flags, None, distance, 1000, 1000)
    fast = pairs.fast_keys(0, len(emb), 0, len(emb)).double()
    qq, gg = torch.meshgrid(torch.arange(len(emb)), torch.arange(len(emb)), indexing="ij")
    canonical = pairs.canonical_keys(qq.reshape(-1), gg.reshape(-1)).reshape(len(emb), len(emb))
    gap = (fast - canonical).abs().max().item()
    assert 0 < gap <= pairs.err  # the fast keys do differ, and never by more than the bound


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "inner_product"])
def test_near_ties_equal_canonical_reference(monkeypatch, distance):
    """fast order != canonical order here; coarse bins force windows and nested canonical histograms."""
    emb, labels, is_query, is_gallery = near_ties(seed=1)
    expected = canonical_reference(emb, labels, is_query, is_gallery, FMRS, distance)
    assert fnmr_at_fmr(emb, labels, is_query, is_gallery, FMRS, distance=distance) == expected
    monkeypatch.setattr(fnmr, "_BINS", 8)
    monkeypatch.setattr(fnmr, "_MAX_KEPT", 5)
    assert fnmr_at_fmr(emb, labels, is_query, is_gallery, FMRS, distance=distance, query_chunk_size=50,
                       gallery_chunk_size=70) == expected


def test_thresholds_are_the_negative_quantiles():
    """fmr_thresholds (what `lookalike dedup fmr=F` uses): the canonical negatives' numpy quantile, exactly."""
    emb, labels, is_query, is_gallery, _ = random_set(seed=5)
    found = fmr_thresholds(emb, labels, is_query, is_gallery, FMRS, query_chunk_size=64, gallery_chunk_size=100)
    q, g = np.flatnonzero(is_query), np.flatnonzero(is_gallery)
    qq, gg = np.meshgrid(np.arange(len(q)), np.arange(len(g)), indexing="ij")
    dist = pair_distances(emb[q], emb[g], torch.from_numpy(qq.ravel()), torch.from_numpy(gg.ravel()), "cosine")
    dist = dist.double().numpy().reshape(len(q), len(g))
    same, pair = labels[q][:, None] == labels[g][None, :], q[:, None] != g[None, :]
    neg, pos = dist[~same & pair], dist[same & pair]
    for f in FMRS:
        assert found[f]["threshold"] == float(np.quantile(neg, f))
        assert found[f]["fnmr"] == float((pos > np.quantile(neg, f)).mean())
        assert (found[f]["n_positive"], found[f]["n_negative"]) == (len(pos), len(neg))


def tied_set(seed=0, n=400):
    """random_set with every fourth item a copy of another one (exact ties among positives and negatives)."""
    emb, labels, is_query, is_gallery, sequences = random_set(seed=seed, n=n)
    emb[::4] = emb[1::4][: len(emb[::4])]
    return emb, labels, is_query, is_gallery, sequences


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "inner_product"])
@pytest.mark.parametrize("sample_pairs", [500, 1 << 22])
def test_one_pass_equals_canonical_full_matrix(monkeypatch, distance, sample_pairs):
    # the one-pass path (sampled bands, one pass, canonical keys near each order statistic) must give exactly
    # the full canonical matrix's answer; it must not need the two-pass fallback on these data
    emb, labels, is_query, is_gallery, sequences = tied_set(seed=7)
    as_ids = [None if s < 0 else f"seq{s}" for s in sequences]
    monkeypatch.setattr(fnmr, "_ONE_PASS_MIN_PAIRS", 0)
    monkeypatch.setattr(fnmr, "_SAMPLE_PAIRS", sample_pairs)
    monkeypatch.setattr(fnmr, "_two_passes", lambda *a: pytest.fail("fell back to two passes"))
    for seq_ids, seq_codes in ((None, None), (as_ids, sequences)):
        ours = fnmr_at_fmr(emb, labels, is_query, is_gallery, FMRS, sequences=seq_ids, distance=distance,
                           query_chunk_size=64, gallery_chunk_size=96)
        assert ours == canonical_reference(emb, labels, is_query, is_gallery, FMRS, distance, seq_codes)


def test_one_pass_falls_back_when_a_band_misses(monkeypatch):
    # bands of zero width (a sample that is badly wrong) make every rank miss: the two-pass path answers
    emb, labels, is_query, is_gallery, _ = tied_set(seed=8)
    expected = canonical_reference(emb, labels, is_query, is_gallery, FMRS)
    monkeypatch.setattr(fnmr, "_ONE_PASS_MIN_PAIRS", 0)
    monkeypatch.setattr(fnmr, "_Z", 0.0)
    monkeypatch.setattr(fnmr, "_sample_bands", lambda pairs, fractions: [fnmr._Band(5.0, 5.0) for _ in fractions])
    assert fnmr_at_fmr(emb, labels, is_query, is_gallery, FMRS) == expected


@pytest.mark.parametrize("with_sequences", [False, True])
def test_negative_count_counts_the_masked_blocks(with_sequences):
    emb, labels, is_query, is_gallery, sequences = tied_set(seed=9)
    seq = torch.from_numpy(sequences) if with_sequences else None
    pairs = PairStream(emb, torch.from_numpy(labels), torch.from_numpy(is_query), torch.from_numpy(is_gallery), seq,
                       "cosine", 50, 70)
    counted = sum(int((~torch.isnan(keys)).sum()) for _, _, keys, _ in pairs.blocks())
    assert pairs.negative_count() == counted
