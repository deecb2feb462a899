"""Every shipped config builds its extractor with the network switched off (no hub downloads at run time)."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from lookalike.pipelines.builders import build_extractor
from lookalike.pipelines.config import load_config, shipped_configs


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a shipped config tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_shipped_config_builds_its_extractor_offline(name, monkeypatch, tmp_path):
    pytest.importorskip("timm")
    _no_network(monkeypatch)
    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path))  # an empty cache: nothing downloaded before helps
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg, _ = load_config(name, [], pipeline="train")
    extractor = build_extractor(cfg)
    assert extractor.feat_dim > 0
    assert list(tmp_path.iterdir()) == []
    from lookalike.pipelines.lightning_parts import named_submodules

    assert len(named_submodules(extractor, cfg["freeze_layers"])) == len(cfg["freeze_layers"])  # names that exist
    from lookalike.pipelines.builders import build_criterion

    # the criterion's arguments (e.g. a margin warm-up) pass the criterion's own checks
    criterion = build_criterion(cfg, getattr(extractor, "training_dim", extractor.feat_dim), [0, 1, 2], None)
    assert callable(criterion)
