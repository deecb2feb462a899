"""Errors of the search index: one family under `SearchIndexError` (a `LookalikeError`), so front doors can map
each kind to its answer (the service: unknown item -> 404, duplicate -> 409, damaged folder -> 500 with a
message)."""

from __future__ import annotations

from lookalike.errors import LookalikeError

__all__ = ["SearchIndexError", "UnknownItemError", "DuplicateItemError", "IndexFormatError", "NoEmbedderError",
           "ModelChangedError"]


class SearchIndexError(LookalikeError):
    """Base of every search-index problem."""


class UnknownItemError(SearchIndexError):
    """An id that the index does not hold (or an item without an image file)."""

    def __init__(self, message: str, ids: list[str] | None = None):
        super().__init__(message)
        self.ids = list(ids or [])


class DuplicateItemError(SearchIndexError):
    """Ids that the index already holds, or that occur more than once in one request."""

    def __init__(self, message: str, ids: list[str] | None = None):
        super().__init__(message)
        self.ids = list(ids or [])


class IndexFormatError(SearchIndexError):
    """An index folder that is missing files, is damaged, or was written by something else."""


class NoEmbedderError(SearchIndexError):
    """Images were given to an index that has no embedder (built from embeddings alone)."""


class ModelChangedError(SearchIndexError):
    """The model file an index was built with is missing or differs from the one it was built with."""
