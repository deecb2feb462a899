"""The Embedder a pipeline runs, from the config: the torch extractor (``runtime: torch``, its checkpoint and
validation transforms) or an exported ONNX file in onnxruntime (``runtime: onnx``, the preprocessing recorded in
the file). Prediction uses it; the index and the search service take the same two keys."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from lookalike.errors import ConfigError
from lookalike.io import sha256_file
from lookalike.pipelines.runs import default_checkpoint, extractor_identity

__all__ = ["DEFAULT_ONNX_NAME", "onnx_model_path", "embedder_for", "build_embedder"]

#: where ``lookalike export <run folder>`` writes, inside the run folder
DEFAULT_ONNX_NAME = Path("export") / "model.onnx"


def onnx_model_path(cfg: Mapping, source) -> Path:
    """``cfg['onnx_model']``, else ``<run folder>/export/model.onnx`` when the config came from a run folder."""
    if cfg.get("onnx_model"):
        path = Path(cfg["onnx_model"]).expanduser()
    elif source.run_dir is not None:
        path = Path(source.run_dir) / DEFAULT_ONNX_NAME
    else:
        raise ConfigError("runtime: onnx needs onnx_model: <file.onnx> (or a run folder holding export/model.onnx).")
    if not path.is_file():
        hint = f"lookalike export {source.run_dir}" if source.run_dir is not None else "lookalike export <run folder>"
        raise ConfigError(f"onnx_model: {str(path)!r} not found; export the run first ({hint}) or set "
                          "onnx_model to an exported .onnx file.")
    return path.resolve()


def embedder_for(cfg: Mapping, device: str | None = None):
    """The `Embedder` of a resolved config on ``device`` (default: the config's accelerator): its extractor
    (weights from ``checkpoint``) and validation transforms, or with ``runtime: onnx`` the file ``onnx_model``
    in onnxruntime with the preprocessing recorded in it."""
    from lookalike.inference import Embedder
    from lookalike.pipelines import builders

    from lookalike.pipelines.loading import extractor_modality, refuse_texts

    if cfg.get("runtime", "torch") == "onnx":
        refuse_texts(cfg, "runtime: onnx")
        from lookalike.export import onnx_embedder

        return onnx_embedder(Path(cfg["onnx_model"]), batch_size=cfg["bs_val"], num_workers=cfg["num_workers"])
    texts = extractor_modality(cfg) == "text"  # texts: the extractor tokenises, no image transforms
    return Embedder(builders.build_extractor(cfg), None if texts else builders.build_transforms(cfg, "transforms_val"),
                    device=device or cfg["accelerator"], precision=cfg["precision"],
                    channels_last=cfg["channels_last"], batch_size=cfg["bs_val"], num_workers=cfg["num_workers"])


def build_embedder(cfg: dict, source, device: str | None = None):
    """``(Embedder, identity)`` for ``cfg['runtime']``; identity says what made the embeddings: the extractor
    block, checkpoint and its SHA-256 (for ``onnx``: those recorded at export, plus the file and its SHA-256).
    Sets ``cfg['checkpoint']`` (a run's best) or ``cfg['onnx_model']`` (a run's export) when they are implied."""
    if cfg.get("runtime", "torch") == "onnx":
        path = onnx_model_path(cfg, source)
        cfg["onnx_model"] = str(path)
        embedder = embedder_for(cfg, device)
        meta = embedder.model.metadata
        identity = {**(meta.source if meta is not None else {}),
                    "runtime": "onnx", "onnx_model": str(path), "onnx_sha256": sha256_file(path)}
        return embedder, identity
    default_checkpoint(cfg, source)
    return embedder_for(cfg, device), extractor_identity(cfg)
