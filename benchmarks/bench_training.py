"""Training and inference throughput: lookalike vs OML 4.0.0, ResNet-18 on CPU, same data, threads and seed.

Training: ResNet-18 from random init, 64x64 inputs, triplet loss (margin 0.2) with batch-hard mining, 16 labels x
4 instances per batch, AdamW (lr 1e-3), on the `train` split of emoji-open; images/second over --train-steps
steps after --warmup steps, data loading and augmentation included, plus the time of each phase of a step.
Inference: images/second of the model alone (eval mode, inference_mode, batches of random tensors) at each
--infer-sizes; with --infer-pipeline also through each side's data pipeline on the validation split.

Each measurement runs in a fresh process of its own (OML's in its virtualenv, benchmarks/.venv-oml, through
oml_training_reference.py), and both sides time their steps with the same functions, defined here.

    .venv/bin/python benchmarks/bench_training.py [--threads 2] [--workers 0] [--train-steps 50] [--record]

--setup-oml creates benchmarks/.venv-oml when missing; --record rewrites this script's section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "emoji-open"
SECTION = "## Training and inference throughput vs OML 4.0.0"
BATCH = 64  # 16 labels x 4 instances
PHASES = ("data", "forward", "loss", "backward", "step")  # "loss" = mining + triplet loss
AUGS = ("preset", "oml-like")


# --- measurement, shared with oml_training_reference.py: plain torch, no lookalike, no OML ---

def setup_torch(threads: int, seed: int) -> None:
    """The same threads and seeds on both sides (OML's sampler draws from numpy's global generator)."""
    import numpy as np

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def endless(loader: Iterable) -> Iterator:
    """Batches of `loader`, epoch after epoch (telling a sampler with `set_epoch` which epoch it is)."""
    epoch = 0
    while True:
        sampler = getattr(loader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def _memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def time_training(model: torch.nn.Module, criterion: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  batches: Iterator[dict], keys: tuple[str, str], *, steps: int, warmup: int, bf16: bool = False,
                  channels_last: bool = False) -> dict:
    """`warmup` + `steps` training steps; images/s over the last `steps` and the mean ms of each phase.

    bf16 autocasts the forward pass only; the loss (and mining) always runs in fp32 on fp32 features.
    """
    model.train().to(memory_format=_memory_format(channels_last))
    totals, n_images, losses, start = dict.fromkeys(PHASES, 0.0), 0, [], time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            totals, n_images, start = dict.fromkeys(PHASES, 0.0), 0, time.perf_counter()
        marks = [time.perf_counter()]
        batch = next(batches)
        images = batch[keys[0]].contiguous(memory_format=_memory_format(channels_last))
        labels = batch[keys[1]]
        marks.append(time.perf_counter())
        with _autocast(bf16):
            features = model(images)
        marks.append(time.perf_counter())
        loss = criterion(features.float(), labels)
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        for phase, begin, end in zip(PHASES, marks, marks[1:]):
            totals[phase] += end - begin
        n_images += len(images)
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start
    return {"images_per_s": n_images / seconds, "seconds": seconds, "steps": steps,
            "phase_ms": {phase: 1000 * total / steps for phase, total in totals.items()},
            "loss_first": losses[0], "loss_last": losses[-1]}


def time_inference(model: torch.nn.Module, batches: Iterator[torch.Tensor], *, n_batches: int, warmup: int,
                   bf16: bool = False, channels_last: bool = False) -> float:
    """Images/s of `model` in eval mode under inference_mode over `n_batches` batches after `warmup` ones
    (fetching each batch included: free for in-memory tensors, the data pipeline for a loader)."""
    model.eval().to(memory_format=_memory_format(channels_last))
    n_images, start = 0, time.perf_counter()
    with torch.inference_mode(), _autocast(bf16):
        for step in range(warmup + n_batches):
            if step == warmup:
                n_images, start = 0, time.perf_counter()
            images = next(batches).contiguous(memory_format=_memory_format(channels_last))
            model(images)
            n_images += len(images)
    return n_images / (time.perf_counter() - start)


def random_batches(batch: int, size: int, seed: int) -> Iterator[torch.Tensor]:
    """The same in-memory batch of random images, forever: only the model is measured."""
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    while True:
        yield images


def loader_kwargs(workers: int) -> dict:
    """DataLoader options common to both sides (workers persist across epochs, so they start only once)."""
    return {"num_workers": workers, "persistent_workers": workers > 0}


def versions() -> dict:
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__}


# --- lookalike's side (a worker process of this script) ---

def _lookalike_datasets(data: Path, augs: str, size: int):
    from lookalike.data.datasets import train_and_validation_datasets
    from lookalike.data.transforms import get_transforms

    # "oml-like" mirrors OML's get_augs_torch: resize (a full-scale random crop), flip, no colour change
    train_kwargs = {"scale": (1.0, 1.0), "jitter": 0.0} if augs == "oml-like" else {}
    return train_and_validation_datasets(data, "df.csv", cache_images=True,
                                         transforms_train=get_transforms("train", image_size=64, **train_kwargs),
                                         transforms_val=get_transforms("val", image_size=size))


def lookalike_training(cfg: dict) -> dict:
    """lookalike's training throughput: cached decoded images, its sampler, extractor, miner and loss."""
    from torch.utils.data import DataLoader

    from lookalike.data import schema
    from lookalike.data.samplers import BalanceSampler
    from lookalike.losses import TripletLossWithMiner
    from lookalike.miners import HardTripletsMiner
    from lookalike.models import ResNetExtractor

    setup_torch(cfg["threads"], cfg["seed"])
    train, _ = _lookalike_datasets(Path(cfg["data"]), cfg["augs"], 64)
    start = time.perf_counter()
    train.preload()  # decode once, before workers fork (they then share the arrays)
    preload_s = time.perf_counter() - start
    sampler = BalanceSampler(train.labels, n_labels=16, n_instances=4, seed=cfg["seed"])
    loader = DataLoader(train, batch_sampler=sampler, **loader_kwargs(cfg["workers"]))
    model = ResNetExtractor("resnet18", normalise=False)  # weights=None: random init, nothing downloaded
    criterion = TripletLossWithMiner(margin=0.2, miner=HardTripletsMiner())
    # fused: what the pipelines' optimizer builder picks for torch's AdamW (lookalike.pipelines.builders)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=cfg.get("fused", True))
    keys = (schema.INPUT_KEY, schema.LABEL_KEY)
    result = time_training(model, criterion, optimizer, endless(loader), keys, steps=cfg["steps"],
                           warmup=cfg["warmup"], bf16=cfg["precision"] == "bf16", channels_last=cfg["channels_last"])
    return {**result, "preload_s": preload_s, **versions()}


