"""``to_onnx``: a torch extractor -> an ONNX file with a dynamic batch axis, its input size and normalisation
recorded inside (``metadata_props``) and beside it (JSON), checked against torch on real images before it is
put in place. The file appears atomically: a failed export or parity check leaves no file and keeps any
previous one."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lookalike.export.errors import ExportError, ParityError, require
from lookalike.export.metadata import (INPUT_NAME, OUTPUT_NAME, OnnxMetadata, metadata_path, parity_path,
                                       preprocess_transform)
from lookalike.export.parity import DEFAULT_SAMPLES, PARITY_BATCH, ParityReport, check_parity, sample_source
from lookalike.io import atomic_path
from lookalike.io import write_json_atomic

__all__ = ["EXPORTERS", "to_onnx", "default_parity_source"]

EXPORTERS = ("dynamo", "torchscript")
#: the dynamo exporter writes opset 18 at the lowest (it silently raises lower requests); TorchScript 7-20
MIN_OPSET = {"dynamo": 18, "torchscript": 7}
#: above this many bytes of weights, they go to a ``.data`` file beside the model (protobuf's 2 GB limit)
EXTERNAL_DATA_BYTES = 1_800_000_000
#: batch of the example input: torch.export specialises size-1 dimensions, so trace with 2
TRACE_BATCH = 2


def default_parity_source():
    """The validation images of the built-in example data (``lookalike/assets/emoji_mini``)."""
    from lookalike.data import example_dataset_root
    from lookalike.inference import image_source

    root = Path(example_dataset_root())
    import pandas as pd

    table = pd.read_csv(root / "df.csv")
    source = image_source(table[table["split"] == "validation"], root=root)
    source.origin = f"{root / 'df.csv'} (validation)"
    return source


def check_output_path(path: str | os.PathLike) -> Path:
    """The export target, refused before any work if it cannot be written: not ``.onnx``, a folder, or in a
    folder that cannot be created or written to."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ExportError(f"out={path} is a folder; give a file name, e.g. out={path / 'model.onnx'}.")
    if path.suffix != ".onnx":
        raise ExportError(f"out={path}: the file name must end in .onnx (e.g. {path.with_suffix('.onnx').name}).")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"out={path}: cannot create the folder {path.parent} ({exc.strerror or exc}); choose "
                          "a writable location.") from None
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ExportError(f"out={path}: {path.parent if not path.exists() else path} is not writable; choose a "
                          "writable location.")
    return path.resolve()


def _param_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _export(model, example, target: Path, exporter: str, opset: int | None, external_data: bool) -> None:
    """Runs torch.onnx.export into ``target`` (a private folder), its chatter silenced."""
    import torch

    log = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes=({0: "batch"},),
                                        opset_version=opset, optimize=True, external_data=external_data)
            program.save(str(target), external_data=external_data)
        else:
            torch.onnx.export(model, (example,), str(target), dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def _stamp(target: Path, meta: OnnxMetadata) -> None:
    """Sets ``meta.opset`` from the file and writes the metadata into it (external weights are untouched)."""
    import onnx

    model = onnx.load(str(target), load_external_data=False)
    meta.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **meta.to_props()})
    onnx.save(model, str(target))


def _install(private: Path, path: Path) -> None:
    """Moves the exported file (and its external data, first) from the private folder onto ``path``."""
    for item in sorted(private.iterdir(), key=lambda p: p.name == path.name):  # the model file last
        with atomic_path(path.parent / item.name, suffix=item.suffix) as tmp:
            os.replace(item, tmp)


