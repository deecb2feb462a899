"""Texts: the frozen all-MiniLM-L6-v2 vs the same model fine-tuned with the shipped `texts` config, on the
validation split of the built-in emoji texts (emoji never seen in training; every text is a query and a
gallery item), and the training throughput in texts per second.

The reference is measured in the same run: `lookalike train texts` validates the frozen encoder before training
(`validate_before_training`), fine-tunes for at most `--minutes` of training time (validation excluded), and
validates again. Throughput = optimizer steps x batch size / training seconds (from the run's last checkpoint
and history.json).

    flock /tmp/lookalike-cpu.lock .venv/bin/python benchmarks/bench_texts.py [--minutes 10] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTION = "## Texts: frozen MiniLM vs fine-tuned (emoji texts)"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime unavailable"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training-time budget (max_minutes)")
    parser.add_argument("--out", default=None, help="runs folder (default: a temporary folder)")
    parser.add_argument("--record", action="store_true", help="write the result into benchmarks/RESULTS.md")
    parser.add_argument("overrides", nargs="*", help="extra config overrides key=value")
    args = parser.parse_args()

    import torch

    from lookalike.pipelines import train
    from lookalike.pipelines.report import flatten_metrics

    before_uptime = uptime()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_texts_"))
    overrides = [f"max_minutes={args.minutes}", f"output_dir={out}", "run_name=texts", "progress_bar=false",
                 *args.overrides]
    started = time.perf_counter()
    result = train("texts", overrides)
    wall = time.perf_counter() - started
    after_uptime = uptime()

    before = flatten_metrics(result["initial_metrics"])
    after = result["metrics_flat"]
    run = Path(result["run_dir"])
    history = json.loads((run / "history.json").read_text())
    last_epoch = max(history, key=int)
    train_seconds = float(history[last_epoch]["train_seconds"])
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True, mmap=True)
    steps = int(state["global_step"])
    config = (run / "config.yaml").read_text()
    import yaml

    cfg = yaml.safe_load(config)
    batch = cfg["sampler"]["args"]["n_labels"] * cfg["sampler"]["args"]["n_instances"]
    texts_per_s = steps * batch / train_seconds if train_seconds else float("nan")
    figures = {
        "frozen": {k: before[f"OVERALL/{k}"] for k in ("cmc/1", "cmc/5", "map/5")},
        "fine_tuned": {k: after[f"OVERALL/{k}"] for k in ("cmc/1", "cmc/5", "map/5")},
        "best_cmc1": result["best_score"],
        "epochs": int(last_epoch), "steps": steps, "batch": batch, "train_seconds": round(train_seconds, 1),
        "train_texts_per_s": round(texts_per_s, 1), "wall_seconds": round(wall, 1),
        "n_queries": int(after["OVERALL/n_queries"]), "threads": torch.get_num_threads(),
        "uptime_before": before_uptime, "uptime_after": after_uptime, "run_dir": str(run),
    }
    print(json.dumps(figures, indent=2))

    if args.record:
        f, t = figures["frozen"], figures["fine_tuned"]
        command = "flock /tmp/lookalike-cpu.lock .venv/bin/python benchmarks/bench_texts.py --minutes " \
                  f"{args.minutes:g} --record" + (" " + " ".join(args.overrides) if args.overrides else "")
        text = "\n".join([
            SECTION,
            "",
            f"Command: `{command}`  ",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}  ",
            f"uptime before: `{before_uptime}`  ",
            f"uptime after: `{after_uptime}`",
            "",
            f"Validation split of `lookalike/assets/emoji_texts` ({figures['n_queries']} texts of emoji never "
            "trained on, each a query and a gallery item); config `texts` (all-MiniLM-L6-v2, 32 x 4 balance "
            "batches, triplet loss with hard mining, AdamW 5e-5), at most "
            f"{args.minutes:g} minutes of training.",
            "",
            "| model | CMC@1 | CMC@5 | mAP@5 |",
            "|---|---|---|---|",
            f"| frozen all-MiniLM-L6-v2 | {f['cmc/1']:.4f} | {f['cmc/5']:.4f} | {f['map/5']:.4f} |",
            f"| fine-tuned, {figures['epochs']} epochs ({figures['steps']} steps, {figures['train_seconds']:.0f} s) "
            f"| {t['cmc/1']:.4f} | {t['cmc/5']:.4f} | {t['map/5']:.4f} |",
            "",
            f"CMC@1 {t['cmc/1'] / f['cmc/1']:.2f}x the frozen encoder's. Training throughput: "
            f"{figures['train_texts_per_s']:.1f} texts/s (batches of {batch}, fp32). Wall time "
            f"{figures['wall_seconds'] / 60:.1f} min including the validations.",
        ])
        sys.path.insert(0, str(HERE))
        from results_md import write_section

        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