def lookalike_inference(cfg: dict) -> dict:
    """Images/s per (size, precision, memory format); with cfg["pipeline"] also through the val pipeline."""
    from torch.utils.data import DataLoader

    from lookalike.data import schema
    from lookalike.models import ResNetExtractor

    setup_torch(cfg["threads"], cfg["seed"])
    model = ResNetExtractor("resnet18", normalise=False)
    rows = []
    for size in cfg["sizes"]:
        for precision in ("fp32", "bf16"):
            for channels_last in (False, True):
                speed = time_inference(model, random_batches(cfg["batch"], size, cfg["seed"]),
                                       n_batches=cfg["batches"], warmup=cfg["warmup"], bf16=precision == "bf16",
                                       channels_last=channels_last)
                rows.append({"size": size, "input": "random tensors", "precision": precision,
                             "channels_last": channels_last, "images_per_s": speed})
        if cfg["pipeline"]:
            _, val = _lookalike_datasets(Path(cfg["data"]), "preset", size)
            loader = DataLoader(val.preload(), batch_size=cfg["batch"], **loader_kwargs(cfg["workers"]))
            images = (batch[schema.INPUT_KEY] for batch in endless(loader))
            speed = time_inference(model, images, n_batches=cfg["batches"], warmup=cfg["warmup"])
            rows.append({"size": size, "input": "val pipeline", "precision": "fp32", "channels_last": False,
                         "images_per_s": speed})
    return {"rows": rows, **versions()}


