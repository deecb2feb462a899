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
from lookalike.pipelines.runs import output_folder, save_config

__all__ = ["predict", "source_of", "manifest_of"]


def source_of(cfg: Mapping):
    """The items a config names: ``predict_source`` (a CSV, or a folder of images), else every row of the dataset
    CSV; texts (a ``TextSource``, column ``text``) for a text extractor, else images (an ``ImageSource``)."""
    from lookalike.inference import image_source, text_source
    from lookalike.pipelines import loading

    texts = loading.extractor_modality(cfg) == "text"
    if cfg.get("predict_source") is None:
        from lookalike.data.validation import load_dataset_table

        root = loading.dataset_root(cfg)
        table = load_dataset_table(root, cfg["csv"], check_images="none",
                                   modality="text" if texts else "image").reset_index(drop=True)
        items = text_source(table) if texts else image_source(table, root=root)
        items.origin = str(root / cfg["csv"])
        return items
    return text_source(cfg["predict_source"]) if texts else image_source(cfg["predict_source"])


def content_column(items) -> str:
    """The column that holds each item: ``text`` for a ``TextSource`` (even when its CSV also has a ``path``
    column), else ``path``."""
    from lookalike.inference import TextSource

    return schema.TEXT if isinstance(items, TextSource) else schema.PATH


def manifest_of(images, rows: list[int]):
    """The manifest of the embedded ``rows`` of an ``ImageSource`` or ``TextSource``: ``id``, ``path`` (or
    ``text``), then every other column."""
    import pandas as pd

    table, ids = images.table, images.ids
    content = content_column(images)
    manifest = pd.DataFrame({"id": [ids[r] for r in rows], content: table[content].iloc[rows].to_numpy()})
    for column in (c for c in table.columns if c not in (content, "id", "row")):
        manifest[column] = table[column].iloc[rows].to_numpy()
    return manifest


def predict(config: Mapping | str | Path | None = None, overrides: Iterable[str] = (), *,
            trust_config: bool = False) -> Path:
    """Embeddings of ``predict_source`` (a CSV with a ``path`` column or a folder; null = the dataset CSV) by
    the extractor with weights ``checkpoint``. Returns the output folder holding the embeddings store (one
    embedding per manifest row), ``failed.csv`` (if any image failed) and the config. ``devices: N`` (and
    ``num_nodes``) splits the source over N processes and writes the same store once (`sharding`);
    ``runtime: onnx`` runs the exported file ``onnx_model`` in onnxruntime instead (``lookalike export``).
    ``trust_config``: follow the import paths of a run folder's config (see docs/safety.md)."""
    from lookalike.pipelines.embedders import build_embedder
    from lookalike.pipelines.sharding import embed_sharded, start_processes

    overrides = list(overrides)
    cfg, source = load_config(config, overrides, pipeline="predict", trust_config=trust_config)
    processes = start_processes(cfg)
    try:
        embedder, identity = build_embedder(cfg, source, device=processes.device)
        processes.same_weights(embedder.model)
        images = source_of(cfg)
        result = embed_sharded(embedder, images, processes, progress=cfg["progress_bar"])
        return processes.on_main(lambda: _save_predictions(cfg, source, overrides, images, result, identity))
    finally:
        processes.close()


def _save_predictions(cfg: dict, source, overrides: list[str], images, result, identity: dict) -> Path:
    """Writes the store, ``failed.csv`` and the config into the predictions folder; returns the folder."""
    import pandas as pd

    from lookalike.store import EmbeddingsStore

    table, ids, rows = images.table, images.ids, result.rows.tolist()
    manifest = manifest_of(images, rows)
    manifest.insert(0, "row", rows)
    header = {"distance": cfg["metric_args"].get("distance", "cosine") if cfg.get("metric_args") else "cosine",
              "extractor": identity, "source": images.origin}
    out_dir = output_folder(cfg, source, "predictions", overrides)
    EmbeddingsStore(result.embeddings, manifest, header).save(out_dir)

    failed, failed_path = result.failed, out_dir / "failed.csv"
    if failed:
        content = content_column(images)
        failed_df = pd.DataFrame({"id": [ids[r] for r, _ in failed],
                                  content: [table[content].iloc[r] for r, _ in failed],
                                  "error": [e for _, e in failed]})
        with atomic_path(failed_path, suffix=".csv") as tmp:
            failed_df.to_csv(tmp, index=False)
        shown = "; ".join(f"{ids[r]}: {e}" for r, e in failed[:5])
        noun = "text(s)" if content_column(images) == schema.TEXT else "image(s)"
        warnings.warn(f"{len(failed)} of {len(table)} {noun} could not be read and have no embedding (listed "
                      f"in {failed_path}): {shown}{' ...' if len(failed) > 5 else ''}", stacklevel=3)
    elif failed_path.exists():
        failed_path.unlink()
    save_config(cfg, out_dir / "config.yaml")
    print(f"{len(rows)} embeddings of dimension {result.embeddings.shape[1]} from {images.origin} -> "
          f"{out_dir / 'embeddings.npy'}" + (f" ({len(failed)} failed, see {failed_path})" if failed else ""))
    return out_dir
