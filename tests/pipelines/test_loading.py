"""The pipelines' dataset_root check: a file where a folder is expected is named as such."""

from __future__ import annotations

import pytest

from lookalike.errors import ConfigError
from lookalike.pipelines.loading import dataset_root
from tests.conftest import good_rows, write_dataset


def test_dataset_root_pointing_at_a_file(tmp_path):
    root = write_dataset(tmp_path / "ds", good_rows())
    with pytest.raises(ConfigError, match=r"is a file, but a folder is expected.*probably '.*ds'"):
        dataset_root({"dataset_root": str(root / "df.csv"), "csv": "df.csv"})
    with pytest.raises(ConfigError, match="does not exist"):
        dataset_root({"dataset_root": str(tmp_path / "nowhere"), "csv": "df.csv"})
    assert dataset_root({"dataset_root": str(root), "csv": "df.csv"}) == root
