"""The embeddings store: a round trip, and every kind of damage reported instead of mispaired rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lookalike.store import EmbeddingsStore, StoreError


def make(n=5, dim=3):
    rng = np.random.default_rng(0)
    manifest = pd.DataFrame({"id": [f"i{k}" for k in range(n)], "path": [f"/x/{k}.png" for k in range(n)],
                             "label": range(n)})
    return EmbeddingsStore(rng.normal(size=(n, dim)).astype(np.float64), manifest, {"distance": "cosine"})


def test_round_trip_keeps_rows_ids_columns_and_header(tmp_path):
    store = make()
    store.save(tmp_path / "s")
    back = EmbeddingsStore.load(tmp_path / "s")
    assert back.embeddings.dtype == np.float32 and back.embeddings.shape == (5, 3)
    np.testing.assert_array_equal(back.embeddings, store.embeddings)
    assert back.ids == ["i0", "i1", "i2", "i3", "i4"] and back.manifest["label"].tolist() == [0, 1, 2, 3, 4]
    assert back.header["distance"] == "cosine" and back.header["count"] == 5 and back.header["dim"] == 3
    mapped = EmbeddingsStore.load(tmp_path / "s", mmap=True)
    assert isinstance(mapped.embeddings, np.memmap)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["embeddings.json", "embeddings.npy",
                                                                  "manifest.csv"]


def test_numeric_looking_ids_stay_strings(tmp_path):
    store = EmbeddingsStore(np.zeros((2, 2)), pd.DataFrame({"id": ["007", "1e3"]}))
    store.save(tmp_path)
    assert EmbeddingsStore.load(tmp_path).ids == ["007", "1e3"]


def test_duplicate_ids_are_refused_with_their_rows():
    with pytest.raises(StoreError, match=r"'a' \(rows 0, 2\)"):
        EmbeddingsStore(np.zeros((3, 2)), pd.DataFrame({"id": ["a", "b", "a"]}))


def test_a_half_replaced_store_is_reported(tmp_path):
    make().save(tmp_path)
    np.save(tmp_path / "embeddings.npy", np.ones((5, 3), np.float32))  # new embeddings, old header and manifest
    with pytest.raises(StoreError, match="embeddings.npy does not match the header"):
        EmbeddingsStore.load(tmp_path)
    make(n=4).manifest.to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(StoreError, match="the header says 5 x 3"):
        EmbeddingsStore.load(tmp_path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(StoreError, match="no such folder"):
        EmbeddingsStore.load(tmp_path / "none")
    make().save(tmp_path)
    (tmp_path / "embeddings.json").write_text("{")
    with pytest.raises(StoreError, match="not valid JSON"):
        EmbeddingsStore.load(tmp_path)
    (tmp_path / "embeddings.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(StoreError, match="not a lookalike store header"):
        EmbeddingsStore.load(tmp_path)
    (tmp_path / "embeddings.npy").write_bytes(b"garbage")
    (tmp_path / "embeddings.json").unlink()
    with pytest.raises(StoreError, match="not a readable .npy"):
        EmbeddingsStore.load(tmp_path)
    (tmp_path / "manifest.csv").unlink()
    with pytest.raises(StoreError, match="manifest.csv missing"):
        EmbeddingsStore.load(tmp_path)


def test_item_texts_and_paths_come_back_as_written(tmp_path):
    # the manifest of a text index holds the items themselves: "007" must not come back as the number 7
    manifest = pd.DataFrame({"id": ["a", "b"], "text": ["007", "1e3"], "path": ["001", "2"], "score": [1, 2]})
    EmbeddingsStore(np.zeros((2, 4), np.float32), manifest, {}).save(tmp_path / "s")
    loaded = EmbeddingsStore.load(tmp_path / "s").manifest
    assert loaded["text"].tolist() == ["007", "1e3"] and loaded["path"].tolist() == ["001", "2"]
    assert loaded["score"].tolist() == [1, 2]  # other columns keep their inferred types
