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
    return SmallCNNExtractor(**{"channels": (4, 8), "embedding_dim": 6, **kwargs})


@pytest.mark.parametrize("name", ["w.pt", "w.safetensors"])
def test_round_trip(tmp_path, name):
    source, target = small(0), small(1)
    save_weights(source, tmp_path / name)
    load_into(target, tmp_path / name)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(source.eval()(x), target.eval()(x))
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def same_weights(a, b) -> bool:
    return a.state_dict().keys() == b.state_dict().keys() and all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_lightning_style_checkpoint_with_prefix(tmp_path):
    source = small(0)
    ckpt = {"epoch": 3, "optimizer_states": [], "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    state = load_weights(tmp_path / "last.ckpt", prefix="model.")
    assert set(state) == set(source.state_dict())
    assert set(load_weights(tmp_path / "last.ckpt")) == set(source.state_dict())  # the shared prefix is found
    target = small(1)
    load_into(target, tmp_path / "last.ckpt")
    assert same_weights(source, target)
    with pytest.raises(CheckpointError, match=r"prefix 'extractor\.'.*start with model\."):
        load_weights(tmp_path / "last.ckpt", prefix="extractor.")


def test_run_checkpoint_with_extractor_and_criterion(tmp_path):
    """A training run's .ckpt holds the extractor under 'extractor.' beside the criterion's head."""
    source = small(0)
    state = {f"extractor.{k}": v for k, v in source.state_dict().items()}
    state["criterion.weight"] = torch.randn(5, 6)
    torch.save({"epoch": 1, "state_dict": state}, tmp_path / "best.ckpt")
    assert set(load_weights(tmp_path / "best.ckpt")) == set(state)  # no single shared prefix: nothing stripped
    assert same_weights(source, small(1, weights=tmp_path / "best.ckpt"))
    target = small(1)
    load_into(target, {k: v for k, v in state.items()})
    assert same_weights(source, target)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "extractor._orig_mod."])
def test_wrapper_prefixes(tmp_path, prefix):
    source = small(0)
    save_weights({prefix + k: v for k, v in source.state_dict().items()}, tmp_path / "w.safetensors")
    if prefix in ("module.", "_orig_mod."):
        assert set(load_weights(tmp_path / "w.safetensors")) == set(source.state_dict())
    target = small(1)
    load_into(target, tmp_path / "w.safetensors")
    assert same_weights(source, target)


