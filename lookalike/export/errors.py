"""Errors of the export package, and the check that the optional ONNX packages are installed."""

from __future__ import annotations

from types import ModuleType

from lookalike.errors import LookalikeError
from lookalike.extras import MissingExtraError, require_all

__all__ = ["ExportError", "ParityError", "MissingPackageError", "require"]

class ExportError(LookalikeError):
    """A model cannot be exported, or the exported file cannot be written or read."""


class ParityError(ExportError):
    """The exported model computes embeddings that differ from the torch model's beyond the tolerances."""


class MissingPackageError(ExportError, MissingExtraError):
    """An optional package that export or the onnx runtime needs is not installed."""


def require(*names: str, purpose: str) -> list[ModuleType]:
    """The imported modules ``names``; one MissingPackageError naming every missing one and the extra."""
    return require_all(*names, feature=purpose, error=MissingPackageError)
