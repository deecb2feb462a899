"""The parity check run at every export: the torch extractor and the exported file embed the same images,
and the embeddings must agree (max absolute difference, minimum cosine similarity, top-5 retrieval agreement
over the sample) within ``TOLERANCES`` (the reasons are in docs/export.md)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from lookalike.export.errors import ExportError

__all__ = ["TOLERANCES", "ParityReport", "compare_embeddings", "sample_source", "check_parity"]

#: max_abs_diff is relative to ``scale`` (the largest row norm of the torch embeddings: 1 when L2-normalised)
TOLERANCES: dict[str, float] = {"max_abs_diff": 1e-4, "min_cosine": 0.99999, "top5_agreement": 0.99}

#: how many images the export's parity check embeds by default, and in what batch size (not the trace batch
#: of 2, and a last partial batch of 4, so the dynamic batch axis is exercised)
DEFAULT_SAMPLES, PARITY_BATCH = 64, 20


@dataclass
class ParityReport:
    """Torch vs onnxruntime on the same preprocessed images."""

    n_images: int
    max_abs_diff: float
    scale: float
    min_cosine: float
    top5_agreement: float | None  # None when the sample holds fewer than 2 images
    k: int
    tolerances: dict[str, float]
    passed: bool
    problems: list[str] = field(default_factory=list)
    source: str = ""
    torch_seconds: float = 0.0
    onnx_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        agreement = "n/a" if self.top5_agreement is None else f"{self.top5_agreement:.4f}"
        return (f"parity on {self.n_images} images ({self.source}): max |torch - onnx| {self.max_abs_diff:.2e} "
                f"(tolerance {self.tolerances['max_abs_diff'] * self.scale:.1e}), min cosine "
                f"{self.min_cosine:.7f} (>= {self.tolerances['min_cosine']}), top-{self.k} agreement "
                f"{agreement} (>= {self.tolerances['top5_agreement']}): {'passed' if self.passed else 'FAILED'}")


def _top_k(embeddings: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k nearest other items of each item (cosine), by the exact search of the retrieval layer."""
    import torch

    from lookalike.retrieval import ExactSearch

    x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    keys = np.arange(len(x))
    _, indices = ExactSearch("cosine", precision="fp32").search(x, x, k, exclude=(keys, keys))
    return indices.numpy()


def compare_embeddings(reference: np.ndarray, exported: np.ndarray,
                       tolerances: Mapping[str, float] | None = None, k: int = 5, source: str = "") -> ParityReport:
    """The parity figures of two (N, dim) embedding arrays of the same images (``reference`` from torch)."""
    tol = {**TOLERANCES, **(tolerances or {})}
    unknown = set(tol) - set(TOLERANCES)
    if unknown:
        raise ExportError(f"unknown parity tolerance(s) {', '.join(sorted(unknown))}; known: {', '.join(TOLERANCES)}.")
    a, b = np.asarray(reference, np.float64), np.asarray(exported, np.float64)
    if a.shape != b.shape or a.ndim != 2 or len(a) == 0:
        raise ExportError(f"parity: torch gave embeddings of shape {a.shape}, onnxruntime {b.shape}; expected the "
                          "same non-empty (N, dim).")
    problems: list[str] = []
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        problems.append("non-finite embeddings (NaN or inf)")
    scale = float(max(np.linalg.norm(a, axis=1).max(), 1e-12))
    max_abs = float(np.abs(a - b).max())
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = (a * b).sum(axis=1) / np.maximum(norms, 1e-30)
    min_cos = float(cosine.min())
    k = min(k, len(a) - 1)
    agreement = None
    if k >= 1:
        ta, tb = _top_k(a, k), _top_k(b, k)
        agreement = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta.tolist(), tb.tolist())]))
    if not max_abs <= tol["max_abs_diff"] * scale:
        problems.append(f"max |torch - onnx| = {max_abs:.3g} > {tol['max_abs_diff']:g} x scale {scale:.3g}")
    if not min_cos >= tol["min_cosine"]:
        problems.append(f"min cosine similarity {min_cos:.7f} < {tol['min_cosine']}")
    if agreement is not None and agreement < tol["top5_agreement"]:
        problems.append(f"top-{k} agreement {agreement:.4f} < {tol['top5_agreement']}")
    return ParityReport(len(a), max_abs, scale, min_cos, agreement, k, tol, not problems, problems, source)


def sample_source(source, n: int = DEFAULT_SAMPLES, seed: int = 0):
    """At most ``n`` rows of an ``ImageSource`` (or anything ``image_source`` reads), drawn with a fixed seed
    and kept in source order."""
    from lookalike.inference import ImageSource, image_source

    if not isinstance(source, ImageSource):
        source = image_source(source)
    if n < 1:
        raise ExportError(f"the parity check needs at least 1 image, got samples={n}.")
    rows = np.arange(len(source.table))
    if len(rows) > n:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))
    return ImageSource(source.table.iloc[rows].reset_index(drop=True), [source.ids[r] for r in rows],
                       source.origin)


def check_parity(torch_embedder, onnx_embedder, source, tolerances: Mapping[str, float] | None = None,
                 ) -> ParityReport:
    """Both embedders embed ``source`` (an ``ImageSource``, e.g. from ``sample_source``); the report of
    ``compare_embeddings``. Images neither can read are skipped; ExportError when none is readable."""
    t0 = time.perf_counter()
    ref = torch_embedder.embed_source(source)
    t1 = time.perf_counter()
    out = onnx_embedder.embed_source(source)
    t2 = time.perf_counter()
    if len(ref.rows) == 0:
        shown = "; ".join(e for _, e in ref.failed[:3])
        raise ExportError(f"the parity check could not read any of the {len(source.table)} images of "
                          f"{source.origin} ({shown}); point it at readable images.")
    if ref.rows.tolist() != out.rows.tolist():
        raise ExportError("parity: torch and onnxruntime embedded different rows (a transform failed on one side).")
    report = compare_embeddings(ref.embeddings, out.embeddings, tolerances, source=source.origin)
    report.torch_seconds, report.onnx_seconds = round(t1 - t0, 3), round(t2 - t1, 3)
    return report