@pytest.mark.parametrize("name", ["bad.pt", "bad.safetensors"])
@pytest.mark.parametrize("content", [b"", b"\x00" * 100, b"PK\x03\x04 truncated zip", bytes(range(256)) * 4])
def test_corrupt_files(tmp_path, content, name):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"{name} cannot be read .*truncated, corrupt"):
        load_weights(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt cannot be loaded: no such file"):
        load_weights(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="a folder"):
        load_into(small(), tmp_path)


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
    with pytest.raises(CheckpointError, match=r"refused: .*run code.*os\.makedirs"):
        load_weights(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_into(small(), tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        small(weights=tmp_path / "evil.pt")
    # the same payload as a bare pickle (not a torch zip file), old and new protocols
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        with open(tmp_path / "evil.pkl", "wb") as f:
            pickle.dump({"weight": torch.zeros(1), "payload": _Exploit(str(marker))}, f, protocol=protocol)
        with pytest.raises(CheckpointError, match="refused|cannot be read"):
            load_weights(tmp_path / "evil.pkl")
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


def test_mismatch_lists_ten_keys_and_counts():
    state = {f"layer{i}.weight": torch.zeros(1) for i in range(25)}
    with pytest.raises(CheckpointError) as info:
        load_into(small(), state)
    message = str(info.value)
    assert "25 unexpected key(s): layer0.weight" in message and "layer9.weight (and 15 more)" in message
    assert "layer10.weight" not in message and "missing key(s): backbone.0.0.weight" in message


def test_non_strict_loads_what_matches():
    source, target = small(0), small(1, embedding_dim=None)  # target has no projection head
    load_into(target, source.state_dict(), strict=False)
    assert torch.equal(target.backbone[0][0].weight, source.backbone[0][0].weight)


def test_safetensors_with_tied_weights_and_permissions(tmp_path):
    shared = torch.randn(3, 4)
    path = save_weights({"a": shared, "b": shared}, tmp_path / "tied.safetensors")
    loaded = load_weights(path)
    assert torch.equal(loaded["a"], shared) and torch.equal(loaded["b"], shared)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0600 of a temporary file


def test_extractor_loads_weights_argument(tmp_path):
    save_weights(small(0), tmp_path / "w.safetensors")
    loaded = small(1, weights=tmp_path / "w.safetensors")
    assert torch.equal(loaded.head.weight, small(0).head.weight)


def publish(tmp_path):
    """A checkpoint 'hosted' at a file:// URL, with its SHA-256."""
    save_weights(small(0), tmp_path / "published.pt")
    digest = hashlib.sha256((tmp_path / "published.pt").read_bytes()).hexdigest()
    return (tmp_path / "published.pt").as_uri(), digest


def test_zoo_download_hash_and_cache(tmp_path, monkeypatch):
    url, digest = publish(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setenv("LOOKALIKE_CACHE", str(cache))
    monkeypatch.setitem(zoo.ZOO, "tiny", zoo.ZooEntry(
        source=url, sha256=digest.upper(), architecture="lookalike:small_cnn", licence="test", trained_on="test",
        extractor="SmallCNNExtractor", kwargs={"channels": (4, 8), "embedding_dim": 6}))
    model = zoo.from_zoo("tiny")
    assert same_weights(model, small(0)) and model.normalise
    cached = list(cache.iterdir())
    assert [p.name for p in cached] == [f"{digest[:16]}-published.pt"]  # nothing else: no temporary file
    (tmp_path / "published.pt").unlink()  # later uses must not download again
    assert zoo.zoo_checkpoint_path("tiny") == cached[0]
    assert same_weights(small(1, weights="zoo:tiny"), small(0))
    assert not zoo.from_zoo("tiny", normalise=False).normalise
    cached[0].write_bytes(b"tampered")  # a cached file whose hash no longer matches is fetched again
    with pytest.raises(CheckpointError, match="cannot download"):
        zoo.zoo_checkpoint_path("tiny")


def test_zoo_entry_cached_under_its_hash_and_name(tmp_path, monkeypatch):
    url, digest = publish(tmp_path)
    monkeypatch.setitem(zoo.ZOO, "tiny", zoo.ZooEntry(source=url, sha256=digest, architecture="lookalike:small_cnn",
                                                      licence="test", trained_on="test"))
    path = zoo.zoo_checkpoint_path("tiny", cache_dir=tmp_path / "c")
    assert path == tmp_path / "c" / f"{digest[:16]}-published.pt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_zoo_bad_hash_leaves_nothing(tmp_path):
    url, digest = publish(tmp_path)
    with pytest.raises(CheckpointError, match=f"has SHA-256 {digest}, expected 0000"):
        zoo.download_checkpoint(url, "0" * 64, cache_dir=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_zoo_bad_address_and_hash_format(tmp_path):
    with pytest.raises(CheckpointError, match="cannot download"):
        zoo.download_checkpoint((tmp_path / "absent.pt").as_uri(), "0" * 64, cache_dir=tmp_path / "cache")
    with pytest.raises(CheckpointError, match="cannot download"):
        zoo.download_checkpoint("not a url", "0" * 64, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(CheckpointError, match="not a SHA-256"):
        zoo.download_checkpoint("file:///x.pt", "abc", cache_dir=tmp_path / "cache")


def test_zoo_unknown_name():
    with pytest.raises(LookalikeError, match="unknown zoo model"):
        zoo.from_zoo("nope")
