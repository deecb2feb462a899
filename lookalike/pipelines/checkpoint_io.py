"""Checkpoint io of the training pipeline: every checkpoint is written to a temporary file and renamed into
place, so a run killed mid-write keeps its previous checkpoint intact."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from lookalike.io import atomic_path

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, then renames it into place."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any | None = None) -> None:
        path = Path(path)
        with atomic_path(path, suffix=".ckpt.tmp") as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)

    def remove_checkpoint(self, path) -> None:
        if os.path.exists(path):
            os.remove(path)
