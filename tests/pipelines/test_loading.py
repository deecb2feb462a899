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


def test_holdout_labels_are_a_seeded_disjoint_share_of_the_train_labels():
    import pandas as pd

    from lookalike.pipelines.loading import holdout_labels, train_rows

    table = pd.DataFrame({"label": [i // 2 for i in range(40)] + [100, 100],
                          "split": ["train"] * 40 + ["validation"] * 2, "path": [f"{i}.png" for i in range(42)]})
    cfg = {"holdout_labels": 0.25, "seed": 3}
    held = holdout_labels(table[table.split == "train"], 0.25, 3)
    assert len(held) == 5 and set(held) <= set(range(20))  # round(0.25 * 20 labels)
    assert list(held) == list(holdout_labels(table[table.split == "train"], 0.25, 3))  # same seed, same labels
    assert list(held) != list(holdout_labels(table[table.split == "train"], 0.25, 4))
    trained, mined = train_rows(table, cfg, "x"), train_rows(table, cfg, "x", held_out=True)
    assert set(mined.label) == set(held) and not set(trained.label) & set(held)
    assert len(trained) + len(mined) == 40 and 100 not in set(trained.label) | set(mined.label)
    assert len(train_rows(table, {"holdout_labels": 0.0, "seed": 3}, "x")) == 40
    with pytest.raises(ConfigError, match="held out no train labels"):
        train_rows(table, {"holdout_labels": 0.0, "seed": 3}, "x", held_out=True)
    with pytest.raises(ConfigError, match="fewer than 2"):
        holdout_labels(table[table.split == "train"], 0.99, 3)
