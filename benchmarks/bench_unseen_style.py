"""Does a shipped recipe (default `small_images_pretrained`) generalise to a drawing style it never saw?
Leave-one-style-out on emoji-open.

Trains the recipe on emoji-open's training split *without* one style (default: fluent), then retrieves, for
the validation labels, each image of the held-out style (queries) among the images of the other styles
(gallery). The same protocol on a model trained with every style (`--seen-run`, e.g. the run folder of
bench_time_to_accuracy.py) tells how much of the accuracy is owed to having seen the style.

    .venv/bin/python benchmarks/bench_unseen_style.py [--config small_images_pretrained] [--style fluent] \
        [--minutes 10] [--seen-run RUN] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "emoji-open"
SECTION = "## Unseen drawing style (leave one style out)"


def holdout_csv(data: Path, style: str, out: Path) -> Path:
    """Training rows without ``style``; validation rows: ``style`` as queries, the other styles as gallery."""
    import pandas as pd

    table = pd.read_csv(data / "df.csv")
    if style not in set(table["style"]):
        raise SystemExit(f"style {style!r} not in {sorted(set(table['style']))}")
    table["path"] = [str(data / p) for p in table["path"]]
    train = table[(table["split"] == "train") & (table["style"] != style)]
    val = table[table["split"] == "validation"].copy()
    val["is_query"] = val["style"] == style
    val["is_gallery"] = val["style"] != style
    has_gallery = val[val["is_gallery"]].groupby("label").size()
    val = val[val["label"].isin(has_gallery.index)]  # every query keeps a relevant gallery item
    path = out / "holdout.csv"
    pd.concat([train, val]).to_csv(path, index=False)
    return path


def lookalike(*args: str) -> None:
    command = [sys.executable, "-m", "lookalike", *args, "progress_bar=false"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")


def cmc(metrics_json: Path) -> dict:
    overall = json.loads(metrics_json.read_text())["metrics"]["OVERALL"]
    return {"cmc1": overall["cmc"]["1"], "cmc5": overall["cmc"]["5"], "queries": int(overall["n_queries"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--config", default="small_images_pretrained", help="a shipped config name or a YAML file")
    parser.add_argument("--style", default="fluent")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seen-run", type=Path, help="a run trained on every style, scored with the same protocol")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    data = args.data.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        csv = holdout_csv(data, args.style, tmp)
        common = [f"dataset_root={tmp}", f"csv={csv.name}", f"output_dir={tmp}", "log_images=false"]
        start = time.perf_counter()
        lookalike("train", args.config, *common, f"max_minutes={args.minutes}", "run_name=unseen",
                  "logger=null", "valid_period=100")
        wall = time.perf_counter() - start
        unseen = cmc(tmp / "unseen" / "metrics.json")
        history = json.loads((tmp / "unseen" / "history.json").read_text())
        trained_s = max(entry.get("train_seconds", 0.0) for entry in history.values())
        epochs = json.loads((tmp / "unseen" / "metrics.json").read_text())["epoch"]
        seen = None
        if args.seen_run is not None:
            lookalike("validate", str(args.seen_run.resolve()), *common, "run_name=seen")
            seen = cmc(tmp / "seen" / "metrics.json")
    lines = [f"- trained without `{args.style}` ({int(epochs)} epochs, {trained_s / 60:.1f} min of training "
             f"within a {args.minutes:g}-min budget, {wall / 60:.1f} min wall): "
             f"CMC@1 **{unseen['cmc1']:.3f}**, CMC@5 {unseen['cmc5']:.3f} over {unseen['queries']} "
             f"`{args.style}` queries against the other styles."]
    if seen is not None:
        lines.append(f"- trained with every style (`{args.seen_run}`), same queries and gallery: CMC@1 "
                     f"**{seen['cmc1']:.3f}**, CMC@5 {seen['cmc5']:.3f}.")
    print("\n".join(lines))
    if args.record:
        from results_md import write_section

        command = " ".join(["benchmarks/bench_unseen_style.py", *sys.argv[1:]])
        section = SECTION if args.config == "small_images" else f"{SECTION}: `{args.config}`"
        text = (f"{section}\n\nCommand: `.venv/bin/python {command}`; {time.strftime('%Y-%m-%d')}, "
                f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end. The `{args.config}` recipe; "
                "validation labels only (never trained on); "
                f"queries: the held-out style, gallery: the other styles.\n\n" + "\n".join(lines) + "\n")
        write_section(section, text)


if __name__ == "__main__":
    main()
