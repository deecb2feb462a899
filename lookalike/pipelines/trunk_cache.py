"""``cache_frozen_trunk``: the frozen first stages of the extractor (``freeze_layers``) run once per training image
instead of once per step.

At the first training step (inside the training clock, so ``max_minutes`` counts it) the frozen trunk encodes every
training image, resized as for validation, into feature maps kept in memory (fp16). Each step then takes its rows'
maps, applies the training transform's random resized crops to the maps (`random_resized_crop_maps`: the same crop
distribution, resampled on the maps instead of the pixels) and runs only the rest of the network, up to what the
loss sees (`Extractor.training_features`). Validation, checkpoints and everything downstream see the whole
extractor, unchanged. Pixel-level augmentations (flips, rotations, colour jitter) have no equivalent on maps and
are refused by `check_cacheable_transforms`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from lookalike.data import schema
from lookalike.data.datasets import LabelledRows
from lookalike.errors import ConfigError

__all__ = ["FrozenTrunkCache", "RowsOnly", "build_trunk_cache", "check_cacheable_transforms", "crop_scale"]

#: the cache may take at most this share of the machine's memory
MEMORY_SHARE = 0.5


class RowsOnly(LabelledRows):
    """The training rows without their images: ``input`` is the row position, which `FrozenTrunkCache` maps to
    the row's cached feature map."""

    def __init__(self, table: Any) -> None:
        super().__init__(table)
        self.paths: list[str] = self.table[schema.PATH].astype(str).tolist()

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        return self.item(index, index, schema.PATH_KEY, self.paths[index])


def _train_args(transforms_train: Mapping) -> dict:
    """The `train` preset's arguments with its defaults filled in."""
    import inspect

    from lookalike.data.transforms import _train

    defaults = {name: p.default for name, p in inspect.signature(_train).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **(transforms_train.get("args") or {})}


def crop_scale(transforms_train: Mapping) -> tuple[float, float]:
    """The area range of the `train` preset's random resized crops."""
    low, high = _train_args(transforms_train)["scale"]
    return float(low), float(high)


def check_cacheable_transforms(cfg: Mapping) -> None:
    """ConfigError unless the training transform is the `train` preset doing nothing but random resized crops
    (which `random_resized_crop_maps` reproduces on maps: its flips, colour jitter and rotations act on pixels) and
    the validation transform, which encodes the maps, is the `val` preset."""
    block = cfg["transforms_train"]
    args = _train_args(block) if block.get("name") == "train" else {}
    hue = args.get("hue") if args.get("hue") is not None else args.get("jitter", 0) / 3
    pixel_level = {k: v for k, v in (("hflip", args.get("hflip")), ("jitter", args.get("jitter")), ("hue", hue),
                                     ("rotation", args.get("rotation"))) if v}
    if block.get("name") != "train" or pixel_level:
        what = f"the `{block.get('name')}` transform" if block.get("name") != "train" else \
            "the `train` preset with " + ", ".join(f"{k} {v:g}" for k, v in pixel_level.items())
        raise ConfigError(
            f"cache_frozen_trunk: the cached feature maps can only be cropped (random resized crops), but "
            f"transforms_train is {what}, which acts on pixels (the preset flips and jitters by default). Use "
            "transforms_train: {name: train, args: {hflip: 0.0, jitter: 0.0}} or cache_frozen_trunk: false.")
    if cfg["transforms_val"].get("name") != "val":
        raise ConfigError(f"cache_frozen_trunk: the maps are encoded from the `val` preset (pad, resize, normalise), "
                          f"the whole-image view the train preset crops from; transforms_val is "
                          f"{cfg['transforms_val'].get('name')!r}. Use transforms_val: val or "
                          "cache_frozen_trunk: false.")


