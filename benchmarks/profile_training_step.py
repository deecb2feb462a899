"""Where lookalike's training step spends its time: the bench_training.py setup (ResNet-18, 64 px, 16 x 4 batches,
triplet + hard miner, AdamW, "oml-like" augmentations, cached images, fp32) under variants, then a torch.profiler
table of a few steps. Variants (comma-separated; a variant is a set of these words):

- ``cl``: channels_last; ``fused``: AdamW(fused=True) (else torch's default loop);
- ``batchaug``: a prototype of augmenting whole batches after collation: items are only resized (uint8), then the
  random resized crop (scale 1, ratio 0.8-1.25) and the flip of the whole batch are one ``grid_sample`` and the
  normalisation one tensor operation (not the `train` preset: bilinear without antialiasing);
- ``profile``: print the torch.profiler table (self CPU time) of 5 more steps.

    .venv/bin/python benchmarks/profile_training_step.py base,cl,cl_fused,cl_fused_batchaug,cl_fused_profile [steps]
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from bench_training import DEFAULT_DATA, _lookalike_datasets, endless, loader_kwargs, setup_torch, time_training

from lookalike.data import schema
from lookalike.data.datasets import train_and_validation_datasets
from lookalike.data.samplers import BalanceSampler
from lookalike.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lookalike.losses import TripletLossWithMiner
from lookalike.miners import HardTripletsMiner
from lookalike.models import ResNetExtractor

SIZE = 64


def batch_augmented(batches):
    """uint8 batches -> random resized crop (ratio 0.8-1.25, scale 1) and flip as one grid_sample, normalised."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    low, high = torch.log(torch.tensor(0.8)).item(), torch.log(torch.tensor(1.25)).item()
    for batch in batches:
        x = batch[schema.INPUT_KEY].float()
        b = len(x)
        ratio = torch.empty(b).uniform_(low, high).exp()
        w, h = ratio.sqrt().clamp(max=1.0), (1 / ratio.sqrt()).clamp(max=1.0)
        flip = torch.where(torch.rand(b) < 0.5, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1] = w * flip, h
        theta[:, 0, 2], theta[:, 1, 2] = (torch.rand(b) * 2 - 1) * (1 - w), (torch.rand(b) * 2 - 1) * (1 - h)
        grid = F.affine_grid(theta, (b, 3, SIZE, SIZE), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        batch[schema.INPUT_KEY] = (x - mean) / std
        yield batch


def run(variant: str, steps: int) -> None:
    words = set(variant.split("_"))
    setup_torch(2, 0)
    if "batchaug" in words:
        resize = v2.Compose([v2.ToImage(), v2.Resize((SIZE, SIZE), antialias=True), v2.ToPureTensor()])
        train, _ = train_and_validation_datasets(DEFAULT_DATA, "df.csv", cache_images=True, transforms_train=resize)
    else:
        train, _ = _lookalike_datasets(DEFAULT_DATA, "oml-like", SIZE)
    train.preload()
    sampler = BalanceSampler(train.labels, n_labels=16, n_instances=4, seed=0)
    batches = endless(DataLoader(train, batch_sampler=sampler, **loader_kwargs(0)))
    if "batchaug" in words:
        batches = batch_augmented(batches)
    model = ResNetExtractor("resnet18", normalise=False)
    criterion = TripletLossWithMiner(margin=0.2, miner=HardTripletsMiner())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused="fused" in words)
    keys = (schema.INPUT_KEY, schema.LABEL_KEY)
    result = time_training(model, criterion, optimizer, batches, keys, steps=steps, warmup=3,
                           channels_last="cl" in words)
    phases = ", ".join(f"{k} {v:.1f}" for k, v in result["phase_ms"].items())
    print(f"{variant}: {result['images_per_s']:.1f} images/s; ms per step: {phases}; loss "
          f"{result['loss_first']:.3f} -> {result['loss_last']:.3f}", flush=True)
    if "profile" in words:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            time_training(model, criterion, optimizer, batches, keys, steps=5, warmup=0, channels_last="cl" in words)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), flush=True)


if __name__ == "__main__":
    for name in sys.argv[1].split(","):
        run(name, int(sys.argv[2]) if len(sys.argv) > 2 else 15)
