"""OML 4.0.0 side of bench_training.py: runs inside benchmarks/.venv-oml (OML's own environment).

Builds the training and inference set-ups from OML's public API only (ResnetExtractor, BalanceSampler,
TripletLossWithMiner + HardTripletsMiner, ImageLabeledDataset / ImageBaseDataset, its torchvision transforms)
and times them with the measurement functions of bench_training.py (plain torch, shared by both sides), so
both sides are timed the same way. Prints one JSON line.

    benchmarks/.venv-oml/bin/python benchmarks/oml_training_reference.py CONFIG_JSON

CONFIG_JSON is written by bench_training.py ("task": "train" or "infer", plus the sizes and counts).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import torch
from oml.datasets.images import ImageBaseDataset, ImageLabeledDataset
from oml.losses import TripletLossWithMiner
from oml.miners import HardTripletsMiner
from oml.models import ResnetExtractor
from oml.samplers import BalanceSampler
from oml.transforms.images.torchvision import get_augs_torch, get_normalisation_resize_torch
from torch.utils.data import DataLoader

from bench_training import endless, loader_kwargs, random_batches, setup_torch, time_inference, time_training, versions


def resnet18() -> ResnetExtractor:
    """ResNet-18 from random init (weights=None downloads nothing), average pooling, no fc, no normalisation."""
    return ResnetExtractor(weights=None, arch="resnet18", gem_p=None, remove_fc=True, normalise_features=False)


def split_rows(data: Path, split: str) -> pd.DataFrame:
    table = pd.read_csv(data / "df.csv")
    return table[table["split"] == split].reset_index(drop=True)


def training(cfg: dict) -> dict:
    """OML's plain PyTorch training loop, timed step by step: fp32, images read from disk by its dataset."""
    setup_torch(cfg["threads"], cfg["seed"])
    data = Path(cfg["data"])
    dataset = ImageLabeledDataset(split_rows(data, "train"), dataset_root=data, transform=get_augs_torch(im_size=64))
    sampler = BalanceSampler(dataset.get_labels(), n_labels=16, n_instances=4)
    loader = DataLoader(dataset, batch_sampler=sampler, **loader_kwargs(cfg["workers"]))
    model = resnet18()
    criterion = TripletLossWithMiner(margin=0.2, miner=HardTripletsMiner())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    keys = (dataset.input_tensors_key, dataset.labels_key)
    result = time_training(model, criterion, optimizer, endless(loader), keys, steps=cfg["steps"],
                           warmup=cfg["warmup"])
    return {**result, **versions()}


def inference(cfg: dict) -> dict:
    """Images/s in fp32 per size on random tensors; with cfg["pipeline"] also through OML's val transforms."""
    setup_torch(cfg["threads"], cfg["seed"])
    model = resnet18()
    rows = []
    for size in cfg["sizes"]:
        speed = time_inference(model, random_batches(cfg["batch"], size, cfg["seed"]), n_batches=cfg["batches"],
                               warmup=cfg["warmup"])
        rows.append({"size": size, "input": "random tensors", "precision": "fp32", "channels_last": False,
                     "images_per_s": speed})
        if cfg["pipeline"]:
            data = Path(cfg["data"])
            dataset = ImageBaseDataset(split_rows(data, "validation")["path"].map(Path).tolist(), dataset_root=data,
                                       transform=get_normalisation_resize_torch(im_size=size))
            loader = DataLoader(dataset, batch_size=cfg["batch"], **loader_kwargs(cfg["workers"]))
            images = (batch[dataset.input_tensors_key] for batch in endless(loader))
            speed = time_inference(model, images, n_batches=cfg["batches"], warmup=cfg["warmup"])
            rows.append({"size": size, "input": "val pipeline", "precision": "fp32", "channels_last": False,
                         "images_per_s": speed})
    return {"rows": rows, **versions()}


def main() -> None:
    cfg = json.loads(sys.argv[1])
    print(json.dumps(training(cfg) if cfg["task"] == "train" else inference(cfg)))


if __name__ == "__main__":
    main()
