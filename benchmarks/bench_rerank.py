"""Re-rankers on emoji-open from a trained run: CMC@1 / mAP@5 of the base search, + query expansion,
+ k-reciprocal, + pairwise (embeddings), the pairwise training time, and the validation time of each against
the base validation at top_n = 5, 20, 50 (all on the same validation embeddings, measured in the same run).

    .venv/bin/python benchmarks/bench_rerank.py --run runs/<small_images run> [--minutes 3] [--record]

The run's data are embedded once (lookalike.pipelines.pairwise.embed_splits); the pairwise model is trained by
the train-pairwise pipeline on those embeddings. Validation time = search + re-ranking + metrics.
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
    parser.add_argument("--minutes", type=float, default=3.0, help="pairwise training budget")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--blends", type=float, nargs="+", default=[0.0, 0.5],
                        help="pairwise rows: weight of the search distance in the re-ranking score")
    parser.add_argument("--record", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    import torch

    from lookalike.models.pairwise import load_pairwise_model
    from lookalike.pipelines.pairwise import _extractor_config, _metrics, embed_splits, load_pairwise_config, \
        train_pairwise
    from lookalike.postprocess import KReciprocalReranker, PairwiseReranker, QueryExpansion

    cfg_overrides = [f"extractor_run={args.run}", f"max_minutes={args.minutes}", f"max_epochs={args.epochs}",
                     "valid_period=1000", "accelerator=cpu", "logger=null"]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "pairwise.yaml"
        config.write_text("extractor_run: " + args.run + "\n")
        cfg, _ = load_pairwise_config(config, cfg_overrides)
        base = _extractor_config(cfg)
        splits, embed_s = timed(lambda: embed_splits(base, 256))
        val = splits["validation"]
        train = splits["train"]
        n_train = len(train["labels"])
        every = torch.ones(n_train, dtype=torch.bool)  # the split the pairs are mined from, searched in itself
        train_cmc1 = _metrics({**train, "is_query": every.numpy(), "is_gallery": every.numpy()})["OVERALL"]["cmc"][1]
        result = train_pairwise(config, cfg_overrides + [f"output_dir={tmp}/out", "top_n=20"], splits=splits)
        model = load_pairwise_model(result["best_checkpoint"])
    torch.set_num_threads(torch.get_num_threads())

    rows = []
    base_metrics, base_s = timed(lambda: _metrics(val), repeats=3)
    rows.append(("base (exact search)", "-", base_metrics, base_s))
    for n in (5, 20, 50):
        pairwise = [(f"+ pairwise (embeddings), blend {w:g}", PairwiseReranker(model, top_n=n, blend=w))
                    for w in args.blends]
        for name, post in (("+ query expansion", QueryExpansion(top_n=n)),
                           ("+ k-reciprocal (20, 6, 0.3)", KReciprocalReranker(top_n=n)), *pairwise):
            m, s = timed(lambda: _metrics(val, post), repeats=3)
            rows.append((name, n, m, s))
    base_s = min(base_s, timed(lambda: _metrics(val), repeats=3)[1])  # again after the rows: the best of six
    rows[0] = (*rows[0][:3], base_s)

    load = os.getloadavg()
    lines = [SECTION, "",
             f"Command: `.venv/bin/python benchmarks/bench_rerank.py {' '.join(sys.argv[1:])}`; "
             f"validation split of emoji-open ({len(val['labels'])} queries = gallery). Load average during the run "
             f"(`uptime`): {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} on 2 cores shared with other agents, so "
             "every time is inflated and noisy; ratios are measured in the same run (each time the best of 3 runs, the "
             "base the best of 6, before and after the rows).", "",
             f"CMC@1 of the train split searched in itself (the labels the extractor and the pairwise model were "
             f"trained on, where the pairs are mined): {train_cmc1:.4f}, against {rows[0][2]['OVERALL']['cmc'][1]:.4f} "
             "on the validation labels.", "",
             f"Embedding both splits: {embed_s:.1f} s. Pairwise training (embedding_mlp, "
             f"{result['train_seconds']:.1f} s of training, budget {args.minutes} min).", "",
             "| re-ranker | top_n | CMC@1 | mAP@5 | validation s | x base |", "|---|---|---|---|---|---|"]
    for name, n, m, s in rows:
        o = m["OVERALL"]
        lines.append(f"| {name} | {n} | {o['cmc'][1]:.4f} | {o['map'][5]:.4f} | {s:.2f} | {s / base_s:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout)
    if args.record:
        sys.path.insert(0, str(HERE))
        from results_md import write_section

        write_section(SECTION, text)


if __name__ == "__main__":
    main()
