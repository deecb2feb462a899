"""OML 4.0.0 side of bench_time_to_accuracy.py: runs inside benchmarks/.venv-oml (OML's own environment).

Trains ResNet-18 from random init with OML's public API (ResnetExtractor, BalanceSampler 16 x 4,
TripletLossWithMiner + HardTripletsMiner, ImageLabeledDataset with get_augs_torch(64)) in a plain PyTorch loop
for a budget of training seconds; with "weights" in the config, a timm "model" (tf_efficientnet_lite0: OML has no
EfficientNet extractor, and its loop takes any torch module) starts from that state dict instead, at "im_size",
everything else unchanged, and every few epochs (clock stopped) writes the validation embeddings to
OUT/emb_<i>.npy. The parent script scores them with one metric implementation for both sides. Prints one
JSON line: the checkpoints with their training seconds.

    benchmarks/.venv-oml/bin/python benchmarks/oml_time_to_accuracy.py CONFIG_JSON
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from oml.datasets.images import ImageBaseDataset, ImageLabeledDataset
from oml.losses import TripletLossWithMiner
from oml.miners import HardTripletsMiner
from oml.models import ResnetExtractor
from oml.samplers import BalanceSampler
from oml.transforms.images.torchvision import get_augs_torch, get_normalisation_resize_torch
from torch.utils.data import DataLoader


def rows(data: Path, split: str) -> pd.DataFrame:
    table = pd.read_csv(data / "df.csv")
    return table[table["split"] == split].reset_index(drop=True)


@torch.inference_mode()
def embed(model: torch.nn.Module, loader: DataLoader, key: str) -> np.ndarray:
    model.eval()
    out = np.concatenate([model(batch[key]).float().numpy() for batch in loader])
    model.train()
    return out


def main() -> None:
    cfg = json.loads(sys.argv[1])
    data, out = Path(cfg["data"]), Path(cfg["out"])
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    np.random.seed(cfg["seed"])  # OML's sampler draws from numpy's global generator
    random.seed(cfg["seed"])
    size = int(cfg.get("im_size", 64))
    train = ImageLabeledDataset(rows(data, "train"), dataset_root=data, transform=get_augs_torch(im_size=size))
    val = ImageBaseDataset(rows(data, "validation")["path"].map(Path).tolist(), dataset_root=data,
                           transform=get_normalisation_resize_torch(im_size=size))
    loader = DataLoader(train, batch_sampler=BalanceSampler(train.get_labels(), n_labels=16, n_instances=4))
    val_loader = DataLoader(val, batch_size=256)
    if cfg.get("weights"):
        import timm

        model = timm.create_model(cfg["model"], num_classes=0)
        model.load_state_dict(torch.load(cfg["weights"], map_location="cpu", weights_only=True))  # strict
    else:
        model = ResnetExtractor(weights=None, arch="resnet18", gem_p=None, remove_fc=True, normalise_features=False)
    criterion = TripletLossWithMiner(margin=0.2, miner=HardTripletsMiner())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    checkpoints = []

    def checkpoint(seconds: float) -> None:
        path = out / f"emb_{len(checkpoints)}.npy"
        np.save(path, embed(model, val_loader, val.input_tensors_key))
        checkpoints.append({"train_seconds": seconds, "file": str(path)})

    budget, spent, epoch = 60.0 * cfg["minutes"], 0.0, 0
    checkpoint(0.0)
    model.train()
    while spent < budget:
        start = time.perf_counter()
        for batch in loader:
            loss = criterion(model(batch[train.input_tensors_key]), batch[train.labels_key])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if spent + time.perf_counter() - start >= budget:
                break
        spent += time.perf_counter() - start
        epoch += 1
        if epoch % cfg["eval_every_epochs"] == 0 or spent >= budget:
            checkpoint(spent)
    print(json.dumps({"checkpoints": checkpoints, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
