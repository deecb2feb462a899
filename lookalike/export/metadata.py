"""What an exported file records about itself (input size, normalisation, L2 normalisation, where it came
from), as ONNX ``metadata_props`` inside the file and as a small JSON beside it; and the preprocessing that
metadata describes, built from the transform presets of ``lookalike.data.transforms``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lookalike.export.errors import ExportError

__all__ = ["FORMAT", "PREFIX", "INPUT_NAME", "OUTPUT_NAME", "PREPROCESS", "OnnxMetadata", "metadata_path",
           "parity_path", "preprocess_transform"]

FORMAT = "lookalike-onnx/1"
PREFIX = "lookalike."
INPUT_NAME, OUTPUT_NAME = "images", "embeddings"
#: the preprocessing every lookalike export expects, for users outside Python
PREPROCESS = ("RGB (transparency composited over white); pad the shorter side with white to a square; resize to "
              "image_size x image_size (bilinear, antialiased); scale to [0, 1]; (x - mean) / std per channel; "
              "float32 NCHW")


def metadata_path(model_path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.json`` (the metadata beside the file)."""
    return Path(model_path).with_suffix(".json")


def parity_path(model_path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.parity.json`` (the parity report beside the file)."""
    return Path(model_path).with_suffix(".parity.json")


@dataclass
class OnnxMetadata:
    """The facts a runtime needs to feed an exported extractor and to trust its output."""

    image_size: int
    mean: list[float]
    std: list[float]
    feat_dim: int
    l2_normalised: bool | None = None  # None: not an Extractor, unknown
    exporter: str = "dynamo"
    opset: int | None = None
    source: dict = field(default_factory=dict)  # extractor block, checkpoint and its sha256, ...
    versions: dict = field(default_factory=dict)
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    preprocess: str = PREPROCESS
    format: str = FORMAT

    def __post_init__(self) -> None:
        self.image_size = int(self.image_size)
        self.mean, self.std = _channels(self.mean, "mean"), _channels(self.std, "std")
        if self.image_size < 1:
            raise ExportError(f"image_size must be a positive integer, got {self.image_size}.")
        if any(s <= 0 for s in self.std):
            raise ExportError(f"std must be positive per channel, got {self.std}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_props(self) -> dict[str, str]:
        """``metadata_props`` of the ONNX file: ``lookalike.<field>`` -> the field as JSON."""
        return {PREFIX + k: json.dumps(v, sort_keys=True) for k, v in self.to_dict().items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], origin: str) -> "OnnxMetadata":
        """Reads ``to_props``'s output back; ExportError when the file was not exported by lookalike."""
        fields = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
        needed = ("image_size", "mean", "std", "feat_dim")
        missing = [k for k in needed if k not in fields]
        if missing:
            raise ExportError(
                f"{origin} has no lookalike metadata ({', '.join(PREFIX + k for k in missing)} missing), so its "
                "input size and normalisation are unknown: export it with `lookalike export`, or pass "
                "image_size, mean and std to onnx_embedder.")
        try:
            values = {k: json.loads(v) for k, v in fields.items()}
        except json.JSONDecodeError as exc:
            raise ExportError(f"{origin}: lookalike metadata is not valid JSON ({exc}).") from None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


def _channels(values: Sequence[float], name: str) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ExportError(f"{name} must be 3 numbers (one per RGB channel), got {values!r}.") from None
    if len(out) != 3:
        raise ExportError(f"{name} must be 3 numbers (one per RGB channel), got {values!r}.")
    return out


def preprocess_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """The ``val`` preset at ``image_size`` with the normalisation ``mean`` / ``std``: exactly the preset when
    they are the ImageNet statistics it uses, else its unnormalised twin (``to_tensor``) then that Normalize."""
    from torchvision.transforms import v2

    from lookalike.data.transforms import IMAGENET_MEAN, IMAGENET_STD, get_transforms

    mean, std = _channels(mean, "mean"), _channels(std, "std")
    if mean == list(IMAGENET_MEAN) and std == list(IMAGENET_STD):
        return get_transforms("val", int(image_size))
    base = get_transforms("to_tensor", int(image_size))
    if mean == [0.0, 0.0, 0.0] and std == [1.0, 1.0, 1.0]:
        return base
    return v2.Compose([base, v2.Normalize(mean, std)])