class FrozenTrunkCache:
    """The frozen trunk's feature maps of every training image, built once; `features` turns a batch of row
    positions into the extractor's training features (its embeddings unless `embed_from`) of randomly cropped maps.
    Not a module: the trunk and the rest share the extractor's modules, which the LightningModule owns (and
    checkpoints) once."""

    #: the maps' storage type: half the memory of fp32, and rounding far below what training notices
    dtype = torch.float16

    def __init__(self, trunk: torch.nn.Module, rest: torch.nn.Module, images: Dataset, *,
                 scale: tuple[float, float], batch_size: int = 128, channels_last: bool = False) -> None:
        self.trunk, self.rest, self.images = trunk, rest, images
        self.scale, self.batch_size, self.channels_last = scale, int(batch_size), channels_last
        self.maps: torch.Tensor | None = None

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.no_grad()
    def build(self, device: torch.device) -> None:
        """Encode every training image with the trunk (eval mode), into maps on the CPU (`dtype`)."""
        started = time.perf_counter()
        self.trunk.eval()
        # its own generator: the DataLoader would otherwise draw a seed from the global RNG, which the epoch's
        # augmentations use, and a resumed run (which builds the cache again) would crop differently
        loader = DataLoader(self.images, batch_size=self.batch_size, shuffle=False, generator=torch.Generator())
        maps: torch.Tensor | None = None
        for batch in loader:
            out = self.trunk(self._layout(batch["input"].to(device))).to("cpu", self.dtype)
            if maps is None:
                maps = torch.empty((len(self.images), *out.shape[1:]), dtype=self.dtype)
                filled = 0
            maps[filled:filled + len(out)] = out
            filled += len(out)
        self.maps = maps
        shape = "x".join(str(s) for s in maps.shape[1:])
        size = maps.numel() * maps.element_size() / 2**20
        print(f"cache_frozen_trunk: {len(maps)} training images through the frozen stages once ({shape} maps, "
              f"{size:.0f} MiB) in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    def features(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Embeddings of the rows ``rows`` (positions in the training table) from randomly cropped cached maps."""
        from lookalike.data.transforms import random_resized_crop_maps

        if self.maps is None:
            self.build(device)
        weights = next(self.rest.parameters(), None)  # the rest's dtype (fp32, or bf16 / fp16 under *-true)
        maps = self.maps[rows.to("cpu", torch.long)].to(device, weights.dtype if weights is not None else torch.float32)
        return self.rest(self._layout(random_resized_crop_maps(maps, self.scale)))


def _physical_memory() -> int | None:
    """This machine's memory in bytes, where the OS tells (POSIX sysconf), else None."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _check_memory(trunk: torch.nn.Module, images: Dataset, processes: int = 1) -> None:
    """ConfigError, before training starts, when the maps of every image would take over `MEMORY_SHARE` of the
    machine's memory (the map size from the trunk's output on the first image), counting one copy per training
    process on this machine (``processes``: every DDP rank holds its own)."""
    total = _physical_memory()
    if total is None or not len(images):
        return
    from lookalike.models.base import blank_forward

    shape = tuple(blank_forward([trunk], *images[0]["input"].shape[-2:]).shape[1:])
    need = int(torch.Size(shape).numel()) * torch.finfo(FrozenTrunkCache.dtype).bits // 8 * len(images) * processes
    if need > MEMORY_SHARE * total:
        copies = f" ({processes} processes, a copy each)" if processes > 1 else ""
        raise ConfigError(f"cache_frozen_trunk: the feature maps of {len(images)} training images ({shape} each) "
                          f"need {need / 2**30:.1f} GiB{copies}, over half of this machine's {total / 2**30:.1f} GiB; "
                          "freeze more stages (later maps are smaller), lower image_size, or set "
                          "cache_frozen_trunk: false.")


def build_trunk_cache(cfg: Mapping, extractor: Any, train_table: Any) -> FrozenTrunkCache:
    """The cache of ``cfg`` (``cache_frozen_trunk``): the extractor split after ``freeze_layers``, the training
    rows resized as for validation. ConfigError when the layers are not the first stages or the transforms act
    on pixels."""
    from lookalike.errors import LookalikeError
    from lookalike.pipelines.builders import build_transforms
    from lookalike.pipelines.loading import make_dataset

    check_cacheable_transforms(cfg)
    if not cfg["freeze_layers"]:
        raise ConfigError("cache_frozen_trunk: freeze_layers is empty, so there is no frozen trunk to cache; name the "
                          "first stages to freeze (e.g. the stem and first blocks of a pretrained CNN).")
    if not hasattr(extractor, "split_frozen_prefix"):
        raise ConfigError(f"cache_frozen_trunk: the extractor ({type(extractor).__name__}) cannot be split after its "
                          "first stages; subclass lookalike.models.Extractor and describe `backbone_stages`.")
    try:
        trunk, rest = extractor.split_frozen_prefix(cfg["freeze_layers"])
    except LookalikeError as exc:
        raise ConfigError(f"cache_frozen_trunk: {exc}") from None
    images = make_dataset(train_table, build_transforms(cfg, "transforms_val"), cfg, cache=False)
    devices = cfg.get("devices")
    _check_memory(trunk, images, devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 1
                  else 1)
    return FrozenTrunkCache(trunk, rest, images, scale=crop_scale(cfg["transforms_train"]),
                            batch_size=cfg["bs_val"], channels_last=cfg["channels_last"])
