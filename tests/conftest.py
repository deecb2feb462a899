"""Shared fixtures: tiny datasets with generated images, written into a temporary folder.

`write_dataset(root, rows)` writes `rows` (dicts, one per CSV row) as `root/df.csv` and a random-noise PNG for
every distinct relative path (paths starting with "missing" are left absent on purpose). `good_rows()` is a
valid dataset to break one rule at a time. Import them with `from tests.conftest import ...`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image


def write_image(path: Path, size: tuple[int, int] = (16, 12), seed: int = 0, mode: str = "RGB") -> Path:
    """A random-noise image of `size` = (width, height) at `path` (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode).save(path)
    return path


def write_dataset(root: Path, rows: list[dict], size: tuple[int, int] = (16, 12), csv: str = "df.csv") -> Path:
    """Write `rows` as root/csv and a distinct noise PNG for every distinct relative path; returns root."""
    root.mkdir(parents=True, exist_ok=True)
    for seed, row in enumerate(rows):
        path = row.get("path")
        if not isinstance(path, str) or not path or path.startswith("missing") or Path(path).is_absolute():
            continue
        if not (root / path).exists():
            write_image(root / path, size, seed=seed)
    pd.DataFrame(rows).to_csv(root / csv, index=False)
    return root


def good_rows(n_train_labels: int = 3, n_val_labels: int = 3, per_label: int = 2) -> list[dict]:
    """A valid dataset: train labels with empty query/gallery flags, validation items both query and gallery.

    Labels 0..n_train_labels-1 are train, the next ones validation; categories alternate "even"/"odd";
    row i is on CSV line i + 2.
    """
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
    """A valid dataset of `good_rows()` (6 labels, 12 images of 16x12) in a temporary folder."""
    return write_dataset(tmp_path / "ds", good_rows())


@pytest.fixture(autouse=True)
def _image_check_cache(tmp_path_factory, monkeypatch):
    """Image-check results go to a temporary folder, never to the user's ~/.cache."""
    monkeypatch.setenv("LOOKALIKE_IMAGE_CHECK_CACHE", str(tmp_path_factory.mktemp("image-checks")))
