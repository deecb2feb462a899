"""Running an exported extractor with onnxruntime: ``OnnxModel`` is a callable batch -> embeddings usable as
the ``model`` of ``lookalike.inference.Embedder``; ``onnx_embedder`` adds the preprocessing the file records."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lookalike.export.errors import ExportError, require
from lookalike.export.metadata import OnnxMetadata, preprocess_transform

__all__ = ["OnnxModel", "onnx_embedder", "read_metadata"]


def read_metadata(path: str | os.PathLike) -> OnnxMetadata:
    """The lookalike metadata recorded in an exported ONNX file (its weights are not read)."""
    (onnx,) = require("onnx", purpose="reading ONNX metadata")
    path = _existing(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ExportError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc}).") from None
    return OnnxMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ExportError(f"ONNX file {str(path)!r} not found; export one with `lookalike export <run folder>`.")
    return path


class OnnxModel:
    """An ONNX extractor in an onnxruntime CPU session: ``model(batch)`` maps a float32 (B, 3, H, W) batch
    (tensor or array) to (B, feat_dim) float32 embeddings. ``threads``: onnxruntime's intra-op threads (None =
    its default, one per physical core). ``metadata`` is the file's lookalike metadata, or None for a file
    exported elsewhere."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        (ort,) = require("onnxruntime", purpose="running an ONNX model")
        self.path = _existing(path)
        options = ort.SessionOptions()
        if threads is not None:
            if int(threads) < 1:
                raise ExportError(f"threads must be >= 1 (or None for onnxruntime's default), got {threads}.")
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ExportError(f"onnxruntime cannot load {self.path}: {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ExportError(f"{self.path}: an extractor has one input and one output, this file has "
                              f"{len(inputs)} inputs and {len(outputs)} outputs.")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_shape: list[Any] = list(inputs[0].shape)  # e.g. ['batch', 3, 64, 64]
        props = self.session.get_modelmeta().custom_metadata_map
        try:
            self.metadata: OnnxMetadata | None = OnnxMetadata.from_props(props, str(self.path))
        except ExportError:
            self.metadata = None
        out_dim = outputs[0].shape[-1] if outputs[0].shape else None
        self.feat_dim: int | None = self.metadata.feat_dim if self.metadata else \
            (out_dim if isinstance(out_dim, int) else None)

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, input {self.input_shape}, feat_dim={self.feat_dim})"

    def __call__(self, batch: Any) -> np.ndarray:
        if hasattr(batch, "detach"):
            batch = batch.detach().float().cpu().numpy()
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        expected = self.input_shape[1:]
        if batch.ndim != 4 or any(isinstance(e, int) and e != s for e, s in zip(expected, batch.shape[1:])):
            raise ExportError(f"{self.path.name} takes batches of shape (B, {', '.join(map(str, expected))}), "
                              f"got {tuple(batch.shape)}; preprocess with the recorded image size "
                              "(onnx_embedder does).")
        return self.session.run([self.output_name], {self.input_name: batch})[0]


def onnx_embedder(path: str | os.PathLike, *, threads: int | None = None, batch_size: int = 64,
                  num_workers: int = 0, image_size: int | None = None, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None):
    """A ``lookalike.inference.Embedder`` over ``OnnxModel(path)`` whose transform is the ``val`` preset at the
    size and normalisation recorded in the file; ``image_size`` / ``mean`` / ``std`` are only needed for files
    exported without lookalike metadata (and must agree with it when it exists)."""
    from lookalike.inference import Embedder

    model = OnnxModel(path, threads=threads)
    meta = model.metadata
    given = {"image_size": image_size, "mean": mean, "std": std}
    if meta is None:
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ExportError(f"{model.path} has no lookalike metadata, so pass {', '.join(missing)} to "
                              "onnx_embedder (or export the model with `lookalike export`).")
        transform = preprocess_transform(image_size, mean, std)
    else:
        recorded = {"image_size": meta.image_size, "mean": meta.mean, "std": meta.std}
        for key, value in given.items():
            if value is not None and (list(map(float, value)) if key != "image_size" else int(value)) \
                    != recorded[key]:
                raise ExportError(f"{model.path} was exported for {key}={recorded[key]}, not {value}; leave "
                                  f"{key} unset to use the recorded value.")
        transform = preprocess_transform(meta.image_size, meta.mean, meta.std)
    return Embedder(model, transform, device="cpu", batch_size=batch_size, num_workers=num_workers)
