"""Errors of the export package, and the check that the optional ONNX packages are installed."""

from __future__ import annotations

import importlib
from types import ModuleType

from lookalike.errors import LookalikeError

__all__ = ["ExportError", "ParityError", "MissingPackageError", "require"]

#: the extra that installs every package export and the onnx runtime need
EXTRA = "lookalike[onnx]"


class ExportError(LookalikeError):
    """A model cannot be exported, or the exported file cannot be written or read."""


class ParityError(ExportError):
    """The exported model computes embeddings that differ from the torch model's beyond the tolerances."""


class MissingPackageError(ExportError):
    """An optional package that export or the onnx runtime needs is not installed."""


def require(*names: str, purpose: str) -> list[ModuleType]:
    """The imported modules ``names``; one MissingPackageError naming every missing one and the extra."""
    modules, missing = [], []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingPackageError(f"{purpose} needs {', '.join(missing)}, which "
                                  f"{'is' if len(missing) == 1 else 'are'} not installed: "
                                  f"pip install '{EXTRA}'")
    return modules
