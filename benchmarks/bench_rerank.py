"""Re-rankers on emoji-open from a trained run: CMC@1 / mAP@5 of the base search, + query expansion,
+ k-reciprocal, + pairwise (embeddings), + pairwise (images), the pairwise training times, and the validation
time of each against the base validation at top_n = 5, 20, 50 (all on the same validation embeddings, measured in
the same run).

    .venv/bin/python benchmarks/bench_rerank.py --run runs/<run trained with holdout_labels=0.2> \\
        [--reference-run runs/<the same recipe on every train label>] [--image-pairs] [--record]

The pairwise models are trained by the train-pairwise pipeline on pairs mined from the labels the run held out
(`holdout_labels`; a run without them mines its own training labels). ``--reference-run``: the same recipe trained
on every train label, whose base CMC@1 is the like-for-like baseline of "base + re-ranker". Validation time =
search + re-ranking + metrics; the last column adds the embedding of the validation images to both sides.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTION = "## Re-ranking on emoji-open (query expansion, k-reciprocal, pairwise)"


def timed(fn, repeats: int = 1):
    best, out = None, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return out, best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True, help="a trained lookalike train run folder")
    parser.add_argument("--reference-run", help="the same recipe trained on every train label (its base row)")
    parser.add_argument("--minutes", type=float, default=3.0, help="pairwise training budget")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=64, help="hidden width of the embedding pairwise MLP")
    parser.add_argument("--n-negatives", type=int, default=10)
    parser.add_argument("--residual", action=argparse.BooleanOptionalAction, default=True,
                        help="the embedding MLP adds to a scaled cosine (starts at the search's order)")
    parser.add_argument("--blends", type=float, nargs="+", default=[0.0, 0.5],
                        help="pairwise rows: weight of the search distance in the re-ranking score")
    parser.add_argument("--image-pairs", action="store_true", help="also train and measure image_siamese (n=20)")
    parser.add_argument("--record", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    import torch

    from lookalike.inference import image_source
    from lookalike.models.pairwise import load_pairwise_model
    from lookalike.pipelines.embedders import embedder_for
    from lookalike.pipelines.pairwise import _extractor_config, _metrics, embed_splits, load_pairwise_config, \
        mining_split, train_pairwise
    from lookalike.postprocess import KReciprocalReranker, PairwiseReranker, QueryExpansion

    common = [f"max_minutes={args.minutes}", f"max_epochs={args.epochs}", "valid_period=1000", "accelerator=cpu",
              "logger=null", f"n_negatives={args.n_negatives}", "top_n=20"]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "pairwise.yaml"
        config.write_text("extractor_run: " + args.run + "\n")
        cfg, _ = load_pairwise_config(config, [f"extractor_run={args.run}", "accelerator=cpu"])
        base = _extractor_config(cfg)
        mined_from = mining_split(base, "auto")
        splits, embed_s = timed(lambda: embed_splits(base, 256))
        val, train = splits["validation"], splits["train"]
        embedder = embedder_for(base)
        _, val_embed_s = timed(lambda: embedder.embed_source(image_source(val["table"]), progress=False))
        every = torch.ones(len(train["labels"]), dtype=torch.bool)  # the mined rows, searched in themselves
        mined_cmc1 = _metrics({**train, "is_query": every.numpy(), "is_gallery": every.numpy()})["OVERALL"]["cmc"][1]
        mlp = (f"pairwise_model={{name: embedding_mlp, args: {{hidden_dims: [{args.hidden}], dropout: 0.1, "
               f"residual: {str(args.residual).lower()}}}}}")
        result = train_pairwise(config, [*common, mlp, f"output_dir={tmp}/out"], splits=splits)
        model = load_pairwise_model(result["best_checkpoint"])
        image_row = None
        if args.image_pairs:
            siamese = "pairwise_model={name: image_siamese, args: {channels: 64, hidden_dims: [128]}}"
            img = train_pairwise(config, [*common, siamese, f"output_dir={tmp}/out_img"], splits=splits)
            image_model = load_pairwise_model(img["best_checkpoint"], extractor=embedder.model)
            image_row = (img, image_model)
        reference = ""
        if args.reference_run:  # its validation embeddings only: the same validation table
            ref_cfg, _ = load_pairwise_config(config, [f"extractor_run={args.reference_run}", "accelerator=cpu"])
            ref = embedder_for(_extractor_config(ref_cfg)).embed_source(image_source(val["table"]), progress=False)
            ref_o = _metrics({**val, "embeddings": ref.embeddings})["OVERALL"]
            reference = (f"The same recipe trained on every train label (`{args.reference_run}`): CMC@1 "
                         f"{ref_o['cmc'][1]:.4f}, mAP@5 {ref_o['map'][5]:.4f}: the like-for-like baseline of "
                         "\"base + re-ranker\" rows below, whose extractor trained on fewer labels.")
    torch.set_num_threads(torch.get_num_threads())

    rows = []
    base_metrics, base_s = timed(lambda: _metrics(val), repeats=3)
    rows.append(("base (exact search)", "-", base_metrics, base_s))
    for n in (5, 20, 50):
        pairwise = [(f"+ pairwise (embeddings), blend {w:g}", PairwiseReranker(model, top_n=n, blend=w))
                    for w in args.blends]
        for name, post in (("+ query expansion", QueryExpansion(top_n=n)),
                           ("+ k-reciprocal (20, 6, 0.3)", KReciprocalReranker(top_n=n)),
                           ("+ k-reciprocal (4, 2, 0.3)", KReciprocalReranker(k1=4, k2=2, top_n=n)), *pairwise):
            m, s = timed(lambda: _metrics(val, post), repeats=3)
            rows.append((name, n, m, s))
    if image_row is not None:
        for w in args.blends:
            post = PairwiseReranker(image_row[1], top_n=20, blend=w, images=val["table"],
                                    transform=embedder.transform)
            m, s = timed(lambda: _metrics(val, post))
            rows.append((f"+ pairwise (images), blend {w:g}", 20, m, s))
    base_s = min(base_s, timed(lambda: _metrics(val), repeats=3)[1])  # again after the rows: the best of six
    rows[0] = (*rows[0][:3], base_s)

    load = os.getloadavg()
    n_labels = len(set(train["labels"].tolist()))
    lines = [SECTION, "",
             f"Command: `.venv/bin/python benchmarks/bench_rerank.py {' '.join(sys.argv[1:])}`; "
             f"validation split of emoji-open ({len(val['labels'])} queries = gallery). Load average during the run "
             f"(`uptime`): {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} on 2 cores; ratios are measured in the same "
             "run (each time the best of 3 runs, the base the best of 6, before and after the rows; image rows one "
             "run).", "",
             f"Pairs mined from: **{mined_from}** labels ({n_labels} labels, {len(train['labels'])} images"
             + (", held out of the extractor's training by `holdout_labels`" if mined_from == "holdout" else
                ", the extractor's own training labels") + f"); CMC@1 of those rows searched in themselves: "
             f"{mined_cmc1:.4f}, against {rows[0][2]['OVERALL']['cmc'][1]:.4f} on the validation labels.", "",
             *([reference, ""] if reference else []),
             f"Embedding the run's splits: {embed_s:.1f} s; the validation images alone: {val_embed_s:.1f} s. "
             f"Pairwise training (embedding_mlp, hidden {args.hidden}"
             + (", residual over the cosine" if args.residual else "") + f"): {result['train_seconds']:.1f} s"
             + (f"; image_siamese: {image_row[0]['train_seconds']:.1f} s" if image_row else "")
             + f" (budget {args.minutes} min each).", "",
             "| re-ranker | top_n | CMC@1 | mAP@5 | validation s | x base | x base, with embedding |",
             "|---|---|---|---|---|---|---|"]
    for name, n, m, s in rows:
        o = m["OVERALL"]
        lines.append(f"| {name} | {n} | {o['cmc'][1]:.4f} | {o['map'][5]:.4f} | {s:.2f} | {s / base_s:.2f} | "
                     f"{(s + val_embed_s) / (base_s + val_embed_s):.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout)
    if args.record:
        sys.path.insert(0, str(HERE))
        from results_md import write_section

        write_section(SECTION, text)


if __name__ == "__main__":
    main()