def to_onnx(extractor, path: str | os.PathLike, *, image_size: int, mean: Sequence[float], std: Sequence[float],
            opset: int | None = None, exporter: str = "dynamo", parity_source: Any = None,
            parity_samples: int = DEFAULT_SAMPLES, transform: Callable | None = None,
            tolerances: Mapping[str, float] | None = None, source: Mapping | None = None,
            external_data: bool | None = None, verbose: bool = True) -> Path:
    """Exports ``extractor`` (images (B, 3, image_size, image_size) -> (B, dim)) to ``path`` (``.onnx``).

    The batch axis is dynamic; ``image_size``, ``mean`` and ``std`` (the normalisation the model expects) and
    ``source`` (e.g. the checkpoint it came from) are recorded in the file and in ``<name>.json``. The L2
    normalisation of an ``Extractor`` is part of its forward pass, so it is in the graph. Before the file is
    put in place, torch and onnxruntime embed ``parity_samples`` images of ``parity_source`` (anything
    ``lookalike.inference.image_source`` reads; None = the built-in example's validation images), torch with
    ``transform`` (None = the preprocessing the file records) and onnxruntime with the recorded one; the
    report goes to ``<name>.parity.json`` and a ParityError is raised when it is over ``tolerances``.
    ``exporter``: "dynamo" (torch.export, the default; opset >= 18) or "torchscript" (the legacy tracer).
    """
    import torch

    require("onnx", "onnxruntime", *(["onnxscript"] if exporter == "dynamo" else []), purpose="ONNX export")
    if exporter not in EXPORTERS:
        from lookalike.errors import unknown_choice

        raise ExportError(unknown_choice("exporter", exporter, EXPORTERS))
    if opset is not None:
        if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET[exporter]:
            raise ExportError(f"opset={opset!r}: the {exporter} exporter writes opset {MIN_OPSET[exporter]} or "
                              "newer" + ("; for an older opset use exporter=torchscript (7-20)."
                                         if exporter == "dynamo" else "."))
    path = check_output_path(path)
    if not isinstance(extractor, torch.nn.Module):
        raise ExportError(f"to_onnx exports a torch.nn.Module, got {type(extractor).__name__}.")
    model = copy.deepcopy(extractor).cpu().float().eval()
    feat_dim = getattr(extractor, "feat_dim", None)
    example = torch.randn(TRACE_BATCH, 3, int(image_size), int(image_size), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        try:
            probe = model(example)
        except Exception as exc:
            raise ExportError(f"the extractor fails on a {TRACE_BATCH}x3x{image_size}x{image_size} batch before any "
                              f"export ({type(exc).__name__}: {exc}).") from None
    if not isinstance(probe, torch.Tensor) or probe.ndim != 2 or len(probe) != TRACE_BATCH:
        raise ExportError("to_onnx exports extractors returning one (B, dim) tensor; this one returns "
                          f"{type(probe).__name__} {tuple(getattr(probe, 'shape', ()))}.")
    if feat_dim is not None and int(feat_dim) != probe.shape[1]:
        raise ExportError(f"the extractor declares feat_dim={feat_dim} but returns {probe.shape[1]}-d embeddings; "
                          "the metadata would mislead every reader of the file.")
    import lookalike
    import onnx

    meta = OnnxMetadata(image_size=image_size, mean=mean, std=std, feat_dim=int(feat_dim or probe.shape[1]),
                        l2_normalised=getattr(extractor, "normalise", None), exporter=exporter,
                        source=dict(source or {}),
                        versions={"lookalike": lookalike.__version__, "torch": torch.__version__,
                                  "onnx": onnx.__version__})
    if meta.l2_normalised is not None:
        meta.l2_normalised = bool(meta.l2_normalised)
    if external_data is None:
        external_data = _param_bytes(model) > EXTERNAL_DATA_BYTES

    try:
        private = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as exc:
        raise ExportError(f"out={path}: cannot write into {path.parent} ({exc.strerror or exc}).") from None
    try:
        target = private / path.name
        try:
            _export(model, example, target, exporter, opset, external_data)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:400]
            other = "torchscript" if exporter == "dynamo" else "dynamo"
            raise ExportError(
                f"torch.onnx ({exporter}) cannot export {type(extractor).__name__}: {type(exc).__name__}: {first}. "
                f"Try exporter={other}, or simplify the model's forward (data-dependent control flow, "
                "Python-side shape checks on the batch size).") from None
        _stamp(target, meta)
        if opset is not None and meta.opset != opset:
            raise ExportError(f"opset={opset} was asked for but the {exporter} exporter wrote opset {meta.opset}; "
                              f"use opset>={meta.opset} or exporter=torchscript.")
        report = _parity(model, target, meta, transform, parity_source, parity_samples, tolerances)
        write_json_atomic(parity_path(path), report.to_dict())
        if verbose:
            print(report.summary())
        if not report.passed:
            raise ParityError(f"the exported model does not compute the torch model's embeddings: "
                              f"{'; '.join(report.problems)}. It was not written to {path}; the report is in "
                              f"{parity_path(path)}.")
        try:
            _install(private, path)
        except OSError as exc:
            raise ExportError(f"out={path}: writing failed ({exc.strerror or exc}); nothing was replaced.") from None
        write_json_atomic(metadata_path(path), meta.to_dict())
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return path


def _parity(model, target: Path, meta: OnnxMetadata, transform, parity_source, parity_samples: int,
            tolerances) -> ParityReport:
    from lookalike.export.runtime import onnx_embedder
    from lookalike.inference import Embedder

    images = sample_source(default_parity_source() if parity_source is None else parity_source, parity_samples)
    reference = Embedder(model, transform or preprocess_transform(meta.image_size, meta.mean, meta.std),
                         device="cpu", precision="32", batch_size=PARITY_BATCH)
    exported = onnx_embedder(target, batch_size=PARITY_BATCH)
    return check_parity(reference, exported, images, tolerances)
