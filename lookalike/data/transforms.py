"""Image transform presets by name, on torchvision.transforms.v2.

Input: a PIL image, a uint8 CxHxW tensor / `tv_tensors.Image` (what `ImageDataset` hands over) or a uint8
HxWx3 numpy array. Output: a plain float32 CxHxW tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from lookalike.errors import LookalikeError, unknown_choice

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TRANSFORM_PRESETS", "CROP_RATIO", "get_transforms", "denormalize",
           "random_resized_crop_maps"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _PadToSquare(torch.nn.Module):
    """Pads the shorter side with white so the image becomes square (keeps the aspect ratio on resize)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        if height == width:
            return image
        side = max(height, width)
        left, top = (side - width) // 2, (side - height) // 2
        fill = 255 if image.dtype == torch.uint8 else 1.0
        return v2.functional.pad(image, [left, top, side - width - left, side - height - top], fill=fill)


#: aspect ratios (width / height) of the `train` preset's random resized crops
CROP_RATIO = (0.8, 1.25)


def _normalise() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD), v2.ToPureTensor()]


def _train(image_size: int, scale: tuple[float, float] = (0.6, 1.0), hflip: float = 0.5,
           jitter: float = 0.3, hue: float | None = None, rotation: float = 0.0) -> v2.Compose:
    """``jitter``: brightness / contrast / saturation strength; ``hue``: hue shift (None = jitter / 3; 0 keeps
    colours, for data where colour tells labels apart); ``rotation``: random rotation up to this many degrees."""
    hue = min(jitter / 3, 0.5) if hue is None else hue
    steps: list = [v2.ToImage(), _PadToSquare()]
    if rotation > 0:
        steps.append(v2.RandomRotation(rotation, fill=255))
    steps += [v2.RandomResizedCrop(image_size, scale=scale, ratio=CROP_RATIO, antialias=True),
              v2.RandomHorizontalFlip(hflip)]
    if jitter > 0 or hue > 0:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=hue))
    return v2.Compose([*steps, *_normalise()])


def _val(image_size: int) -> v2.Compose:
    return v2.Compose([v2.ToImage(), _PadToSquare(), v2.Resize((image_size, image_size), antialias=True),
                       *_normalise()])


def _to_tensor(image_size: int | None = None) -> v2.Compose:
    """Floats in [0, 1]; padded to a square and resized when `image_size` is given, else the original size."""
    steps: list = [v2.ToImage()]
    if image_size is not None:
        steps += [_PadToSquare(), v2.Resize((image_size, image_size), antialias=True)]
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()])


TRANSFORM_PRESETS: dict[str, Callable[..., v2.Compose]] = {
    "train": _train,        # augmentations for training
    "val": _val,            # pad to square, resize, normalise
    "to_tensor": _to_tensor,  # float in [0, 1], no normalisation
}


def get_transforms(name: str, image_size: int = 224, **kwargs) -> Callable:
    """The transform preset `name` for square inputs of `image_size`; `kwargs` go to the preset.

    "train": pad to square, random resized crop (scale 0.6-1), horizontal flip, colour jitter, ImageNet
    normalisation. "val": pad to square (white), resize, normalise. "to_tensor": pad, resize, floats in [0, 1].
    "none": floats in [0, 1] at the original size.
    """
    if name == "none":
        return _to_tensor(None)
    if name not in TRANSFORM_PRESETS:
        raise LookalikeError(unknown_choice("transforms preset", name, [*TRANSFORM_PRESETS, "none"]))
    return TRANSFORM_PRESETS[name](image_size, **kwargs)


def denormalize(tensor: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation: back to [0, 1] for pictures."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    return (tensor * std + mean).clamp(0, 1)


def random_resized_crop_maps(maps: torch.Tensor, scale: tuple[float, float] = (0.6, 1.0),
                             ratio: tuple[float, float] = CROP_RATIO, attempts: int = 10) -> torch.Tensor:
    """One random resized crop per map of a batch (B, C, H, W), resampled to (H, W) by one bilinear grid_sample.

    The crops follow `v2.RandomResizedCrop`'s distribution for square inputs: up to ``attempts`` draws of an area
    fraction (uniform in ``scale``) and a width/height ratio (log-uniform in ``ratio``), the first crop that fits
    kept, else the whole map; its position uniform where it fits. Draws from torch's global RNG, which the
    training loop seeds per epoch."""
    import math

    import torch.nn.functional as F

    b = maps.shape[0]
    area = torch.empty(b, attempts).uniform_(float(scale[0]), float(scale[1]))
    aspect = torch.exp(torch.empty(b, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1])))
    width, height = (area * aspect).sqrt(), (area / aspect).sqrt()
    fits = (width <= 1) & (height <= 1)
    first = fits.float().argmax(dim=1, keepdim=True)  # the first attempt that fits (0 when none does)
    found = fits.any(dim=1)
    width = torch.where(found, width.gather(1, first).squeeze(1), torch.ones(b))
    height = torch.where(found, height.gather(1, first).squeeze(1), torch.ones(b))
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = width, height  # the crop's half-sides, in [-1, 1] coordinates
    theta[:, 0, 2] = (torch.rand(b) * 2 - 1) * (1 - width)  # its centre, anywhere the crop fits
    theta[:, 1, 2] = (torch.rand(b) * 2 - 1) * (1 - height)
    grid = F.affine_grid(theta.to(maps.device, maps.dtype), list(maps.shape), align_corners=False)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
