"""Atomic writes: all or nothing, no temporary files left, the usual permissions."""

from __future__ import annotations

import json
import os

import pytest

from lookalike.io import atomic_path, write_json_atomic


def test_json_is_written_whole_with_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "out" / "metrics.json", {"cmc": {1: 0.5}})
    finally:
        os.umask(old)
    assert json.loads(path.read_text()) == {"cmc": {"1": 0.5}}
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "embeddings.npy"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed while writing")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["embeddings.npy"]
