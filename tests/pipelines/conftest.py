"""Shared pieces of the pipeline tests: a tiny synthetic dataset (a colour grid per label), overrides that shrink any
config to it, and one short training run that several test files inspect (built once per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

N_TRAIN_LABELS, N_VAL_LABELS, PER_LABEL, SIDE = 12, 8, 4, 32

TRIPLET = {
    "extractor": {"name": "small_cnn", "args": {}},
    "sampler": {"name": "balance", "args": {"n_labels": 4, "n_instances": 4}},
    "criterion": {"name": "triplet_with_miner",
                  "args": {"margin": 0.2, "miner": {"name": "hard_triplets", "args": {}}}},
    "optimizer": {"name": "adamw", "args": {"lr": 1e-3}},
}


def _pattern(label: int, rng: np.random.Generator) -> np.ndarray:
    """A label's look: a random 4 x 4 colour grid; instances add shifts and noise."""
    base = np.random.default_rng(label).integers(0, 256, size=(4, 4, 3)).astype(np.float32)
    big = np.kron(base, np.ones((SIDE // 4, SIDE // 4, 1), np.float32))
    big = np.roll(big, shift=tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))
    return np.clip(big + rng.normal(0, 40, big.shape), 0, 255).astype(np.uint8)


def tiny(dataset: Path, out: Path, **extra) -> list[str]:
    """Overrides that shrink any config to the synthetic data, a small CNN and one short epoch."""
    overrides = {
        "dataset_root": str(dataset),
        "output_dir": str(out),
        "image_size": SIDE,
        "extractor": "{name: small_cnn, args: {}}",
        "max_epochs": 1,
        "bs_val": 64,
        "progress_bar": "false",
        "logger": "null",
        "accelerator": "cpu",
        "precision": 32,
        "num_workers": 0,
    }
    overrides.update(extra)
    return [f"{k}={v}" for k, v in overrides.items()]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("synthetic")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for label in range(N_TRAIN_LABELS + N_VAL_LABELS):
        split = "train" if label < N_TRAIN_LABELS else "validation"
        for j in range(PER_LABEL):
            path = f"images/{label:03d}_{j}.png"
            Image.fromarray(_pattern(label, rng)).save(root / path)
            val = split == "validation"
            rows.append({"label": label, "path": path, "split": split, "is_query": val if val else None,
                         "is_gallery": val if val else None, "category": "warm" if label % 2 else "cold"})
    pd.DataFrame(rows).to_csv(root / "df.csv", index=False)
    return root


@pytest.fixture(scope="session")
def trained(dataset, tmp_path_factory) -> dict:
    """One short training run shared by the tests that inspect its outputs (they must not modify it)."""
    from lookalike.pipelines import train

    out = tmp_path_factory.mktemp("runs")
    return train(TRIPLET, tiny(dataset, out, max_epochs=2, logger="{name: csv}", run_name="shared",
                               validate_before_training="true"))


class Killed(RuntimeError):
    """A simulated kill of a training process."""


def killed_in_second_epoch(monkeypatch, run) -> None:
    """Runs ``run()`` (a training) with its second epoch dying at the second batch, expects the kill, and restores
    the training step: the run folder is left as a killed process leaves it (last.ckpt after epoch 1)."""
    from lookalike.pipelines import lightning_parts

    original = lightning_parts.ExtractorModule.training_step

    def dies_in_second_epoch(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 1:
            raise Killed("simulated kill")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(lightning_parts.ExtractorModule, "training_step", dies_in_second_epoch)
    with pytest.raises(Killed):
        run()
    monkeypatch.setattr(lightning_parts.ExtractorModule, "training_step", original)
