"""The prediction pipeline: embeddings of every image of a CSV or a folder, saved as an embeddings store
(``embeddings.npy`` + ``manifest.csv`` + ``embeddings.json``, see ``lookalike.store``); images that cannot be
read are listed in ``failed.csv`` and reported, never fatal. The embedding itself is ``lookalike.inference``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Mapping

from lookalike.data import schema
from lookalike.io import atomic_path
from lookalike.pipelines.config import load_config
from lookalike.pipelines.runs import (
    default_checkpoint,
    extractor_identity,
    output_folder,
    save_config,
)

__all__ = ["predict"]


def _source(cfg: Mapping):
    from lookalike.inference import image_source
    from lookalike.pipelines import loading

    if cfg.get("predict_source") is None:
        from lookalike.data.validation import load_dataset_table

        root = loading.dataset_root(cfg)
        table = load_dataset_table(root, cfg["csv"], check_images="none").reset_index(drop=True)
        images = image_source(table, root=root)
        images.origin = str(root / cfg["csv"])
        return images
    return image_source(cfg["predict_source"])


def predict(config: Mapping | str | Path | None = None, overrides: Iterable[str] = (), *,
            trust_config: bool = False) -> Path:
    """Embeddings of ``predict_source`` (a CSV with a ``path`` column or a folder; null = the dataset CSV) by
    the extractor with weights ``checkpoint``. Returns the output folder holding the embeddings store (one
    embedding per manifest row), ``failed.csv`` (if any image failed) and the config. Runs on one device.
    ``trust_config``: follow the import paths of a run folder's config (see docs/safety.md)."""
    import pandas as pd

    from lookalike.inference import Embedder
    from lookalike.pipelines import builders
    from lookalike.store import EmbeddingsStore

    overrides = list(overrides)
    cfg, source = load_config(config, overrides, pipeline="predict", trust_config=trust_config)
    default_checkpoint(cfg, source)
    images = _source(cfg)
    embedder = Embedder(builders.build_extractor(cfg), builders.build_transforms(cfg, "transforms_val"),
                        device=cfg["accelerator"], precision=cfg["precision"], channels_last=cfg["channels_last"],
                        batch_size=cfg["bs_val"], num_workers=cfg["num_workers"])
    result = embedder.embed_source(images, progress=cfg["progress_bar"])

    table, ids, rows = images.table, images.ids, result.rows.tolist()
    manifest = pd.DataFrame({"row": rows, "id": [ids[r] for r in rows],
                             schema.PATH: table[schema.PATH].iloc[rows].to_numpy()})
    for column in (c for c in table.columns if c not in (schema.PATH, "id", "row")):
        manifest[column] = table[column].iloc[rows].to_numpy()
    header = {"distance": cfg["metric_args"].get("distance", "cosine") if cfg.get("metric_args") else "cosine",
              "extractor": extractor_identity(cfg), "source": images.origin}
    out_dir = output_folder(cfg, source, "predictions", overrides)
    EmbeddingsStore(result.embeddings, manifest, header).save(out_dir)

    failed, failed_path = result.failed, out_dir / "failed.csv"
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
    print(f"{len(rows)} embeddings of dimension {result.embeddings.shape[1]} from {images.origin} -> "
          f"{out_dir / 'embeddings.npy'}" + (f" ({len(failed)} failed, see {failed_path})" if failed else ""))
    return out_dir
