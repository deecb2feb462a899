"""Saving and loading weights safely: atomic writes, and loads that never execute code from the file.

`.safetensors` files go through safetensors; anything else through `torch.load(weights_only=True)`, which
refuses pickles that would run code. Lightning checkpoints (weights under "state_dict") are accepted, and so
are the key prefixes that wrappers add: `module.` (DDP), `_orig_mod.` (torch.compile), `extractor.` / `model.`
(a LightningModule's attribute).
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from lookalike.errors import CheckpointError
from lookalike.io import atomic_path

__all__ = ["save_weights", "load_weights", "load_into", "load_pretrained", "WRAPPER_PREFIXES"]

#: prefixes added by wrappers, removed whenever every key carries one (DDP, torch.compile)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 10


def save_weights(model_or_state_dict: nn.Module | Mapping[str, Tensor], path: str | os.PathLike) -> Path:
    """Write weights atomically (temporary file in the same folder, then rename): safetensors for a
    `.safetensors` suffix, else `torch.save` of a plain state dict (loadable with `weights_only=True`)."""
    path = Path(path).expanduser()
    state = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(f"cannot save weights to {path}: entries {_listing(not_tensors)} are not tensors; "
                              "pass a model or a state dict of tensors.")
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(_unshared(state), tmp)
        else:
            torch.save(state, tmp)
    return path


def _unshared(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """safetensors refuses tensors that share memory (tied weights): give each its own copy."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, value in state.items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset()) if value.numel() else (0, id(value))
        out[key] = value.clone() if ident in seen else value
        seen.add(ident)
    return out


def _torch_load_reason(error: Exception) -> tuple[bool, str]:
    """(refused because of code, one-line reason) from torch.load's long weights_only error message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line:
            return True, line
    for marker in ("Unsupported operand", "WeightsUnpickler error"):
        for line in lines:
            if marker in line:
                return False, line
    return False, lines[0] if lines else type(error).__name__


def _read(path: Path) -> tuple[dict[str, Tensor], bool]:
    """The raw state dict in `path` and whether it came from a Lightning checkpoint ("state_dict" inside)."""
    if not path.is_file():
        where = "it is a folder, not a file" if path.is_dir() else "no such file"
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {where}. Give the path of a weights file "
                              "(.pt / .pth / .safetensors) or of a run's checkpoints/best.ckpt.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            with warnings.catch_warnings():  # torch warns about pickle protocols before refusing such files
                warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused, reason = _torch_load_reason(error)
        if refused:
            raise CheckpointError(
                f"checkpoint {path} was refused: it holds Python objects that would run code when loaded "
                f"({reason}). Only plain weights are loaded; re-save the weights alone from a trusted environment "
                "with lookalike.models.save_weights(model, 'weights.safetensors')."
            ) from None
        raise CheckpointError(f"checkpoint {path} cannot be read ({reason}); the file is truncated, corrupt or "
                              "not a weights file: re-download or re-save it.") from None
    except Exception as error:  # torch and safetensors raise many types for a damaged file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read ({reason}); the file is truncated, corrupt or "
                              "not a weights file: re-download or re-save it.") from None
    lightning = isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping)
    if lightning:
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        what = "an empty state dict" if isinstance(state, Mapping) and not state else "no state dict of tensors"
        raise CheckpointError(f"checkpoint {path} holds {what}; save weights with "
                              "lookalike.models.save_weights(model, path).")
    return {str(k): v for k, v in state.items()}, lightning


def _common_prefix(state: Mapping[str, Tensor]) -> str | None:
    """The first dotted component shared by every key ('extractor.'), or None."""
    heads = {k.split(".", 1)[0] for k in state if "." in k}
    if len(heads) == 1 and all("." in k for k in state):
        return heads.pop() + "."
    return None


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _strip_wrappers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    while True:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            return state
        state = _strip(state, prefix)


def load_weights(path: str | os.PathLike, prefix: str | None = None) -> dict[str, Tensor]:
    """The state dict stored in `path`, on the CPU, loaded without running code from the file.

    `prefix` keeps only the keys under it, with the prefix removed (e.g. "extractor." of a training run's
    `.ckpt`). Without it, wrapper prefixes (`module.`, `_orig_mod.`) are removed when every key has one, and
    for a Lightning checkpoint also the attribute prefix when every key shares it (`model.` of a module
    holding one model).
    """
    path = Path(path).expanduser()
    state, lightning = _read(path)
    state = _strip_wrappers(state)
    if prefix:
        picked = _strip(state, prefix)
        if not picked:
            heads = sorted({k.split(".", 1)[0] + "." for k in state if "." in k})
            raise CheckpointError(f"checkpoint {path}: no weights start with the prefix {prefix!r}; its keys start "
                                  f"with {', '.join(heads[:_SHOWN]) or 'no prefix'} (first keys: "
                                  f"{', '.join(list(state)[:3])}). Give one of those prefixes, or none.")
        return _strip_wrappers(picked)
    if lightning:
        common = _common_prefix(state)
        if common is not None:
            state = _strip_wrappers(_strip(state, common))
    return state


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown + (f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def _align(state: dict[str, Tensor], own: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """`state` re-keyed to the model: when few keys match as they are, the prefix under which most of the
    model's keys are found ('extractor.' of a run's checkpoint beside 'criterion.') is selected and removed."""
    direct = sum(k in own for k in state)
    if direct == len(own):
        return state, ""
    counts: Counter[str] = Counter()
    for key in state:
        for i, char in enumerate(key):
            if char == "." and key[i + 1:] in own:
                counts[key[: i + 1]] += 1
    if counts:
        prefix, found = counts.most_common(1)[0]
        if found > direct:
            return _strip(state, prefix), prefix
    return state, ""


def load_into(model: nn.Module, state_or_path: Mapping[str, Tensor] | str | os.PathLike, strict: bool = True) -> None:
    """Load weights (a state dict or a checkpoint file) into `model`.

    Keys are matched as they are, or under the one prefix that holds most of the model's keys (a training
    run's `.ckpt` holds `extractor.*` and `criterion.*`; DDP adds `module.`, torch.compile `_orig_mod.`).
    A mismatch raises `CheckpointError` naming the missing, unexpected (strict only) and wrongly shaped keys.
    """
    if isinstance(state_or_path, (str, os.PathLike)):
        source = f"checkpoint {state_or_path}"
        state, _ = _read(Path(state_or_path).expanduser())
    else:
        source = "the given state dict"
        state = dict(state_or_path)
    own = model.state_dict()
    state, prefix = _align(state, own)
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
        under = f" (keys read under the prefix {prefix!r})" if prefix else ""
        raise CheckpointError(f"{source} does not match {type(model).__name__}{under}: " + "; ".join(problems)
                              + ". Build the model with the same arguments as the one that was saved.")
    model.load_state_dict(state, strict=strict)


def _plain_backbone(model: nn.Module, state: Mapping[str, Tensor], own: Mapping[str, Tensor]
                    ) -> tuple[dict[str, Tensor], list[str]] | None:
    """`state` re-keyed by the model's `plain_key` (a torchvision / timm network's own key names), and the keys
    it leaves out (a classifier); None when the model has no such mapping or nothing of it matches."""
    plain_key = getattr(model, "plain_key", None)
    if plain_key is None:
        return None
    mapped: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in _strip_wrappers(dict(state)).items():
        target = plain_key(key)
        if target is None:
            dropped.append(key)
        else:
            mapped[target] = value
    return (mapped, dropped) if any(k in own for k in mapped) else None


def _pooling_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the model's lookalike pooling layers (GeM's learnable exponent)."""
    from lookalike.models.pooling import AvgPool, GeM

    return {f"{name}.{key}" if name else key for name, module in model.named_modules()
            if isinstance(module, (GeM, AvgPool)) for key in module.state_dict()}


