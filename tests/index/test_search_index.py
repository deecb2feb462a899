"""SearchIndex: results against a brute force (before and after changes), errors, concurrent searches during
changes, atomic saves (a write that fails midway, a process killed with SIGKILL) and journal replay."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lookalike.index import (DuplicateItemError, IndexFormatError, NoEmbedderError, SearchIndex, SearchIndexError,
                             UnknownItemError)
from lookalike.store import EmbeddingsStore

ROOT = Path(__file__).resolve().parents[2]


def make_store(n=300, dim=12, seed=0) -> EmbeddingsStore:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    manifest = pd.DataFrame({"id": [f"i{k}" for k in range(n)], "path": [f"/img/{k}.png" for k in range(n)],
                             "label": np.arange(n) % 7, "note": [None if k % 3 else f"n{k}" for k in range(n)]})
    return EmbeddingsStore(x, manifest)


def brute_force(ids: list[str], x: np.ndarray, q: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
    """Cosine distances of every pair in float64, sorted by (distance, position)."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    d = 1.0 - qn.astype(np.float64) @ xn.astype(np.float64).T
    order = np.lexsort((np.broadcast_to(np.arange(len(ids)), d.shape), d), axis=1)[:, :k]
    return [[ids[j] for j in row] for row in order], np.take_along_axis(d, order, 1)


def check_against_brute_force(index: SearchIndex, q: np.ndarray, k: int, exact: bool = True) -> None:
    want_ids, want_d = brute_force(index.ids, index.embeddings, q, k)
    hits = index.search(q, top_k=k)
    got_d = np.array([[h.distance for h in row] for row in hits])
    np.testing.assert_allclose(got_d, want_d, atol=1e-5)
    if exact:
        assert [[h.id for h in row] for row in hits] == want_ids


@pytest.mark.parametrize("backend", ["exact", "faiss_flat"])
def test_search_equals_a_brute_force_before_and_after_changes(backend, tmp_path):
    store = make_store()
    index = SearchIndex.build(store, backend=backend)
    q = np.random.default_rng(1).normal(size=(20, 12)).astype(np.float32)
    check_against_brute_force(index, q, 7)
    hit = index.search(q[:1], top_k=1)[0][0]
    assert hit.row == index.get(hit.id) and hit.path == f"/img/{hit.id[1:]}.png"
    assert set(hit.row) == {"id", "path", "label", "note"}
    index.save(tmp_path / "ix")
    rng = np.random.default_rng(2)
    new = rng.normal(size=(15, 12)).astype(np.float32)
    index.add([f"n{k}" for k in range(15)], new, [{"path": f"/new/{k}.png", "colour": "red"} for k in range(15)])
    index.remove(["i0", "i1", "i2", "n3", "n4"])
    assert len(index) == 300 + 15 - 5 and "i0" not in index and "n5" in index
    check_against_brute_force(index, q, 7)
    check_against_brute_force(index, new[:5], 3)  # added items are found (themselves first)
    assert index.get("n5") == {"id": "n5", "path": "/new/5.png", "colour": "red"}
    assert index.manifest["id"].tolist() == index.ids and index.manifest["colour"].notna().sum() == 13
    # the journal holds the changes: a fresh load sees the same index, a save folds them in
    again = SearchIndex.load(tmp_path / "ix")
    assert again.ids == index.ids and again.info["pending_changes"] == 2
    check_against_brute_force(again, q, 7)
    again.save()
    third = SearchIndex.load(tmp_path / "ix")
    assert third.ids == index.ids and third.info["pending_changes"] == 0 and third.info["generation"] == 2
    check_against_brute_force(third, q, 7)
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == ["gen-000002", "index.json"]


@pytest.mark.parametrize("backend", ["faiss_ivf", "faiss_hnsw"])
def test_approximate_backends_measure_their_recall(backend, tmp_path, capsys):
    index = SearchIndex.build(make_store(n=800), backend=backend)
    recall = index.info["recall"]
    assert recall["k"] == 10 and recall["sample"] == 800 and 0.5 < recall["recall"] <= 1.0
    assert f"{backend} recall@10 against exact search on 800 indexed items: {recall['recall']:.4f}" in \
        capsys.readouterr().out
    index.save(tmp_path / "ix")
    loaded = SearchIndex.load(tmp_path / "ix")
    assert loaded.info["recall"] == recall and (tmp_path / "ix/gen-000001/faiss.index").is_file()
    q = np.random.default_rng(3).normal(size=(5, 12)).astype(np.float32)
    assert [[h.id for h in r] for r in loaded.search(q, 5)] == [[h.id for h in r] for r in index.search(q, 5)]


