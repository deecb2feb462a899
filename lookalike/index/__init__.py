"""Search index (layer 4, beside postprocess): embeddings plus their manifest, searchable by embeddings or images,
changed item by item with a write-ahead journal, saved atomically; near-duplicate grouping and Parquet export.

`SearchIndex` is the Python face of `lookalike index` / `search` / `dedup` / `export-index` and of the search
service. See docs/search.md for the folder layout and the guarantees.
"""

from lookalike.index.errors import (DuplicateItemError, IndexFormatError, ModelChangedError, NoEmbedderError,
                                    SearchIndexError, UnknownItemError)
from lookalike.index.backends import BACKENDS
from lookalike.index.search_index import FORMAT, INDEX_FILE, Hit, SearchIndex, read_info

__all__ = ["SearchIndex", "Hit", "BACKENDS", "FORMAT", "INDEX_FILE", "read_info", "SearchIndexError",
           "UnknownItemError", "DuplicateItemError", "IndexFormatError", "NoEmbedderError", "ModelChangedError"]
