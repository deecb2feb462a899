"""The index pipeline (``lookalike index``): embed a CSV or a folder with a run's best checkpoint and its
validation transforms, and save a `lookalike.index.SearchIndex` whose ``index.json`` names the model; and
`open_index`, which rebuilds that model (refusing when its weights file is missing or changed) so the index can
search by image."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

from lookalike.errors import ConfigError, DatasetError
from lookalike.io import atomic_path, sha256_file, to_jsonable
from lookalike.pipelines.config import load_config, yaml_load
from lookalike.pipelines.embedders import build_embedder, embedder_for
from lookalike.pipelines.runs import extractor_identity, output_folder
from lookalike.pipelines.trust import check_trust

__all__ = ["index", "open_index", "split_own_options", "INDEX_OPTIONS"]

#: the options of `lookalike index` that are not config keys
INDEX_OPTIONS = ("source", "index_dir", "backend", "backend_args")


def split_own_options(overrides: Iterable[str], own: Iterable[str]) -> tuple[dict, list[str]]:
    """``key=value`` items whose key is one of ``own`` (YAML values) apart from the config overrides."""
    own = tuple(own)
    mine, rest = {}, []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.strip() in own:
            mine[key.strip()] = yaml_load(value) if value.strip() else None
        else:
            rest.append(item)
    return mine, rest


def _distance(cfg: Mapping) -> str:
    return (cfg.get("metric_args") or {}).get("distance", "cosine")


def _check_unique_ids(images) -> None:
    import pandas as pd

    ids = pd.Series(images.ids)
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        shown = "; ".join(f"{v!r} in rows {', '.join(str(i) for i in dup.index[dup == v][:4])}"
                          for v in dup.unique()[:5])
        raise DatasetError(f"{images.origin}: {dup.nunique()} id(s) occur more than once ({shown}; rows count from "
                           "0, the header excluded). Ids must be unique: fix the 'id' column, or remove it to use "
                           "the paths as ids.")


def index(config: Mapping | str | Path | None = None, overrides: Iterable[str] = ()) -> Path:
    """Embed ``source=`` (a CSV with a ``path`` column or a folder; for a text extractor a CSV with a ``text``
    column; default: the dataset CSV) with the config's
    extractor and ``checkpoint`` (a run folder: its best checkpoint) and save a search index into ``index_dir=``
    (default ``<run>/index``) with ``backend=`` (exact, faiss_flat, faiss_ivf, faiss_hnsw) and
    ``backend_args=``. Other overrides are config keys. ``devices: N`` embeds on N processes (see
    `lookalike.pipelines.sharding`). Returns the index folder."""
    from lookalike.pipelines.prediction import source_of
    from lookalike.pipelines.sharding import embed_sharded, start_processes

    own, overrides = split_own_options(overrides, INDEX_OPTIONS)
    cfg, source = load_config(config, overrides, pipeline="predict")
    if own.get("source") is not None:
        cfg["predict_source"] = str(own["source"])
    elif cfg.get("predict_source") is None:  # the dataset CSV itself: ids are its paths as written
        from lookalike.pipelines import loading

        cfg["predict_source"] = str(loading.dataset_root(cfg) / cfg["csv"])
    backend = str(own.get("backend") or "exact")
    backend_args = own.get("backend_args") or {}
    if not isinstance(backend_args, dict):
        raise ConfigError(f"backend_args: a mapping such as {{M: 32, efSearch: 128}}, got {backend_args!r}.")
    processes = start_processes(cfg)
    try:
        folder = processes.on_main(lambda: _index_folder(cfg, source, own, overrides))
        images = source_of(cfg)
        _check_unique_ids(images)
        embedder, identity = build_embedder(cfg, source, device=processes.device)
        processes.same_weights(embedder.model)
        result = embed_sharded(embedder, images, processes, progress=cfg["progress_bar"])
        return processes.on_main(lambda: _save_index(cfg, source, images, embedder, identity, result, folder,
                                                     backend, backend_args))
    finally:
        processes.close()


def _index_folder(cfg: Mapping, source, own: Mapping, overrides: list[str]) -> Path:
    folder = (Path(str(own["index_dir"])).expanduser() if own.get("index_dir")
              else output_folder(cfg, source, "index", overrides))
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def _save_index(cfg: dict, source, images, embedder, identity: dict, result, folder: Path, backend: str,
                backend_args: Mapping) -> Path:
    """Builds the index of the embedded images and saves it (with the extractor's weights when it was used as
    built, so the index can embed queries); returns the folder."""
    from lookalike.index import SearchIndex
    from lookalike.pipelines.prediction import manifest_of
    from lookalike.store import EmbeddingsStore

    if len(result.rows) == 0:
        raise DatasetError(f"{images.origin}: none of the {len(images.ids)} images could be read (first error: "
                           f"{result.failed[0][1] if result.failed else 'none'}); nothing to index.")
    own_weights = None
    if cfg.get("runtime", "torch") == "torch" and not cfg.get("checkpoint"):
        own_weights = _keep_weights(embedder.model, folder)
        cfg["checkpoint"] = str(folder / own_weights)
    rows = result.rows.tolist()
    manifest = manifest_of(images, rows)
    if own_weights is not None:
        identity = extractor_identity(cfg)  # of the weights just kept
        identity["checkpoint"] = own_weights  # inside the index folder: travels with it
    model = {**identity, "run": str(source.run_dir.resolve()) if source.run_dir is not None else None,
             "distance": _distance(cfg), "source": images.origin, "config": to_jsonable(cfg)}
    store = EmbeddingsStore(result.embeddings, manifest, {"distance": _distance(cfg), "source": images.origin})
    texts = embedder.modality == "text"
    built = SearchIndex.build(store, backend=backend, backend_args=backend_args, distance=_distance(cfg),
                              model=model, embedder=embedder, holds_texts=texts)
    built.save(folder)
    _report_failed(images, result.failed, folder)
    print(f"indexed {len(built)} {'texts' if texts else 'images'} of {images.origin} ({backend}, dimension "
          f"{built.dim}) -> {folder}")
    return folder


def _keep_weights(model: Any, folder: Path) -> str:
    """Saves the weights of an extractor used as built (no checkpoint) into the index folder; returns the file
    name (named by content, so another index written into the same folder never replaces them midway)."""
    from lookalike.models.checkpoints import save_weights

    tmp = save_weights(model, folder / ".model.tmp.safetensors")
    name = f"model-{sha256_file(tmp)[:16]}.safetensors"
    tmp.replace(folder / name)
    return name


def _report_failed(images, failed: list, folder: Path) -> None:
    import pandas as pd

    path = folder / "failed.csv"
    if not failed:
        path.unlink(missing_ok=True)
        return
    from lookalike.pipelines.prediction import content_column

    content = content_column(images)
    table = pd.DataFrame({"id": [images.ids[r] for r, _ in failed],
                          content: [images.table[content].iloc[r] for r, _ in failed], "error": [e for _, e in failed]})
    with atomic_path(path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    noun = "text(s)" if content == "text" else "image(s)"
    warnings.warn(f"{len(failed)} {noun} could not be read and are not in the index (listed in {path}): "
                  + "; ".join(f"{images.ids[r]}: {e}" for r, e in failed[:3]), stacklevel=3)


def model_config(folder: Path, info: Mapping, trust_config: bool = False) -> dict | None:
    """The resolved config saved in ``index.json`` with ``checkpoint`` pointing at the weights, after checking
    that the weights file exists and has the SHA-256 the index was built with (`ModelChangedError` if not)."""
    from lookalike.index import ModelChangedError

    model = info.get("model") or {}
    if not model.get("config"):
        return None
    cfg = dict(model["config"])
    # an index folder may come from someone else: its config names code only through the registries unless trusted
    check_trust(cfg, trusted_source=False, origin=str(Path(folder) / "index.json"), trust_config=trust_config)
    ckpt = model.get("checkpoint")
    if ckpt:
        path = Path(ckpt).expanduser()
        path = path if path.is_absolute() else folder / path
        rebuild = f"rebuild the index with `lookalike index {model.get('run') or '<run>'} source=...`"
        if not path.is_file():
            raise ModelChangedError(f"index {folder} was built with the weights {path}, which no longer exist; "
                                    f"restore that file or {rebuild}.")
        expected = model.get("checkpoint_sha256")
        if expected and sha256_file(path) != expected:
            raise ModelChangedError(f"index {folder}: the weights {path} changed since the index was built (SHA-256 "
                                    f"{expected[:12]}... expected): new queries would not match the indexed "
                                    f"embeddings. Restore the file or {rebuild}.")
        cfg["checkpoint"] = str(path)
    if cfg.get("runtime") == "onnx":
        path = Path(str(cfg.get("onnx_model") or model.get("onnx_model")))
        if not path.is_file() or (model.get("onnx_sha256") and sha256_file(path) != model["onnx_sha256"]):
            raise ModelChangedError(f"index {folder} was built with the ONNX model {path}, which is missing or "
                                    "changed since; restore that file or rebuild the index.")
        cfg["onnx_model"] = str(path)
    return cfg


def open_index(folder: str | Path, device: str = "cpu", *, trust_config: bool = False):
    """The index in ``folder`` with its embedder rebuilt from ``index.json`` (extractor, validation transforms,
    checkpoint), so it searches by image; an index built from embeddings alone opens without one."""
    from lookalike.index import SearchIndex, read_info

    folder = Path(folder).expanduser().resolve()
    info = read_info(folder)
    cfg = model_config(folder, info, trust_config)
    embedder = embedder_for(cfg, device=device) if cfg is not None else None
    return SearchIndex.load(folder, embedder=embedder)
