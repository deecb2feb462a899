"""An index as one Parquet file (``id``, ``embedding``, then every manifest column), the columnar format vector
databases (Qdrant, Milvus, LanceDB, ...) ingest, and back. ``embedding`` is a fixed-size list of float32; the
schema metadata holds the index description (``lookalike`` key: backend, distance, model identity).
Needs pyarrow: ``pip install lookalike[parquet]``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lookalike.errors import LookalikeError
from lookalike.io import atomic_path, to_jsonable

__all__ = ["export_parquet", "read_parquet", "import_pyarrow"]

_ROWS_PER_GROUP = 65_536
META_KEY = b"lookalike"


def import_pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise LookalikeError("Parquet export needs pyarrow: pip install 'lookalike[parquet]'.") from exc
    return pyarrow


def export_parquet(index, path: str | os.PathLike) -> Path:
    """Write every item of ``index`` (a `SearchIndex`) to ``path``, atomically, in row groups of 65,536."""
    pa = import_pyarrow()
    import pyarrow.parquet as pq

    path = Path(path).expanduser()
    if path.suffix.lower() != ".parquet":
        raise LookalikeError(f"export: {path} should end in .parquet.")
    manifest = index.manifest
    embeddings = index.embeddings
    dim = embeddings.shape[1]
    columns = [c for c in manifest.columns if c != "id"]
    meta = {k: v for k, v in index.info.items() if k not in ("files",)}
    info = json.dumps(to_jsonable(meta), allow_nan=True).encode("utf-8")
    with atomic_path(path, suffix=".parquet") as tmp:
        writer = None
        for start in range(0, max(len(manifest), 1), _ROWS_PER_GROUP):
            part = manifest.iloc[start:start + _ROWS_PER_GROUP]
            vectors = np.ascontiguousarray(embeddings[start:start + _ROWS_PER_GROUP], dtype=np.float32)
            arrays = {"id": pa.array(part["id"].astype(str).tolist(), pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)}
            for column in columns:
                arrays[str(column)] = _column(pa, part[column])
            table = pa.table(arrays)
            if writer is None:
                schema = table.schema.with_metadata({META_KEY: info})
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(table.cast(writer.schema))
        writer.close()
    return path


def _column(pa: Any, values: pd.Series) -> Any:
    """A manifest column as an Arrow array: numbers and booleans keep their type, anything else is a string
    (missing values are nulls)."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return pa.array(values.to_numpy(), from_pandas=True)
    return pa.array([None if (v is None or (isinstance(v, float) and np.isnan(v))) else str(v) for v in values],
                    pa.string())


def read_parquet(path: str | os.PathLike) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """(embeddings float32 (N, dim), manifest with ``id`` first, the index description) of an exported file."""
    import_pyarrow()
    import pyarrow.parquet as pq

    table = pq.read_table(Path(path).expanduser())
    embedding = table.column("embedding").combine_chunks()
    dim = embedding.type.list_size
    vectors = embedding.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    manifest = table.drop(["embedding"]).to_pandas()
    meta = table.schema.metadata or {}
    info = json.loads(meta[META_KEY]) if META_KEY in meta else {}
    return vectors, manifest, info
