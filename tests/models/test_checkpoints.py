"""Checkpoints load safely (never running code from the file) and mismatches name their keys."""

from __future__ import annotations

import hashlib
import os
import pickle

import pytest
import torch

from lookalike.errors import CheckpointError, LookalikeError
from lookalike.models import SmallCNNExtractor, load_into, load_weights, save_weights
from lookalike.models import zoo


def small(seed: int = 0, **kwargs) -> SmallCNNExtractor:
    torch.manual_seed(seed)
    return SmallCNNExtractor(channels=(4, 8), embedding_dim=6, **kwargs)


@pytest.mark.parametrize("name", ["w.pt", "w.safetensors"])
def test_round_trip(tmp_path, name):
    source, target = small(0), small(1)
    save_weights(source, tmp_path / name)
    load_into(target, tmp_path / name)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(source.eval()(x), target.eval()(x))
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_lightning_style_checkpoint_with_prefix(tmp_path):
    source = small(0)
    ckpt = {"epoch": 3, "state_dict": {f"extractor.{k}": v for k, v in source.state_dict().items()}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    state = load_weights(tmp_path / "last.ckpt", prefix="extractor.")
    assert set(state) == set(source.state_dict())
    target = small(1)
    load_into(target, tmp_path / "last.ckpt")  # the common prefix is found without being named
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, b"PK\x03\x04 truncated zip"])
def test_corrupt_files(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_weights(path)


def test_truncated_checkpoint(tmp_path):
    save_weights(small(), tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "w.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_weights(tmp_path / "w.pt")


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.zeros(1), "payload": _Exploit(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="run code"):
        load_weights(tmp_path / "evil.pt")
    assert not marker.exists()


def test_plain_pickle_is_not_a_state_dict(tmp_path):
    with open(tmp_path / "list.pt", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(CheckpointError):
        load_weights(tmp_path / "list.pt")


def test_mismatch_names_missing_unexpected_and_shapes(tmp_path):
    state = small().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["head.bias"]
    state["head.weight"] = torch.zeros(7, 8)
    with pytest.raises(CheckpointError) as info:
        load_into(small(), state)
    message = str(info.value)
    assert "missing key(s): head.bias" in message and "unexpected key(s): extra.weight" in message
    assert "head.weight (7, 8) vs model (6, 8)" in message


def test_extractor_loads_weights_argument(tmp_path):
    save_weights(small(0), tmp_path / "w.safetensors")
    loaded = small(1, weights=tmp_path / "w.safetensors")
    assert torch.equal(loaded.head.weight, small(0).head.weight)


def test_zoo_download_hash_and_cache(tmp_path, monkeypatch):
    save_weights(small(0), tmp_path / "published.pt")
    digest = hashlib.sha256((tmp_path / "published.pt").read_bytes()).hexdigest()
    url = (tmp_path / "published.pt").as_uri()
    cache = tmp_path / "cache"
    monkeypatch.setenv("LOOKALIKE_CACHE", str(cache))
    monkeypatch.setitem(zoo.ZOO, "tiny", zoo.ZooEntry("SmallCNNExtractor", url, digest,
                                                      {"channels": (4, 8), "embedding_dim": 6}))
    model = zoo.from_zoo("tiny")
    assert torch.equal(model.head.weight, small(0).head.weight)
    cached = list(cache.iterdir())
    assert len(cached) == 1
    (tmp_path / "published.pt").unlink()  # a second use must not download again
    assert zoo.zoo_checkpoint_path("tiny") == cached[0]


def test_zoo_bad_hash_leaves_nothing(tmp_path):
    (tmp_path / "f.pt").write_bytes(b"123")
    with pytest.raises(CheckpointError, match="expected"):
        zoo.download_checkpoint((tmp_path / "f.pt").as_uri(), "0" * 64, cache=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_zoo_unknown_name():
    with pytest.raises(LookalikeError, match="unknown zoo model"):
        zoo.from_zoo("nope")
