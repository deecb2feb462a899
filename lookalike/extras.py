"""Optional packages: one import helper that names the extra to install when a package is missing.

Every optional dependency of lookalike is imported through `require`, so a missing one always ends in the same
one-line message: what needs it and the exact ``pip install "lookalike[extra]"`` command. Layer 0.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from lookalike.errors import LookalikeError

__all__ = ["EXTRAS", "MissingExtraError", "require", "require_all", "extra_of", "install_hint", "is_available"]

#: importable module -> the lookalike extra that installs it (pyproject.toml [project.optional-dependencies])
EXTRAS: dict[str, str] = {
    "timm": "timm",
    "faiss": "faiss",
    "tensorboard": "tensorboard",
    "mlflow": "mlflow",
    "wandb": "wandb",
    "pyarrow": "parquet",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "transformers": "texts",
}


class MissingExtraError(LookalikeError):
    """An optional package that a requested feature needs is not installed."""


def extra_of(module: str) -> str | None:
    """The lookalike extra that installs ``module`` (its top-level package), or None."""
    return EXTRAS.get(module.split(".")[0])


def install_hint(module: str) -> str:
    extra = extra_of(module)
    return f'pip install "lookalike[{extra}]"' if extra else f"pip install {module.split('.')[0]}"


def is_available(module: str) -> bool:
    """True when ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature`` (e.g. "the faiss backend"), or raise `MissingExtraError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        raise MissingExtraError(f"{feature} needs the package {missing.split('.')[0]!r}, which is not installed: "
                                f"{install_hint(missing)}") from None


def require_all(*modules: str, feature: str, error: type[LookalikeError] = MissingExtraError) -> list[ModuleType]:
    """Import every module of ``modules``; one error naming all the missing ones and the extras that install them."""
    imported, missing = [], []
    for module in modules:
        try:
            imported.append(importlib.import_module(module))
        except ImportError:
            missing.append(module)
    if missing:
        hints = ", ".join(dict.fromkeys(install_hint(m) for m in missing))
        raise error(f"{feature} needs {', '.join(repr(m) for m in missing)}, which "
                    f"{'is' if len(missing) == 1 else 'are'} not installed: {hints}")
    return imported
