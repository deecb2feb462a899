"""The shipped text dataset (lookalike/assets/emoji_texts): valid, a real retrieval problem (disjoint labels,
no trivial duplicates, several descriptions per emoji), the counts its README states, and byte-for-byte what
tools/build_emoji_texts.py builds from the emoji package it names."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lookalike.data import example_texts_root
from lookalike.data.validation import check_dataset

ROOT = Path(__file__).resolve().parents[2]
ASSET = example_texts_root()


def test_the_shipped_text_dataset_is_valid_with_the_stated_counts():
    summary = check_dataset(ASSET)
    assert (summary.n_items, summary.n_labels) == (14_968, 1_864)
    assert summary.items_per_split == {"train": 11_033, "validation": 3_935}
    assert summary.labels_per_split == {"train": 1_375, "validation": 489}
    readme = (ASSET / "README.md").read_text()
    for figure in ("14,968", "1,864", "11,033", "3,935", "1,375", "489"):
        assert figure in readme
    assert (ASSET / "LICENSE-emoji-package.txt").is_file()


def test_it_is_a_real_retrieval_problem():
    table = pd.read_csv(ASSET / "df.csv", keep_default_na=False)
    train = set(table.loc[table["split"] == "train", "label"])
    val = set(table.loc[table["split"] == "validation", "label"])
    assert not train & val  # validation emoji are never trained on
    assert table.groupby("label").size().min() >= 3
    key = table["text"].str.casefold().str.replace(r"[\W_]+", "", regex=True)
    assert not key.duplicated().any()  # no text twice, within an emoji or across emoji
    assert table["source"].nunique() == 9  # en, alias and 7 languages


@pytest.mark.skipif(importlib.util.find_spec("emoji") is None, reason="the emoji package is not installed "
                    '(pip install "emoji==2.16.0"; the dev extra has it)')
def test_the_builder_script_rebuilds_the_shipped_csv(tmp_path):
    import emoji

    if emoji.__version__ != "2.16.0":
        pytest.skip(f"the shipped CSV was built from emoji 2.16.0, this is {emoji.__version__}")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "build_emoji_texts.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, check=True)
    assert "rows: 14968" in done.stdout
    assert (tmp_path / "df.csv").read_bytes() == (ASSET / "df.csv").read_bytes()