# --- the parent: runs every measurement in its own process, prints and records the tables ---

def run_json(command: list[str]) -> dict:
    """Runs a worker and returns the JSON of its last stdout line; SystemExit with its stderr if it fails."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {shlex.join(command)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_ours(cfg: dict) -> dict:
    return run_json([sys.executable, __file__, "--worker-config", json.dumps(cfg)])


def run_oml(oml_python: Path, cfg: dict) -> dict:
    return run_json([str(oml_python), str(HERE / "oml_training_reference.py"), json.dumps(cfg)])


def check_inputs(args: argparse.Namespace) -> Path:
    """OML's python (created with --setup-oml) and the dataset's CSV, or SystemExit saying what is missing."""
    from bench_validation import OML_PYTHON, setup_oml

    if args.setup_oml:
        setup_oml()
    if not OML_PYTHON.exists():
        raise SystemExit(f"OML's virtualenv is missing ({OML_PYTHON}): run with --setup-oml once "
                         "(it installs OML 4.0.0 there, see benchmarks/README.md).")
    if not (args.data / "df.csv").is_file():
        raise SystemExit(f"dataset not found: {args.data / 'df.csv'} is missing; pass --data DIR "
                         "(a folder with df.csv: label,path,split,is_query,is_gallery,category).")
    return OML_PYTHON


def training_runs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(precision, augmentations) of each lookalike training row."""
    augs = AUGS if args.augs == "both" else (args.augs,)
    return [(precision, aug) for aug in augs for precision in args.precisions]


def measure_training(args: argparse.Namespace, oml_python: Path) -> list[dict]:
    base = {"task": "train", "data": str(args.data), "threads": args.threads, "seed": args.seed,
            "workers": args.workers, "steps": args.train_steps, "warmup": args.warmup}
    rows = [{"side": "OML", "precision": "fp32", "augs": "OML get_augs_torch", "channels_last": False,
             **run_oml(oml_python, base)}]
    print(f"OML training: {rows[0]['images_per_s']:.1f} images/s", flush=True)
    runs = [(precision, augs, not args.no_fused) for precision, augs in training_runs(args)]
    if args.also_unfused and not args.no_fused:  # the optimizer as before the fused default, in the same run
        runs += [(precision, augs, False) for precision, augs in training_runs(args)]
    for precision, augs, fused in runs:
        cfg = {**base, "precision": precision, "augs": augs, "channels_last": args.channels_last, "fused": fused}
        rows.append({"side": "lookalike", "precision": precision, "augs": augs, "fused": fused,
                     "channels_last": args.channels_last, **run_ours(cfg)})
        print(f"lookalike training {precision} {augs} fused={fused}: {rows[-1]['images_per_s']:.1f} images/s",
              flush=True)
    return rows


def measure_inference(args: argparse.Namespace, oml_python: Path) -> tuple[dict, dict]:
    cfg = {"task": "infer", "data": str(args.data), "threads": args.threads, "seed": args.seed,
           "workers": args.workers, "sizes": args.infer_sizes, "batch": args.infer_batch,
           "batches": args.infer_batches, "warmup": args.infer_warmup, "pipeline": args.infer_pipeline}
    theirs = run_oml(oml_python, cfg)
    print("OML inference done", flush=True)
    mine = run_ours(cfg)
    print("lookalike inference done", flush=True)
    return theirs, mine


