"""Time to accuracy on emoji-open: validation CMC@1 against training time, lookalike's recipe vs OML 4.0.0.

lookalike runs its shipped `small_images` recipe through `lookalike train` (validation every epoch; the
history records the training seconds, validation excluded). OML runs ResNet-18 from random init with triplet
loss + hard mining on 16 x 4 balance batches in its plain PyTorch loop (oml_time_to_accuracy.py, in
benchmarks/.venv-oml) and saves validation embeddings every few epochs, also outside its clock. Both sides'
checkpoints are scored here by the same code (lookalike's evaluate_embeddings, whose CMC@k equals OML's per
query: bench_validation.py), on the validation split (labels never seen in training).

--pretrained compares starts from the same ImageNet weights instead: lookalike's `small_images_pretrained` recipe
against OML's set-up above with only the network changed, EfficientNet-Lite0 at 112 px holding exactly the
weights our zoo gives (the packaged ImageNet weights, mapped to timm's names, normalisation folded into the
stem; written to a file the OML side loads strictly).

    .venv/bin/python benchmarks/bench_time_to_accuracy.py [--minutes 10] [--pretrained] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "emoji-open"
OML_PYTHON = HERE / ".venv-oml" / "bin" / "python"
SECTION = "## Time to accuracy vs OML 4.0.0"
PRETRAINED_SECTION = "## Time to accuracy from the same ImageNet weights vs OML 4.0.0"
LITE0 = "tf_efficientnet_lite0"


def run_json(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def validation_split(data: Path):
    import pandas as pd

    table = pd.read_csv(data / "df.csv")
    val = table[table["split"] == "validation"].reset_index(drop=True)
    return (np.array(val["label"], dtype=np.int64), np.array(val["is_query"], dtype=bool),
            np.array(val["is_gallery"], dtype=bool))


def cmc1(embeddings: np.ndarray, labels, is_query, is_gallery) -> float:
    import torch

    from lookalike.metrics import evaluate_embeddings

    result = evaluate_embeddings(torch.from_numpy(embeddings), torch.from_numpy(labels), torch.from_numpy(is_query),
                                 torch.from_numpy(is_gallery), cmc_top_k=(1,), precision_top_k=(), map_top_k=())
    return float(result["OVERALL"]["cmc"][1])


def oml_curve(data: Path, minutes: float, threads: int, eval_every: int, out: Path,
              weights: Path | None = None) -> list[tuple[float, float]]:
    cfg = {"data": str(data), "out": str(out), "minutes": minutes, "threads": threads, "seed": 0,
           "eval_every_epochs": eval_every}
    if weights is not None:
        cfg.update(weights=str(weights), model=LITE0, im_size=112)
    result = run_json([str(OML_PYTHON), str(HERE / "oml_time_to_accuracy.py"), json.dumps(cfg)])
    labels, is_query, is_gallery = validation_split(data)
    return [(c["train_seconds"], cmc1(np.load(c["file"]), labels, is_query, is_gallery))
            for c in result["checkpoints"]]


def zoo_lite0_weights(path: Path) -> Path:
    """The timm state dict of Lite0 exactly as lookalike's zoo loads it, for the OML side."""
    import torch

    from lookalike.models import TimmExtractor

    extractor = TimmExtractor(LITE0, weights="zoo:efficientnet_lite0.imagenet")
    torch.save(extractor.backbone.net.state_dict(), path)
    return path


