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


def _query_texts(items: Sequence[str]) -> list[tuple[str, str]]:
    """(text as shown, text) of every query of an index of texts: each argument is a text, except a CSV file,
    whose ``text`` column gives one query per row."""
    from lookalike.inference import text_source

    out = []
    for item in items:
        path = Path(item).expanduser()
        if item.lower().endswith(".csv") and path.is_file():
            out += [(t, t) for t in text_source(path).table["text"].tolist()]
        else:
            out.append((item, item))
    return out


def search(index_dir: str | Path, queries: Sequence[str], *, top_k: int = 5, fmt: str = "table",
           device: str = "cpu") -> str:
    """The ``top_k`` results of each query image (files or folders) in the index at ``index_dir``, formatted as
    ``fmt`` (table, json or csv); for an index of texts each query is a text (or a CSV file with a ``text``
    column). Unreadable query images and empty texts are reported on stderr and left out."""
    from lookalike.errors import unknown_choice
    from lookalike.pipelines.indexing import open_index

    if fmt not in FORMATS:
        raise ConfigError(unknown_choice("format", fmt, FORMATS))
    if not queries:
        raise ConfigError("search: give at least one query image or folder (or query text, for an index of texts) "
                          "after the index folder.")
    index = open_index(index_dir, device=device)
    paths = _query_texts(queries) if index.holds_texts else _query_paths(queries)
    if index.embedder is None:
        raise ConfigError(f"index {index_dir} was built from embeddings alone (no model in its index.json), so it "
                          "cannot embed queries; build it with `lookalike index`.")
    if index.holds_texts:
        from lookalike.inference import text_source

        embedded = index.embedder.embed_source(text_source([text for _, text in paths]))
    else:
        embedded = index.embedder.embed_source([p for _, p in paths])
    for row, message in embedded.failed:
        print(f"warning: {paths[row][0]} could not be read ({message}); skipped", file=sys.stderr)
    if len(embedded.rows) == 0:
        raise DatasetError(f"search: none of the query {'texts' if index.holds_texts else 'images'} could be "
                           "embedded.")
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