def load_pretrained(model: nn.Module, state_or_path: Mapping[str, Tensor] | str | os.PathLike,
                    source: str | None = None) -> str:
    """Load weights into an extractor: its own checkpoint (every key, as `load_into`), or a plain backbone state
    dict (what `torchvision` / `timm` models' `state_dict()` hold) into its backbone, the rest (projection
    head) kept as initialised. Returns one line saying what was loaded and initialised ('' for a whole
    checkpoint); a file that fits neither raises `CheckpointError` naming the mismatched keys."""
    if isinstance(state_or_path, (str, os.PathLike)):
        source = source or f"checkpoint {state_or_path}"
        state, _ = _read(Path(state_or_path).expanduser())
    else:
        source = source or "the given state dict"
        state = dict(state_or_path)
    own = model.state_dict()
    aligned, _ = _align(state, own)
    whole = sum(k in own for k in aligned)
    plain = _plain_backbone(model, state, own)
    if plain is None or whole >= sum(k in own for k in plain[0]):
        load_into(model, state, strict=True) if source == "the given state dict" else _load_named(model, state, source)
        return ""
    mapped, dropped = plain
    ours = _pooling_keys(model)  # our pooling (GeM's p) is not in a network's own state dict: kept as initialised
    backbone = [k for k in own if k.startswith("backbone.") and k not in ours]
    missing = [k for k in backbone if k not in mapped]
    unexpected = [k for k in mapped if k not in own]
    wrong = [f"{k} {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}"
             for k in backbone if k in mapped and mapped[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} backbone key(s) missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} key(s) the backbone does not have: {_listing(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {_listing(wrong)}")
    if problems:
        raise CheckpointError(f"{source} read as a plain backbone state dict does not fit {type(model).__name__}: "
                              + "; ".join(problems) + ". Use weights of the same architecture.")
    model.load_state_dict({**own, **mapped}, strict=True)
    kept = [k for k in own if not k.startswith("backbone.") or k in ours]
    head = ", ".join(sorted({k.rsplit(".", 1)[0] for k in kept})) or "nothing"
    skipped = f"; left out {len(dropped)} key(s) of the file ({_listing(dropped)})" if dropped else ""
    return (f"{type(model).__name__}: loaded the backbone ({len(mapped)} tensors) from {source}; initialised "
            f"{head} ({len(kept)} tensor(s)){skipped}")


def _load_named(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """`load_into` with the error naming `source` instead of 'the given state dict'."""
    try:
        load_into(model, state, strict=True)
    except CheckpointError as error:
        raise CheckpointError(str(error).replace("the given state dict", source, 1)) from None
