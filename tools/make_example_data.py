"""Build the built-in example dataset `lookalike/assets/emoji_mini/` from emoji-open (deterministic).

About 200 labels with all their images, from both splits, stratified over the Unicode categories:

    python tools/make_example_data.py --source ../shared/data/emoji-open [--dest lookalike/assets/emoji_mini]

The same arguments always give byte-identical files (labels drawn with a seeded numpy generator).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

DEST = Path(__file__).resolve().parents[1] / "lookalike" / "assets" / "emoji_mini"


def pick_labels(df: pd.DataFrame, split: str, n_labels: int, rng: np.random.Generator) -> list[int]:
    """`n_labels` labels of one split, in proportion to each category's share of that split."""
    per_category = df[df["split"] == split].groupby("category")["label"].unique()
    total = sum(len(labels) for labels in per_category)
    chosen: list[int] = []
    for category, labels in sorted(per_category.items()):
        share = max(1, round(n_labels * len(labels) / total))
        chosen.extend(rng.choice(np.sort(labels), size=min(share, len(labels)), replace=False).tolist())
    return sorted(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/emoji-open")
    parser.add_argument("--n-train", type=int, default=120)
    parser.add_argument("--n-validation", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dest", type=Path, default=DEST, help="output folder (default: the packaged one)")
    args = parser.parse_args()
    dest: Path = args.dest

    df = pd.read_csv(args.source / "df.csv", dtype={"is_query": "string", "is_gallery": "string"})
    rng = np.random.default_rng(args.seed)
    labels = pick_labels(df, "train", args.n_train, rng) + pick_labels(df, "validation", args.n_validation, rng)
    subset = df[df["label"].isin(labels)].copy()
    subset["label"] = subset["label"].map({old: new for new, old in enumerate(sorted(labels))})

    if (dest / "images").exists():
        shutil.rmtree(dest / "images")  # only the images this script wrote before; nothing else is removed
    for path in subset["path"]:
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.source / path, dest / path)
    subset.to_csv(dest / "df.csv", index=False)
    shutil.copyfile(args.source / "LICENSES.md", dest / "LICENSES.md")

    counts = subset.groupby("split").agg(labels=("label", "nunique"), images=("path", "size"))
    (dest / "README.md").write_text(
        "# emoji_mini: the built-in example dataset\n\n"
        "A deterministic subset of the emoji-open dataset: one label is one emoji, its instances are the same\n"
        "emoji drawn in different vendor styles (Google Noto, Twemoji, OpenMoji, Fluent), its category is the\n"
        "Unicode emoji group. 64x64 RGB PNGs. Train and validation splits are disjoint in labels; every\n"
        "validation image is both a query and a gallery item. Licences of the artwork: LICENSES.md.\n\n"
        "| split | labels | images |\n|---|---:|---:|\n"
        + "".join(f"| {split} | {row.labels} | {row.images} |\n" for split, row in counts.iterrows())
        + f"\nCategories: {subset['category'].nunique()}.\n\n"
        f"Made with `python tools/make_example_data.py --n-train {args.n_train} "
        f"--n-validation {args.n_validation} --seed {args.seed}` from emoji-open.\n"
    )
    print(counts.to_string())


if __name__ == "__main__":
    main()