def training_table(rows: list[dict]) -> str:
    oml = rows[0]["images_per_s"]
    lines = ["| side | precision | augmentations | channels_last | fused AdamW | images/s | vs OML | data wait (ms/step) "
             "| forward | loss + mining | backward | optimizer step | loss first -> last step "
             "| cache decode (s, untimed) | floor: vs OML with free data, loss and optimizer |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    oml_step_ms = 1000 * BATCH / oml
    for row in rows:
        ms = row["phase_ms"]
        cache = f"{row['preload_s']:.1f}" if "preload_s" in row else "-"
        lines.append(f"| {row['side']} | {row['precision']} | {row['augs']} | {row['channels_last']} "
                     f"| {row.get('fused', False)} "
                     f"| {row['images_per_s']:.1f} | {row['images_per_s'] / oml:.2f}x "
                     f"| {' | '.join(f'{ms[phase]:.1f}' for phase in PHASES)} "
                     f"| {row['loss_first']:.3f} -> {row['loss_last']:.3f} "
                     f"| {cache} | {oml_step_ms / (ms['forward'] + ms['backward']):.2f}x |")
    return "\n".join(lines)


def inference_table(theirs: dict, mine: dict, batch: int) -> str:
    reference = {(row["size"], row["input"]): row["images_per_s"] for row in theirs["rows"]}
    lines = ["| input | size | batch | side | precision | channels_last | images/s | vs OML |",
             "|---|---|---|---|---|---|---|---|"]
    for size, source in sorted(reference, key=lambda key: (key[1] != "random tensors", key[0])):
        for side, result in (("OML", theirs), ("lookalike", mine)):
            for row in result["rows"]:
                if (row["size"], row["input"]) == (size, source):
                    lines.append(f"| {source} | {size}x{size} | {batch} | {side} | {row['precision']} "
                                 f"| {row['channels_last']} | {row['images_per_s']:.1f} "
                                 f"| {row['images_per_s'] / reference[(size, source)]:.2f}x |")
    return "\n".join(lines)


def machine() -> str:
    """CPU model and core count from /proc/cpuinfo, and whether the CPU has AMX-BF16 (fast bf16 matmuls)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 "unknown CPU")
    amx = "amx_bf16" in info.split()
    return f"{model}, {os.cpu_count()} cores, AMX-BF16 {'yes' if amx else 'no'}"


def section(args: argparse.Namespace, loads: tuple[float, float], training: str, inference: str,
            oml_versions: dict, our_versions: dict) -> str:
    """This script's section of RESULTS.md: command, date, machine, versions, notes and both tables."""
    command = shlex.join(["benchmarks/bench_training.py", *sys.argv[1:]])
    return f"""{SECTION}

Command: `.venv/bin/python {command}`  
Date: {time.strftime('%Y-%m-%d %H:%M')}; machine: {machine()}; {args.threads} torch threads per side, \
{args.workers} DataLoader workers, seed {args.seed}. lookalike: torch {our_versions['torch']}, torchvision \
{our_versions['torchvision']}; OML 4.0.0: torch {oml_versions['torch']}, torchvision {oml_versions['torchvision']}. \
Load average (1 min) {loads[0]:.1f} before and {loads[1]:.1f} after the run: the CPUs are shared with other \
engineers' jobs, treat a single timing as +-50% and prefer the ratios of the same run.

Each row ran in a fresh process of its own; both sides time their steps with the same functions \
(`bench_training.py`). Training: ResNet-18 from random init, 64x64, batch 64 = 16 labels x 4 instances \
(each side's BalanceSampler), triplet loss margin 0.2 with batch-hard mining, AdamW lr 1e-3 (lookalike: `fused=True`, what its pipelines pick; OML: \
torch's default), the `train` split of \
emoji-open (64 px PNGs); {args.train_steps} steps timed after {args.warmup} warmup steps, data loading and \
augmentation included. OML reads and decodes every image from disk (its default `cache_size=0`) and uses \
`get_augs_torch(im_size=64)` (resize, horizontal flip, a `ColorJitter()` without any jitter, normalise); \
lookalike keeps decoded images in memory (`cache_images=True`, decoded once before timing: the last column, not \
in the timing) and uses either its `train` preset ("preset": pad to square, random resized crop scale 0.6-1, flip, \
colour jitter 0.3 with hue 0.1, normalise: more work per image than OML's) or the same preset with scale (1, 1) \
and no jitter ("oml-like": about OML's augmentations). bf16 = `torch.autocast("cpu", torch.bfloat16)` around the \
forward pass, loss and mining in fp32; OML runs in fp32, as its plain PyTorch loop does. Phases are \
`time.perf_counter()` differences per step (ms, mean over the timed steps): data wait = `next()` on the \
DataLoader, loss + mining = the criterion call, backward includes `zero_grad`. The last column is the ceiling of \
the ratio while the model's forward and backward passes stay what they are: OML's whole step divided by this \
row's forward + backward time (data, loss, mining and the optimizer step taken as free).

### Training

{training}

### Inference

ResNet-18 (random init) in eval mode under `torch.inference_mode()`, {args.infer_batches} batches timed after \
{args.infer_warmup} warmup. "random tensors": one in-memory batch, only the model is measured. "val pipeline" \
(when measured): the validation split through each side's validation transforms (OML \
`get_normalisation_resize_torch`, lookalike `get_transforms("val")`, cached images) in a DataLoader, fp32.

{inference}
"""


def record(text: str) -> None:
    """Replaces (or appends) this script's section of RESULTS.md, leaving the other sections as they are."""
    from results_md import write_section

    write_section(SECTION, text)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-config", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset folder with df.csv")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on both sides")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers on both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-steps", type=int, default=50, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed training steps first")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                        help="lookalike training rows (OML trains in fp32)")
    parser.add_argument("--augs", choices=[*AUGS, "both"], default="both",
                        help="lookalike training augmentations: its train preset, OML-like ones, or both")
    parser.add_argument("--channels-last", action="store_true", help="lookalike trains in channels_last")
    parser.add_argument("--no-fused", action="store_true",
                        help="lookalike's AdamW without fused=True (the pipelines' default is fused)")
    parser.add_argument("--also-unfused", action="store_true",
                        help="also time each lookalike row with torch's default (unfused) AdamW")
    parser.add_argument("--infer-sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--infer-batch", type=int, default=128)
    parser.add_argument("--infer-batches", type=int, default=10, help="timed inference batches")
    parser.add_argument("--infer-warmup", type=int, default=2, help="untimed inference batches first")
    parser.add_argument("--infer-pipeline", action="store_true",
                        help="also time inference through each side's data pipeline (validation split)")
    parser.add_argument("--setup-oml", action="store_true", help="create benchmarks/.venv-oml when missing")
    parser.add_argument("--record", action="store_true", help="rewrite this script's section of RESULTS.md")
    args = parser.parse_args()
    if min(args.train_steps, args.infer_batches, args.threads) < 1 or min(args.warmup, args.infer_warmup) < 0:
        parser.error("--train-steps, --infer-batches and --threads must be >= 1, the warmups >= 0")
    args.data = args.data.resolve()
    return args


def main() -> None:
    args = parse_args()
    if args.worker_config:
        cfg = json.loads(args.worker_config)
        print(json.dumps(lookalike_training(cfg) if cfg["task"] == "train" else lookalike_inference(cfg)))
        return
    oml_python = check_inputs(args)
    load_before = os.getloadavg()
    print(f"{machine()}; load average before: {' '.join(f'{x:.2f}' for x in load_before)}", flush=True)
    training_rows = measure_training(args, oml_python)
    theirs, mine = measure_inference(args, oml_python)
    load_after = os.getloadavg()
    training, inference = training_table(training_rows), inference_table(theirs, mine, args.infer_batch)
    print(f"\nTraining ({args.train_steps} steps after {args.warmup} warmup, {args.threads} threads, "
          f"{args.workers} workers)\n{training}\n\nInference\n{inference}\n")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)}; "
          f"after: {' '.join(f'{x:.2f}' for x in load_after)}")
    if args.record:
        record(section(args, (load_before[0], load_after[0]), training, inference, theirs, mine))
        print(f"recorded in {HERE / 'RESULTS.md'} ({SECTION})")


if __name__ == "__main__":
    main()
