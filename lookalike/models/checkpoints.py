"""Saving and loading weights safely: atomic writes, and loads that never execute code from the file.

`.safetensors` files go through safetensors; anything else through `torch.load(weights_only=True)`, which
refuses pickles that would run code. Lightning checkpoints (weights under "state_dict") are accepted.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from lookalike.errors import CheckpointError

__all__ = ["save_weights", "load_weights", "load_into"]

_SHOWN = 10


def save_weights(model_or_state_dict: nn.Module | Mapping[str, Tensor], path: str | os.PathLike) -> Path:
    """Write weights atomically (temporary file + rename): safetensors for `.safetensors`, else torch.save."""
    path = Path(path)
    state = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, tmp)
        else:
            torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _strip_prefix(state: dict[str, Tensor], prefix: str | None) -> dict[str, Tensor]:
    if prefix:
        picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not picked:
            raise CheckpointError(f"no weights start with the prefix {prefix!r}; the first keys are "
                                  f"{', '.join(list(state)[:5])}")
        return picked
    return state


def load_weights(path: str | os.PathLike, prefix: str | None = None) -> dict[str, Tensor]:
    """The state dict stored in `path` (optionally only the keys under `prefix`, with the prefix removed)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects that would run code when loaded ({reason}). "
            "Only plain weights are loaded; re-save it as a state dict (torch.save(model.state_dict(), ...)) "
            "from a trusted environment."
        ) from None
    except Exception as error:  # torch and safetensors raise many types for a damaged file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({reason}); the file is truncated, corrupt or "
                              "not a weights file: re-download or re-save it.") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors; save one with "
                              "lookalike.models.checkpoints.save_weights(model, path)")
    return _strip_prefix(dict(state), prefix)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def load_into(model: nn.Module, state_or_path: Mapping[str, Tensor] | str | os.PathLike, strict: bool = True) -> None:
    """Load weights into `model`; a mismatch names the missing, unexpected and wrongly shaped keys."""
    source = "the given state dict"
    if isinstance(state_or_path, (str, os.PathLike)):
        source = str(state_or_path)
        state = load_weights(state_or_path)
    else:
        state = dict(state_or_path)
    own = model.state_dict()
    if strict and not (set(state) & set(own)):
        for prefix in ("extractor.", "model.", "module."):
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                break
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if strict and missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatch(es): {_listing(wrong_shape)}")
    if problems:
        raise CheckpointError(f"checkpoint {source} does not match {type(model).__name__}: " + "; ".join(problems)
                              + ". Check that the model is built with the same arguments as when it was saved.")
    model.load_state_dict(state, strict=strict)
