"""Train an embedding model on the built-in emoji data with plain PyTorch (no Lightning, no config).

Shows the building blocks working together: a validated dataset, a P x K balance sampler, triplet loss with a
hard miner inside, and retrieval metrics on the validation split before and after training.

    python examples/train_plain_pytorch.py --minutes 3
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from lookalike.data import example_dataset_root
from lookalike.data.datasets import train_and_validation_datasets
from lookalike.data.samplers import BalanceSampler
from lookalike.data.transforms import get_transforms
from lookalike.losses import TripletLossWithMiner
from lookalike.metrics import evaluate_embeddings
from lookalike.miners import HardTripletsMiner
from lookalike.models import ResNetExtractor


@torch.inference_mode()
def embed(model: torch.nn.Module, loader: DataLoader) -> dict[str, torch.Tensor]:
    """Embeddings of a whole validation loader, with the columns the metrics need."""
    model.eval()
    chunks: dict[str, list] = {"embeddings": [], "labels": [], "is_query": [], "is_gallery": [], "categories": []}
    for batch in loader:
        chunks["embeddings"].append(model(batch["input"]).float())
        chunks["labels"].append(batch["label"])
        chunks["is_query"].append(batch["is_query"])
        chunks["is_gallery"].append(batch["is_gallery"])
        chunks["categories"].extend(batch["category"])
    return {
        "embeddings": torch.cat(chunks["embeddings"]),
        "labels": torch.cat(chunks["labels"]),
        "is_query": torch.cat(chunks["is_query"]),
        "is_gallery": torch.cat(chunks["is_gallery"]),
        "categories": chunks["categories"],
    }


def evaluate(model: torch.nn.Module, loader: DataLoader) -> dict:
    """Retrieval metrics of the model on the validation split (every item is query and gallery)."""
    return evaluate_embeddings(**embed(model, loader), cmc_top_k=(1, 5), precision_top_k=(5,), map_top_k=(5,))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget in wall-clock minutes")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-labels", type=int, default=16, help="P: labels per batch")
    parser.add_argument("--n-instances", type=int, default=4, help="K: instances per label")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    train_ds, val_ds = train_and_validation_datasets(
        example_dataset_root(),
        transforms_train=get_transforms("train", image_size=args.image_size),
        transforms_val=get_transforms("val", image_size=args.image_size),
        cache_images=True,
    )
    sampler = BalanceSampler(train_ds.labels, n_labels=args.n_labels, n_instances=args.n_instances, seed=args.seed)
    train_loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=0)
    val_loader = DataLoader(val_ds, batch_size=128, num_workers=0)

    model = ResNetExtractor("resnet18", embedding_dim=128, normalise=True).to(memory_format=torch.channels_last)
    criterion = TripletLossWithMiner(margin=0.2, miner=HardTripletsMiner())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)

    before = evaluate(model, val_loader)["OVERALL"]
    print(f"before training: CMC@1 = {before['cmc'][1]:.3f}  CMC@5 = {before['cmc'][5]:.3f}")

    deadline = time.monotonic() + args.minutes * 60
    epoch = 0
    while time.monotonic() < deadline:
        sampler.set_epoch(epoch)
        model.train()
        for batch in train_loader:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                features = model(batch["input"].contiguous(memory_format=torch.channels_last))
            loss = criterion(features.float(), batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if time.monotonic() >= deadline:
                break
        logs = criterion.last_logs
        print(f"epoch {epoch}: loss {logs['loss']:.4f}  active triplets {logs['active_triplets']:.2f}")
        epoch += 1

    after = evaluate(model, val_loader)["OVERALL"]
    print(f"after {epoch} epochs: CMC@1 = {after['cmc'][1]:.3f}  CMC@5 = {after['cmc'][5]:.3f}")
    print(f"CMC@1 {before['cmc'][1]:.3f} -> {after['cmc'][1]:.3f}")
    return {"before": before, "after": after}


if __name__ == "__main__":
    main()
