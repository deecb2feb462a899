"""Embedding images with a trained extractor, in plain PyTorch (no Lightning, no config).

``Embedder`` holds a model, its transform, a device and a precision, and embeds a CSV, a folder, a list of paths,
a table, or PIL images, in batches, with the datasets' decoding rules (RGB, transparency over white, bbox
crops). An unreadable file is reported in ``Embedded.failed`` and never stops the run. The predict pipeline,
the index, the search service and the exporter's parity check all embed through this one loop.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from lookalike.data import schema
from lookalike.data.datasets import row_bboxes
from lookalike.data.images import read_image_array, to_rgb_array
from lookalike.errors import ConfigError, DatasetError

__all__ = ["Embedder", "Embedded", "ImageSource", "image_source", "TextSource", "text_source", "resolve_device",
           "autocast_for", "runnable_precision", "IMAGE_EXTENSIONS", "MAX_TEXT_CHARS"]

#: longest text embedded (characters); the tokenizer truncates to the model's max_length tokens anyway
MAX_TEXT_CHARS = 10_000

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


@dataclass
class ImageSource:
    """Images to embed: ``table`` (absolute ``path`` plus any other columns), ``ids`` (one string per row: the
    table's own ``id`` column, else the path as written) and ``origin`` (where they came from, for messages)."""

    table: pd.DataFrame
    ids: list[str]
    origin: str


def image_source(source: str | os.PathLike | pd.DataFrame | Sequence[str | os.PathLike],
                 root: str | os.PathLike | None = None) -> ImageSource:
    """An ``ImageSource`` from a folder (every image under it, sorted), a CSV with a ``path`` column (relative
    paths against ``root``, else the CSV's folder), a table, or a list of paths."""
    if isinstance(source, pd.DataFrame):
        return _from_table(source.copy(), Path(root) if root is not None else Path.cwd(), "a table")
    if isinstance(source, (list, tuple)):
        table = pd.DataFrame({schema.PATH: [str(p) for p in source]})
        return _from_table(table, Path(root) if root is not None else Path.cwd(), "a list of paths")
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DatasetError(f"folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        ids = [p.relative_to(path).as_posix() for p in files]
        return ImageSource(pd.DataFrame({schema.PATH: [str(p.resolve()) for p in files]}), ids, str(path))
    if path.is_file():
        try:
            table = pd.read_csv(path, dtype={"id": str})
        except Exception as exc:
            raise DatasetError(f"{path} is not a readable CSV ({exc}).") from None
        return _from_table(table, Path(root) if root is not None else path.parent.resolve(), str(path))
    raise ConfigError(f"{str(path)!r} is neither a CSV file nor a folder of images.")


def _from_table(table: pd.DataFrame, base: Path, origin: str) -> ImageSource:
    if schema.PATH not in table.columns:
        raise DatasetError(f"{origin} has no {schema.PATH!r} column; columns are "
                           f"{', '.join(map(str, table.columns))}. Add a column of image paths.")
    table = table.reset_index(drop=True)
    written = table[schema.PATH].astype(str)
    ids = table["id"].astype(str).tolist() if "id" in table.columns else written.tolist()
    base = base.resolve()
    table[schema.PATH] = [p if os.path.isabs(p) else str(base / p) for p in written]
    return ImageSource(table, ids, origin)


@dataclass
class TextSource:
    """Texts to embed: ``table`` (column ``text`` plus any other columns), ``ids`` (the table's own ``id``
    column, else the row number as a string) and ``origin`` (for messages)."""

    table: pd.DataFrame
    ids: list[str]
    origin: str


def text_source(source: str | os.PathLike | pd.DataFrame | Sequence[str]) -> TextSource:
    """A ``TextSource`` from a CSV with a ``text`` column, a table, or a list of strings."""
    if isinstance(source, pd.DataFrame):
        table, origin = source.copy(), "a table"
    elif isinstance(source, (list, tuple)):
        table, origin = pd.DataFrame({schema.TEXT: list(source)}, dtype=object), "a list of texts"  # None: empty
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            raise ConfigError(f"{str(path)!r} is a folder; texts come from a CSV file with a {schema.TEXT!r} column.")
        if not path.is_file():
            raise ConfigError(f"{str(path)!r} is not a CSV file (texts come from a CSV with a {schema.TEXT!r} "
                              "column).")
        try:
            table = pd.read_csv(path, dtype={"id": str, schema.TEXT: str}, keep_default_na=False,
                                na_values={schema.TEXT: []})
        except Exception as exc:
            raise DatasetError(f"{path} is not a readable CSV ({exc}).") from None
        origin = str(path)
    if schema.TEXT not in table.columns:
        raise DatasetError(f"{origin} has no {schema.TEXT!r} column; columns are "
                           f"{', '.join(map(str, table.columns))}. The model takes texts: add a column of texts.")
    table = table.reset_index(drop=True)
    table[schema.TEXT] = table[schema.TEXT].fillna("").astype(str)
    ids = table["id"].astype(str).tolist() if "id" in table.columns else [str(i) for i in range(len(table))]
    return TextSource(table, ids, origin)


def text_problem(text: Any) -> str | None:
    """Why ``text`` cannot be embedded (not a string, blank, too long), or None."""
    if not isinstance(text, str):
        return f"not a text ({type(text).__name__})"
    if not text.strip():
        return "empty text"
    if len(text) > MAX_TEXT_CHARS:
        return f"text of {len(text):,} characters, over the limit of {MAX_TEXT_CHARS:,}"
    return None


@dataclass
class Embedded:
    """What an embedding run produced: ``embeddings`` (float32, one row per readable item), ``rows`` (the
    source row of each embedding) and ``failed`` (``(row, message)`` of every item that could not be read)."""

    embeddings: np.ndarray
    rows: np.ndarray
    failed: list[tuple[int, str]]


def resolve_device(accelerator: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda, else mps, else cpu; ``cpu``/``cuda``/``gpu``/``mps`` as named (an error if absent)."""
    if isinstance(accelerator, torch.device):
        return accelerator
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if accelerator in ("auto", "mps") and mps is not None and mps.is_available():
        return torch.device("mps")
    if accelerator in ("gpu", "cuda", "mps"):
        raise ConfigError(f"accelerator: {accelerator!r} is not available on this machine; use cpu or auto.")
    if accelerator not in ("auto", "cpu"):
        raise ConfigError(f"accelerator: {accelerator!r} is not one of auto, cpu, cuda (gpu), mps.")
    return torch.device("cpu")


_BF16 = ("bf16-mixed", "bf16-true", "bf16")


def _cpu_has_bf16() -> bool:
    from lookalike.retrieval.bounds import native_bf16_matmul

    return native_bf16_matmul()


def runnable_precision(device: torch.device, precision: Any) -> Any:
    """``precision``, or ``"32"`` for a bf16 precision on a CPU without bf16 units (AMX / AVX512-BF16): there
    bf16 is emulated, 5-20x slower than fp32 for a ResNet-18 or EfficientNet-Lite step (docs/recipes.md)."""
    if device.type == "cpu" and precision in _BF16 and not _cpu_has_bf16():
        return "32"
    return precision


def autocast_for(device: torch.device, precision: Any) -> contextlib.AbstractContextManager:
    """The autocast context of a Lightning-style precision name on ``device`` (no-op for 32-bit)."""
    if precision in ("bf16-mixed", "bf16-true", "bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision in ("16-mixed", 16, "16-true", "16") and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


class _SafeItems:
    """``items[i]`` -> ``{"input", "row", "error"}``: a failure to read item i becomes an error record."""

    def __init__(self, paths: list[str], bboxes: list, transform: Callable | None):
        self.paths, self.bboxes, self.transform = paths, bboxes, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        try:
            return {"input": _prepare(read_image_array(self.paths[i], self.bboxes[i]), self.transform),
                    "row": i, "error": None}
        except Exception as exc:  # unreadable or corrupt image: reported, not fatal
            return {"input": None, "row": i, "error": f"{type(exc).__name__}: {exc}"}


def _prepare(pixels: np.ndarray, transform: Callable | None) -> torch.Tensor:
    """uint8 HxWx3 pixels -> the model input, exactly as the datasets hand an image to a transform."""
    image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1))
    if transform is None:
        return image.as_subclass(torch.Tensor).float().div_(255)
    return transform(image).as_subclass(torch.Tensor)


def _collate(items: list[dict]) -> dict:
    good = [it for it in items if it["error"] is None]
    return {
        "input": torch.stack([it["input"] for it in good]) if good else None,
        "rows": [it["row"] for it in good],
        "failed": [(it["row"], it["error"]) for it in items if it["error"] is not None],
    }


class Embedder:
    """A model (an extractor, or any callable from an image batch to embeddings), its input transform, a device
    and a precision: ``embed_images`` for images in memory, ``embed_source`` for files. A bf16 precision on a
    CPU without bf16 units runs in fp32 (emulated bf16 is slower there, measured in benchmarks/RESULTS.md)."""

    def __init__(self, model: torch.nn.Module | Callable, transform: Callable | None = None, *,
                 device: str | torch.device = "auto", precision: Any = "32", channels_last: bool = False,
                 batch_size: int = 64, num_workers: int = 0) -> None:
        self.model = model
        self.transform = transform
        self.precision = precision
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        is_module = isinstance(model, torch.nn.Module)
        self.device = resolve_device(device) if is_module else torch.device("cpu")
        self.precision = runnable_precision(self.device, precision)
        if is_module:
            model.to(self.device).eval()
            if channels_last:
                model.to(memory_format=self.layout)

    @property
    def modality(self) -> str:
        """"text" when the model takes texts (``model.modality``), else "image"."""
        return "text" if getattr(self.model, "modality", "image") == "text" else "image"

    def _require(self, modality: str) -> None:
        if self.modality != modality:
            raise DatasetError(f"this model takes {self.modality}s, not {modality}s: "
                               + ("search it with texts (a CSV with a 'text' column, or strings)."
                                  if self.modality == "text" else "search it with images."))

    @property
    def dim(self) -> int | None:
        """The embedding size when the model declares one (``feat_dim``)."""
        value = getattr(self.model, "feat_dim", None)
        return int(value) if value is not None else None

    def embed_batch(self, batch: torch.Tensor | dict) -> np.ndarray:
        """A transformed image batch (B, C, H, W), or a text batch dict (input_ids, attention_mask) -> float32
        embeddings (B, dim)."""
        if isinstance(batch, dict):
            batch = {key: value.to(self.device) for key, value in batch.items()}
        else:
            batch = batch.to(self.device).contiguous(memory_format=self.layout)
        with torch.inference_mode(), autocast_for(self.device, self.precision):
            out = self.model(batch)
        if isinstance(out, torch.Tensor):
            out = out.float().cpu().numpy()
        return np.asarray(out, dtype=np.float32)

    def embed_texts(self, texts: Iterable[str]) -> np.ndarray:
        """Texts -> float32 embeddings, in order (tokenised by the model's ``encode``, padded per batch). An
        empty, blank or too long text raises `DatasetError` naming it."""
        self._require("text")
        texts = list(texts)
        for i, text in enumerate(texts):
            problem = text_problem(text)
            if problem is not None:
                raise DatasetError(f"text {i}: {problem}; give a non-empty text of at most {MAX_TEXT_CHARS:,} "
                                   "characters.")
        if not texts:
            return np.zeros((0, self.dim or 0), np.float32)
        chunks = [self.embed_batch(self.model.encode(texts[i:i + self.batch_size]))
                  for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(chunks)

    def embed_images(self, images: Iterable[Image.Image | np.ndarray]) -> np.ndarray:
        """Images in memory (PIL images in any mode, or uint8 HxWx3 arrays) -> float32 embeddings, in order."""
        self._require("image")
        inputs = [_prepare(to_rgb_array(im) if isinstance(im, Image.Image) else im, self.transform)
                  for im in images]
        if not inputs:
            return np.zeros((0, self.dim or 0), np.float32)
        chunks = [self.embed_batch(torch.stack(inputs[i:i + self.batch_size]))
                  for i in range(0, len(inputs), self.batch_size)]
        return np.concatenate(chunks)

    def embed_source(self, source: ImageSource | TextSource | str | os.PathLike | pd.DataFrame | Sequence[str],
                     progress: bool = False) -> Embedded:
        """Every image of ``source`` (see ``image_source``), or every text for a text model (see
        ``text_source``); unreadable images and empty or too long texts land in ``failed``."""
        if isinstance(source, (ImageSource, TextSource)):  # a source of the other modality: one clear message
            self._require("image" if isinstance(source, ImageSource) else "text")
        if self.modality == "text":
            return self._embed_text_source(source if isinstance(source, TextSource) else text_source(source))
        if not isinstance(source, ImageSource):
            source = image_source(source)
        items = _SafeItems(source.table[schema.PATH].tolist(), row_bboxes(source.table), self.transform)
        loader = DataLoader(items, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                            collate_fn=_collate)
        if progress:
            from tqdm import tqdm

            loader = tqdm(loader, desc="embedding", unit="batch", leave=False)
        chunks: list[np.ndarray] = []
        rows: list[int] = []
        failed: list[tuple[int, str]] = []
        for batch in loader:
            failed += batch["failed"]
            if batch["input"] is not None:
                chunks.append(self.embed_batch(batch["input"]))
                rows += batch["rows"]
        dim = chunks[0].shape[1] if chunks else (self.dim or 0)
        embeddings = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
        return Embedded(embeddings, np.asarray(rows, dtype=np.int64), failed)

    def _embed_text_source(self, source: TextSource) -> Embedded:
        texts = source.table[schema.TEXT].tolist()
        problems = [text_problem(t) for t in texts]
        failed = [(i, p) for i, p in enumerate(problems) if p is not None]
        rows = np.asarray([i for i, p in enumerate(problems) if p is None], dtype=np.int64)
        embeddings = self.embed_texts([texts[i] for i in rows.tolist()])
        return Embedded(embeddings, rows, failed)
