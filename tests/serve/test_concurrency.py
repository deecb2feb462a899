"""Concurrent requests: micro-batching shares model calls, searches stay correct while items are added and
removed, and the batcher hands every caller its own result (also when a batch fails)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lookalike.serve.batching import MicroBatcher
from tests.serve.conftest import image_bytes, noise_image

QUERIES = ["images/google/1f602.png", "images/twitter/1f60d.png", "images/openmoji/1f44d.png",
           "images/fluent/2764-fe0f.png", "images/google/1f525.png", "images/twitter/1f389.png",
           "images/openmoji/1f680.png", "images/fluent/1f436.png"]


@pytest.fixture
def queries(index) -> list[str]:
    """Eight indexed ids spread over the styles (the ones of QUERIES the built-in data holds)."""
    ids = [q for q in QUERIES if q in index]
    ids += [i for i in index.ids[::97] if i not in ids]
    return ids[:8]


def count_model_calls(index, monkeypatch) -> list[int]:
    """Batch sizes of every call of the index's model from now on."""
    sizes: list[int] = []
    original = index.embedder.embed_images

    def counted(images):
        images = list(images)
        sizes.append(len(images))
        return original(images)

    monkeypatch.setattr(index.embedder, "embed_images", counted)
    return sizes


def run_together(n: int, fn) -> list:
    """``fn(i)`` in n threads released at the same moment; their results in order (exceptions re-raised)."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def worker(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def test_concurrent_searches_share_one_model_call(make_client, index, queries, monkeypatch):
    sizes = count_model_calls(index, monkeypatch)
    client = make_client(batch_wait_ms=2000, max_batch=len(queries))  # the batch closes as soon as it is full
    files = [Path(index.image_path(q)).read_bytes() for q in queries]
    started = time.perf_counter()
    responses = run_together(len(queries), lambda i: client.post("/search", files={"file": ("q.png", files[i])}))
    assert time.perf_counter() - started < 2.0  # a full batch does not wait for the deadline
    assert sizes == [len(queries)]  # eight requests, one model call
    for query, response in zip(queries, responses):  # and each request got its own answer
        first = response.json()["results"][0]
        assert first["id"] == query and first["distance"] < 1e-5
    assert client.get("/health").json()["batching"]["model_calls"] == 1


def test_without_batching_every_request_calls_the_model(make_client, index, queries, monkeypatch):
    sizes = count_model_calls(index, monkeypatch)
    client = make_client(max_batch=1)
    files = [Path(index.image_path(q)).read_bytes() for q in queries]
    responses = run_together(len(queries), lambda i: client.post("/search", files={"file": ("q.png", files[i])}))
    assert sizes == [1] * len(queries)
    assert [r.json()["results"][0]["id"] for r in responses] == queries


def test_a_lone_request_waits_at_most_the_batch_wait(make_client, index, monkeypatch):
    sizes = count_model_calls(index, monkeypatch)
    client = make_client(batch_wait_ms=300, max_batch=32)
    data = Path(index.image_path(index.ids[0])).read_bytes()
    client.post("/search", files={"file": ("q.png", data)})  # warm up
    started = time.perf_counter()
    assert client.post("/search", files={"file": ("q.png", data)}).status_code == 200
    elapsed = time.perf_counter() - started
    assert 0.3 <= elapsed < 5 and sizes == [1, 1]


def test_searches_during_adds_and_removes_stay_consistent(client, index, queries):
    """Searchers check every answer (their own item first at distance 0, rows matching ids, no repeats) while a
    writer adds 16 items and removes half of them, and removes indexed items the searchers never ask for."""
    rows = {i: index.get(i) for i in index.ids}
    files = {q: Path(index.image_path(q)).read_bytes() for q in queries}
    removable = [i for i in index.ids[5::50] if i not in queries][:6]
    stop = threading.Event()
    problems: list[str] = []
    answers = [0]

    def searcher(k: int) -> None:
        while not stop.is_set():
            query = queries[k % len(queries)]
            response = client.post("/search", files={"file": ("q.png", files[query])}, data={"top_k": "10"})
            if response.status_code != 200:
                problems.append(f"{response.status_code} {response.text}")
                continue
            results = response.json()["results"]
            answers[0] += 1
            ids = [r["id"] for r in results]
            distances = [r["distance"] for r in results]
            if ids[0] != query or distances[0] > 1e-5:
                problems.append(f"{query}: first hit {ids[0]} at {distances[0]}")
            if len(set(ids)) != len(ids) or distances != sorted(distances) or len(ids) != 10:
                problems.append(f"{query}: bad list {ids} {distances}")
            for r in results:
                if r["id"].startswith("new-"):
                    if r["style"] != "s" + r["id"][4:]:
                        problems.append(f"row of {r['id']} is {r}")
                elif r["path"] != rows[r["id"]]["path"] or r["label"] != rows[r["id"]]["label"]:
                    problems.append(f"row of {r['id']} is {r}")
            k += len(queries)

    threads = [threading.Thread(target=searcher, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        for n in range(16):
            image = image_bytes(noise_image((48, 48), seed=100 + n))
            response = client.post("/items", files={"file": ("n.png", image)},
                                   data={"id": f"new-{n}", "style": f"s{n}"})
            assert response.status_code == 201, response.text
            if n % 2:
                assert client.delete(f"/items/new-{n - 1}").status_code == 200
        for item in removable:
            assert client.delete(f"/items/{item}").status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not problems, problems[:5]
    assert answers[0] >= 8
    kept = {f"new-{n}" for n in range(1, 16, 2)}
    assert len(index) == len(rows) + len(kept) - len(removable)
    assert all(i in index for i in kept) and not any(f"new-{n}" in index for n in range(0, 16, 2))
    assert not any(i in index for i in removable)
    from lookalike.index import SearchIndex

    assert sorted(SearchIndex.load(index.folder).ids) == sorted(index.ids)  # the folder holds the same state


def test_the_batcher_isolates_a_failing_item():
    def fn(items):
        if "bad" in items:
            raise ValueError("bad item")
        return [x.upper() for x in items]

    batcher = MicroBatcher(fn, max_batch=4, max_wait_ms=500)
    try:
        results = run_together(4, lambda i: _catch(lambda: batcher.submit(["a", "b", "bad", "c"][i])))
    finally:
        batcher.close()
    assert results[0] == "A" and results[1] == "B" and results[3] == "C"
    assert results[2] == ("raised", "ValueError: bad item")
    assert batcher.batch_sizes[0] == 4 and batcher.batch_sizes[1:] == [1, 1, 1, 1]


def _catch(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        return ("raised", f"{type(exc).__name__}: {exc}")


def test_the_batcher_keeps_order_under_load():
    batcher = MicroBatcher(lambda xs: [x * 2 for x in xs], max_batch=8, max_wait_ms=2)
    try:
        results = run_together(32, lambda i: batcher.submit(i))
    finally:
        batcher.close()
    assert results == [2 * i for i in range(32)]
    assert sum(batcher.batch_sizes) == 32 and max(batcher.batch_sizes) <= 8
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(1)