def lookalike_curve(data: Path, minutes: float, threads: int, out: Path, recipe: str = "small_images",
                    valid_period: int = 1) -> tuple[list[tuple[float, float]], dict]:
    """Our recipe through the CLI; (training seconds, CMC@1) per validation, and the final metrics."""
    command = [sys.executable, "-m", "lookalike", "train", recipe, f"dataset_root={data}",
               f"max_minutes={minutes}", f"valid_period={valid_period}", f"output_dir={out}", "run_name=recipe",
               "progress_bar=false", "log_images=false", "logger=null"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    history = json.loads((out / "recipe" / "history.json").read_text())
    curve = sorted((entry.get("train_seconds", 0.0), entry["val"]["OVERALL/cmc/1"])
                   for entry in history.values() if "val" in entry)
    final = json.loads((out / "recipe" / "metrics.json").read_text())["metrics"]
    return curve, final


def first_time_reaching(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((seconds for seconds, value in curve if value >= target), None)


def curve_table(name: str, curve: list[tuple[float, float]]) -> str:
    return f"| {name} | " + ", ".join(f"{s / 60:.1f} min: {v:.3f}" for s, v in curve) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--minutes", type=float, default=10.0, help="training-time budget of each side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--oml-eval-every", type=int, default=2, help="OML: validation embeddings every N epochs")
    parser.add_argument("--pretrained", action="store_true",
                        help="both sides start from the same ImageNet EfficientNet-Lite0 weights")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--keep-run", type=Path, default=None,
                        help="copy lookalike's run folder (checkpoints, history, curves) here before it is deleted")
    args = parser.parse_args()
    if args.keep_run is not None and args.keep_run.exists():
        raise SystemExit(f"--keep-run {args.keep_run} exists already; name a new folder")
    if not (args.data / "df.csv").is_file():
        raise SystemExit(f"dataset not found: {args.data / 'df.csv'} (pass --data)")
    if not OML_PYTHON.exists():
        raise SystemExit("OML's virtualenv is missing: run `.venv/bin/python benchmarks/bench_validation.py "
                         "--setup-oml` once.")
    if args.pretrained and subprocess.run([str(OML_PYTHON), "-c", "import timm"], capture_output=True).returncode:
        raise SystemExit(f"the OML side needs timm for EfficientNet-Lite0: {OML_PYTHON} -m pip install timm")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "oml").mkdir()
        start = time.perf_counter()
        recipe, period = ("small_images_pretrained", 3) if args.pretrained else ("small_images", 1)
        ours, final = lookalike_curve(args.data.resolve(), args.minutes, args.threads, tmp / "ours", recipe, period)
        ours_wall = time.perf_counter() - start
        print(curve_table("lookalike", ours), flush=True)
        if args.keep_run is not None:
            shutil.copytree(tmp / "ours" / "recipe", args.keep_run)
        weights = zoo_lite0_weights(tmp / "lite0.pth") if args.pretrained else None
        start = time.perf_counter()
        theirs = oml_curve(args.data.resolve(), args.minutes, args.threads, args.oml_eval_every, tmp / "oml",
                           weights)
        oml_wall = time.perf_counter() - start
        print(curve_table("OML", theirs), flush=True)
    target = theirs[-1][1]
    reach = first_time_reaching(ours, target)
    reach_70 = first_time_reaching(ours, 0.70)
    overall = final["OVERALL"]
    summary = [
        f"- OML after {theirs[-1][0] / 60:.1f} min of training: CMC@1 **{target:.3f}**.",
        f"- lookalike after {ours[-1][0] / 60:.1f} min: CMC@1 **{ours[-1][1]:.3f}**, CMC@5 {overall['cmc']['5']:.3f}, "
        f"precision@5 {overall['precision']['5']:.3f}, mAP@5 {overall['map']['5']:.3f}.",
        "- lookalike reaches OML's final CMC@1 after "
        + (f"**{reach / 60:.1f} min** ({reach / theirs[-1][0]:.2f} of OML's time; target <= 0.33)."
           if reach is not None else "never within its budget."),
        (f"- lookalike reaches CMC@1 >= 0.70 after **{reach_70 / 60:.1f} min** (target: within 10 min)."
         if reach_70 is not None else "- lookalike does not reach CMC@1 >= 0.70 within its budget (target: within "
                                      "10 min)."),
        f"- Wall time including validations and start-up: lookalike {ours_wall / 60:.1f} min, OML {oml_wall / 60:.1f} min.",
    ]
    table = "\n".join(["| side | CMC@1 at training minutes |", "|---|---|", curve_table("lookalike", ours),
                       curve_table("OML", theirs)])
    print("\n".join(summary) + "\n\n" + table)
    print(f"load average before: {load_before[0]:.2f}; after: {os.getloadavg()[0]:.2f}")
    if args.record:
        import torch

        sides = ("lookalike: the shipped `small_images_pretrained` recipe (EfficientNet-Lite0 from the zoo's "
                 "ImageNet weights, 112 px, ArcFace, early stages frozen, validation every 3 epochs); OML 4.0.0: "
                 "the same Lite0 weights (timm's tf_efficientnet_lite0, loaded strictly from the file our zoo "
                 "produces), 112 px, otherwise its set-up below: triplet + hard miner, 16 x 4 balance batches, "
                 "get_augs_torch, AdamW 1e-3, fp32, its plain PyTorch loop" if args.pretrained else
                 "lookalike: the shipped `small_images` recipe (ResNet-18 from scratch, ArcFace, bf16, channels-last, "
                 "64 px); OML 4.0.0: ResNet-18 from scratch, triplet + hard miner, 16 x 4 balance batches, "
                 "get_augs_torch(64), fp32, its plain PyTorch loop")
        flag = " --pretrained" if args.pretrained else ""
        section = PRETRAINED_SECTION if args.pretrained else SECTION
        text = (f"{section}\n\nCommand: `.venv/bin/python benchmarks/bench_time_to_accuracy.py --minutes "
                f"{args.minutes:g}{flag} --record`  \nMachine: {platform.machine()}, {os.cpu_count()} CPUs, "
                f"{args.threads} threads per side, torch {torch.__version__}; {time.strftime('%Y-%m-%d')}; load "
                f"average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after. Data: emoji-open "
                "(934 training labels / 3,585 images; 933 validation labels / 3,584 images, every image a query "
                f"and a gallery item). {sides}. Training seconds exclude validation on both sides; both are "
                "scored by the same metric code.\n\n" + "\n".join(summary) + "\n\n" + table + "\n")
        from results_md import write_section

        write_section(section, text)


if __name__ == "__main__":
    main()
