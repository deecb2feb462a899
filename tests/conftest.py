"""Shared fixtures: tiny datasets with generated images, written into a temporary folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image


def write_dataset(root: Path, rows: list[dict], size: tuple[int, int] = (16, 12), csv: str = "df.csv") -> Path:
    """Write `rows` as root/csv and a distinct solid-colour PNG for every distinct path (absent ones skipped)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for row in rows:
        path = row.get("path")
        if not isinstance(path, str) or path.startswith("missing") or (root / path).exists():
            continue
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / path)
    pd.DataFrame(rows).to_csv(root / csv, index=False)
    return root


def good_rows(n_train_labels: int = 3, n_val_labels: int = 3, per_label: int = 2) -> list[dict]:
    """A valid dataset: train labels with empty query/gallery flags, validation items both query and gallery."""
    rows = []
    for label in range(n_train_labels + n_val_labels):
        split = "train" if label < n_train_labels else "validation"
        for i in range(per_label):
            flag = "True" if split == "validation" else ""
            rows.append({"label": label, "path": f"img/{label}_{i}.png", "split": split, "is_query": flag,
                         "is_gallery": flag, "category": "even" if label % 2 == 0 else "odd"})
    return rows


@pytest.fixture
def dataset_root(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "ds", good_rows())