def test_similar_leaves_the_item_out_and_ids_are_checked():
    store = make_store(n=50)
    index = SearchIndex.build(store)
    x = store.embeddings
    index.add(["copy"], x[7:8])  # an exact copy of i7: distance 0 to it
    similar = index.similar("i7", top_k=3)
    assert similar[0].id == "copy" and similar[0].distance < 1e-6 and "i7" not in [h.id for h in similar]
    assert len(similar) == 3
    with pytest.raises(DuplicateItemError, match="already holds 1 of these ids: 'i3'") as info:
        index.add(["i3", "fresh"], x[:2])
    assert info.value.ids == ["i3"] and "fresh" not in index
    with pytest.raises(DuplicateItemError, match="more than once: 'a'"):
        index.add(["a", "a"], x[:2])
    with pytest.raises(UnknownItemError, match="'nope'") as info:
        index.remove(["i1", "nope"])
    assert info.value.ids == ["nope"] and "i1" in index  # nothing removed
    with pytest.raises(UnknownItemError):
        index.get("nope")
    with pytest.raises(UnknownItemError):
        index.similar("nope")
    with pytest.raises(SearchIndexError, match="dimension 3 but the index holds dimension 12"):
        index.search(np.zeros((1, 3), np.float32))
    with pytest.raises(SearchIndexError, match="float array"):
        index.add(["z"], np.zeros((1, 5)))
    with pytest.raises(SearchIndexError, match="top_k must be a positive integer"):
        index.search(x[:1], top_k=0)
    with pytest.raises(NoEmbedderError, match="no embedder"):
        index.search([Image.new("RGB", (8, 8))])
    assert index.image_path("i4") == Path("/img/4.png")
    assert len(index.search(x[:1], top_k=500)[0]) == 51  # fewer items than top_k: all of them


def test_search_by_image_uses_the_embedder():
    class Embedder:  # a stand-in: the mean colour, repeated
        def embed_images(self, images):
            return np.stack([np.tile(np.asarray(im, np.float32).mean((0, 1)), 4) for im in images])

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 10, 0)]
    emb = Embedder().embed_images([Image.new("RGB", (4, 4), c) for c in colours])
    store = EmbeddingsStore(emb, pd.DataFrame({"id": ["red", "green", "blue", "red2"]}))
    index = SearchIndex.build(store, embedder=Embedder())
    hits = index.search([Image.new("RGB", (9, 9), (240, 5, 5))], top_k=2)
    assert [h.id for h in hits[0]] == ["red2", "red"]


def test_searches_during_adds_and_removes_see_whole_states():
    """A writer adds and removes pairs of exact copies of the query; every search sees both copies of one pair
    or none (never half a change), and the rest of its answer matches the fixed items."""
    store = make_store(n=2000, dim=16)
    index = SearchIndex.build(store)
    q = np.random.default_rng(5).normal(size=(1, 16)).astype(np.float32) * 3
    fixed_ids, _ = brute_force(store.ids, store.embeddings, q, 5)
    stop, errors, seen = threading.Event(), [], []

    def searcher():
        while not stop.is_set():
            try:
                hits = index.search(q, top_k=5)[0]
                markers = [h.id for h in hits if h.id.startswith("m")]
                assert len(markers) in (0, 2), markers
                if markers:
                    assert markers[0].split("_")[0] == markers[1].split("_")[0], markers
                assert [h.id for h in hits if not h.id.startswith("m")] == fixed_ids[0][:5 - len(markers)]
                seen.append(len(markers))
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)
                return

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        k, deadline = 0, time.monotonic() + 60  # at least 150 changes, and until the searchers saw 30 states
        while (k < 150 or len(seen) < 30) and time.monotonic() < deadline:
            pair = [f"m{k}_a", f"m{k}_b"]
            index.add(pair, np.repeat(q, 2, axis=0))
            index.remove(pair)
            k += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert len(seen) > 10 and len(index) == 2000


def test_a_save_that_fails_midway_leaves_the_old_index(tmp_path, monkeypatch):
    import lookalike.index.search_index as module

    index = SearchIndex.build(make_store(n=40), backend="faiss_flat")
    index.save(tmp_path / "ix")
    index.add(["new"], np.ones((1, 12), np.float32))
    before = SearchIndex.load(tmp_path / "ix").ids

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(module, "write_json_atomic", broken)  # the new generation is written, not committed
    with pytest.raises(OSError, match="disk full"):
        index.save()
    assert SearchIndex.load(tmp_path / "ix").ids == before
    monkeypatch.undo()
    from lookalike.retrieval import FaissSearch

    monkeypatch.setattr(FaissSearch, "write", broken)  # fails after the store's files, before the faiss file
    with pytest.raises(OSError):
        index.save()
    monkeypatch.undo()
    assert SearchIndex.load(tmp_path / "ix").ids == before
    index.save()  # a later save succeeds and clears what the failed ones left
    assert SearchIndex.load(tmp_path / "ix").ids == before
    assert sorted(p.name for p in (tmp_path / "ix").iterdir()) == ["gen-000004", "index.json"]


CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from lookalike.index import SearchIndex
    index = SearchIndex.load(sys.argv[1])
    rng = np.random.default_rng(int(sys.argv[2]))
    for k in range(10_000):
        item = f"r{sys.argv[2]}_{k}"
        index.add([item], rng.normal(size=(1, index.dim)).astype(np.float32), [{"path": f"/k/{k}.png"}])
        print(f"ack {item}", flush=True)
        if k % 4 == 3:
            print("saving", flush=True)
            index.save()
            print("saved", flush=True)
""")


def test_a_process_killed_with_sigkill_loses_no_acknowledged_change(tmp_path):
    """A child adds items (printing each acknowledged id) and saves every 4 adds (a save takes ~0.3 s here); it
    is killed at the start of its second save, then (a new child) right after an acknowledgement; each load must
    hold exactly the acknowledged items (plus at most the one in flight)."""
    folder = tmp_path / "ix"
    n_base = 20_000
    SearchIndex.build(make_store(n=n_base, dim=32)).save(folder)  # a save takes a noticeable moment
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    acked: set[str] = set()
    for round_, (kill_at, target) in enumerate((("saving", 2), ("ack", 7))):
        child = subprocess.Popen([sys.executable, str(script), str(folder), str(round_)], stdout=subprocess.PIPE,
                                 text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        events, last = 0, -1
        for line in child.stdout:
            if line.startswith("ack"):
                acked.add(line.split()[1])
                last += 1
            if line.startswith(kill_at):
                events += 1
                if events == target:
                    break
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        index = SearchIndex.load(folder)  # the old generation or the new one, plus the journal
        added = set(index.ids[n_base:]) | (set(index.ids) - {f"i{k}" for k in range(n_base)})
        assert acked <= added
        assert added - acked <= {f"r{round_}_{last + 1}"}, sorted(added - acked)  # at most the one in flight
        assert index.ids[:n_base] == [f"i{k}" for k in range(n_base)]
        acked |= added


def test_journal_replay_ignores_a_torn_last_record_and_reports_damage(tmp_path):
    folder = tmp_path / "ix"
    index = SearchIndex.build(make_store(n=20))
    index.save(folder)
    index.add(["a"], np.ones((1, 12), np.float32))
    index.remove(["i0"])
    journal = folder / "journal-000001.log"
    good = journal.read_bytes()
    with open(journal, "ab") as f:
        f.write(good.splitlines(keepends=True)[0][:40])  # an append cut by a crash: no newline
    loaded = SearchIndex.load(folder)
    assert "a" in loaded and "i0" not in loaded and loaded.info["pending_changes"] == 2
    loaded.add(["b"], np.ones((1, 12), np.float32))  # cuts the torn tail, then appends
    assert SearchIndex.load(folder).ids[-2:] == ["a", "b"]
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + b"0000dead {\"op\": \"add\"}\n" + lines[2])
    with pytest.raises(IndexFormatError, match="line 2 is damaged and is followed by other records"):
        SearchIndex.load(folder)


def test_damaged_or_foreign_folders_are_reported(tmp_path):
    with pytest.raises(IndexFormatError, match="has no index.json"):
        SearchIndex.load(tmp_path)
    make_store(n=5).save(tmp_path / "store")
    with pytest.raises(IndexFormatError, match="looks like an embeddings store"):
        SearchIndex.load(tmp_path / "store")
    folder = tmp_path / "ix"
    SearchIndex.build(make_store(n=50), backend="faiss_hnsw").save(folder)
    np.save(folder / "gen-000001/embeddings.npy", np.zeros((50, 12), np.float32))
    with pytest.raises(IndexFormatError, match="saved data is damaged"):
        SearchIndex.load(folder)
    SearchIndex.build(make_store(n=50), backend="faiss_hnsw").save(folder)
    (folder / "gen-000002/faiss.index").write_bytes(b"junk")
    with pytest.raises(IndexFormatError, match="does not match the SHA-256"):
        SearchIndex.load(folder)
    info = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps({**info, "format": "other"}))
    with pytest.raises(IndexFormatError, match="not a lookalike index"):
        SearchIndex.load(folder)
