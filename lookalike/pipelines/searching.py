"""``lookalike search`` (the top-k of query images in an index, as a table, JSON or CSV) and
``lookalike export-index`` (an index as a Parquet file)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from lookalike.errors import ConfigError, DatasetError

__all__ = ["search", "export_index", "FORMATS"]

FORMATS = ("table", "json", "csv")


def _query_paths(items: Sequence[str]) -> list[tuple[str, str]]:
    """(path as shown, absolute path) of every query image: files as given, folders expanded (sorted)."""
    from lookalike.inference import image_source

    out = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = image_source(path)
            out += [(str(path / i), p) for i, p in zip(found.ids, found.table["path"])]
        elif path.is_file():
            out.append((item, str(path.resolve())))
        else:
            raise ConfigError(f"search: {item!r} is neither an image file nor a folder of images.")
    return out


def search(index_dir: str | Path, queries: Sequence[str], *, top_k: int = 5, fmt: str = "table",
           device: str = "cpu") -> str:
    """The ``top_k`` results of each query image (files or folders) in the index at ``index_dir``, formatted as
    ``fmt`` (table, json or csv). Unreadable query images are reported on stderr and left out."""
    from lookalike.errors import unknown_choice
    from lookalike.pipelines.indexing import open_index

    if fmt not in FORMATS:
        raise ConfigError(unknown_choice("format", fmt, FORMATS))
    if not queries:
        raise ConfigError("search: give at least one query image or folder after the index folder.")
    paths = _query_paths(queries)
    index = open_index(index_dir, device=device)
    if index.embedder is None:
        raise ConfigError(f"index {index_dir} was built from embeddings alone (no model in its index.json), so it "
                          "cannot embed query images; build it with `lookalike index`.")
    embedded = index.embedder.embed_source([p for _, p in paths])
    for row, message in embedded.failed:
        print(f"warning: {paths[row][0]} could not be read ({message}); skipped", file=sys.stderr)
    if len(embedded.rows) == 0:
        raise DatasetError("search: none of the query images could be read.")
    results = index.search(embedded.embeddings, top_k=top_k)
    shown = [paths[r][0] for r in embedded.rows.tolist()]
    records = [{"query": q, "rank": rank, "distance": hit.distance, **hit.row}
               for q, hits in zip(shown, results) for rank, hit in enumerate(hits, 1)]
    if fmt == "json":
        return json.dumps([{"query": q, "results": [{"id": h.id, "distance": h.distance, **h.row} for h in hits]}
                           for q, hits in zip(shown, results)], indent=2, default=str)
    import pandas as pd

    table = pd.DataFrame(records)
    if fmt == "csv":
        return table.to_csv(index=False).rstrip("\n")
    blocks = []
    for q in shown:
        part = table[table["query"] == q].drop(columns=["query"])
        blocks.append(f"query {q}\n" + part.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return "\n\n".join(blocks)


def export_index(index_dir: str | Path, out: str | Path) -> Path:
    """Write the index at ``index_dir`` to the Parquet file ``out`` (id, embedding, manifest columns)."""
    from lookalike.index import SearchIndex
    from lookalike.index.export import export_parquet

    index = SearchIndex.load(index_dir)
    path = export_parquet(index, out)
    print(f"{len(index)} items (dimension {index.dim}) of {index_dir} -> {path}")
    return path
