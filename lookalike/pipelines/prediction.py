"""The prediction pipeline: embeddings of every image of a CSV or a folder, written as ``embeddings.npy`` with
``manifest.csv`` (one row per embedding, same order); images that cannot be read are listed in ``failed.csv``
and reported, never fatal."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

from lookalike.data import schema
from lookalike.errors import ConfigError, DatasetError
from lookalike.pipelines.config import load_config
from lookalike.pipelines.io import atomic_path
from lookalike.pipelines.runs import save_config

__all__ = ["predict", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def _source_table(cfg: Mapping):
    """(table with absolute paths, the manifest's id column values, where the items came from)."""
    import pandas as pd

    from lookalike.pipelines import loading

    source = cfg.get("predict_source")
    if source is None:
        from lookalike.data.validation import load_dataset_table

        root = loading.dataset_root(cfg)
        table = load_dataset_table(root, cfg["csv"], check_images="none").reset_index(drop=True)
        return table, table[schema.PATH].astype(str).tolist(), str(root / cfg["csv"])
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DatasetError(f"predict_source: folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        ids = [p.relative_to(path).as_posix() for p in files]
        return pd.DataFrame({schema.PATH: [str(p.resolve()) for p in files]}), ids, str(path)
    if path.is_file():
        try:
            table = pd.read_csv(path)
        except Exception as exc:
            raise DatasetError(f"predict_source: {path} is not a readable CSV ({exc}).") from None
        if schema.PATH not in table.columns:
            raise DatasetError(f"predict_source: {path} has no {schema.PATH!r} column; columns are "
                               f"{', '.join(map(str, table.columns))}. Add a column of image paths.")
        ids = table[schema.PATH].astype(str).tolist()
        base = path.parent.resolve()
        table = table.copy()
        table[schema.PATH] = [p if os.path.isabs(p) else str(base / p) for p in ids]
        return table.reset_index(drop=True), ids, str(path)
    raise ConfigError(f"predict_source: {str(path)!r} is neither a CSV file nor a folder of images.")


class _SafeItems:
    """Items of a dataset where a failure to read one image yields an error record instead of raising."""

    def __init__(self, read):
        self.read = read

    def __len__(self) -> int:
        return len(self.read)

    def __getitem__(self, i: int) -> dict:
        try:
            return {"input": self.read[i], "row": i, "error": None}
        except Exception as exc:  # unreadable or corrupt image: reported, not fatal
            return {"input": None, "row": i, "error": f"{type(exc).__name__}: {exc}"}


class _ImageReader:
    """``read[i]`` -> the transformed image of table row i (bbox crop when the table has bbox columns)."""

    def __init__(self, table, transform):
        from lookalike.data.datasets import row_bboxes
        from lookalike.data.images import read_image

        self.paths = table[schema.PATH].tolist()
        self.bboxes = row_bboxes(table)  # the same box parsing as the training datasets
        self.transform = transform
        self.read_image = read_image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = self.read_image(self.paths[i], self.bboxes[i])
        return self.transform(image) if self.transform is not None else image


def _collate(items: list[dict]) -> dict:
    import torch

    good = [it for it in items if it["error"] is None]
    return {
        "input": torch.stack([it["input"] for it in good]) if good else None,
        "rows": [it["row"] for it in good],
        "failed": [(it["row"], it["error"]) for it in items if it["error"] is not None],
    }


def _device(accelerator: str):
    import torch

    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator in ("auto", "mps") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    if accelerator in ("gpu", "cuda", "mps"):
        raise ConfigError(f"accelerator: {accelerator!r} is not available on this machine; use cpu or auto.")
    return torch.device("cpu")


def _autocast(device, precision: Any):
    import contextlib

    import torch

    if precision in ("bf16-mixed", "bf16-true"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision in ("16-mixed", 16, "16-true") and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def predict(config: Mapping | str | Path | None = None, overrides: Iterable[str] = ()) -> Path:
    """Embeddings of ``predict_source`` (a CSV with a ``path`` column or a folder; null = the dataset CSV) by
    the extractor with weights ``checkpoint``. Returns the output folder holding ``embeddings.npy``
    (float32, one row per manifest row), ``manifest.csv``, ``failed.csv`` (if any image failed) and the config.
    Runs on one device."""
    import numpy as np
    import pandas as pd
    import torch
    from torch.utils.data import DataLoader

    from lookalike.pipelines import builders
    from lookalike.pipelines.validation import output_folder

    overrides = list(overrides)
    cfg, source = load_config(config, overrides, pipeline="predict")
    if cfg["checkpoint"] is None and source.run_dir is not None:
        cfg["checkpoint"] = str(Path(source.run_dir) / "checkpoints" / "best.ckpt")
    if cfg["checkpoint"] is None:
        warnings.warn("checkpoint is null: embedding with the extractor as built (its own `weights` argument or "
                      "a random initialisation).", stacklevel=2)
    table, ids, origin = _source_table(cfg)
    transform = builders.build_transforms(cfg, "transforms_val")
    extractor = builders.build_extractor(cfg)
    device = _device(cfg["accelerator"])
    extractor.to(device).eval()
    layout = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    if cfg["channels_last"]:
        extractor.to(memory_format=layout)

    items = _SafeItems(_ImageReader(table, transform))
    loader = DataLoader(items, batch_size=cfg["bs_val"], shuffle=False, num_workers=cfg["num_workers"],
                        collate_fn=_collate)
    chunks: list[np.ndarray] = []
    rows: list[int] = []
    failed: list[tuple[int, str]] = []
    with torch.inference_mode(), _autocast(device, cfg["precision"]):
        for batch in loader:
            failed += batch["failed"]
            if batch["input"] is None:
                continue
            emb = extractor(batch["input"].to(device).contiguous(memory_format=layout)).float().cpu().numpy()
            chunks.append(emb.astype(np.float32, copy=False))
            rows += batch["rows"]
    dim = int(getattr(extractor, "feat_dim", chunks[0].shape[1] if chunks else 0))
    embeddings = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)

    out_dir = output_folder(cfg, source, "predictions", overrides)
    keep = [c for c in table.columns if c != schema.PATH]
    manifest = pd.DataFrame({"row": range(len(rows)), "id": [ids[r] for r in rows],
                             schema.PATH: [table[schema.PATH].iloc[r] for r in rows]})
    for column in keep:
        manifest[column] = table[column].iloc[rows].to_numpy()
    with atomic_path(out_dir / "embeddings.npy", suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, embeddings)
    with atomic_path(out_dir / "manifest.csv", suffix=".csv") as tmp:
        manifest.to_csv(tmp, index=False)
    failed_path = out_dir / "failed.csv"
    if failed:
        failed_df = pd.DataFrame({"id": [ids[r] for r, _ in failed],
                                  schema.PATH: [table[schema.PATH].iloc[r] for r, _ in failed],
                                  "error": [e for _, e in failed]})
        with atomic_path(failed_path, suffix=".csv") as tmp:
            failed_df.to_csv(tmp, index=False)
        shown = "; ".join(f"{ids[r]}: {e}" for r, e in failed[:5])
        warnings.warn(f"{len(failed)} of {len(table)} image(s) could not be read and have no embedding (listed "
                      f"in {failed_path}): {shown}{' ...' if len(failed) > 5 else ''}", stacklevel=2)
    elif failed_path.exists():
        failed_path.unlink()
    save_config(cfg, out_dir / "config.yaml")
    print(f"{len(rows)} embeddings of dimension {embeddings.shape[1]} from {origin} -> {out_dir / 'embeddings.npy'}"
          + (f" ({len(failed)} failed, see {failed_path})" if failed else ""))
    return out_dir
