"""Validation metrics through the public API at scale: `evaluate_embeddings` on 10k queries x 1M gallery items,
and FNMR@FMR against a top-k search of the same N; each case in a fresh process (its own peak RSS).

    .venv/bin/python benchmarks/bench_metrics_scale.py [--record]                  # about 10 minutes
    .venv/bin/python benchmarks/bench_metrics_scale.py --n 101000 --nq 1000         # a quick check

Large cases: unit vectors of dim 384, the first ``--nq`` rows are the queries, every other row the gallery
(``is_gallery = ~is_query``), top-10 metrics (CMC@1/5/10, precision@10, mAP@10). "uniform": random directions
(the gallery is not clustered: many near-ties around each query's k-th neighbour); "clustered": about 50 items
per cluster (like trained embeddings). The floor is the time this machine's fp32 matmul (measured in the same
run, 4096 x 384 @ 384 x 4096) needs for the 2 Nq Ng d flops of scoring every pair once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
SECTION = "## Validation metrics at scale (public API)"

from bench_validation import peak_rss_mib, proc_status_mib  # noqa: E402 - a sibling script (benchmarks/ on sys.path)


def make_embeddings(n: int, dim: int, kind: str, seed: int = 0) -> torch.Tensor:
    """Unit vectors, generated in place chunk by chunk: uniform directions or ~50 items per cluster."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(n, dim)
    centres = None
    if kind == "clustered":
        centres = torch.nn.functional.normalize(torch.randn(max(n // 50, 1), dim, generator=gen), dim=1)
    for a in range(0, n, 65536):
        b = min(a + 65536, n)
        block = torch.randn(b - a, dim, generator=gen)
        if centres is not None:
            block = centres[torch.randint(0, len(centres), (b - a,), generator=gen)] + 0.6 / dim**0.5 * block
        out[a:b] = torch.nn.functional.normalize(block, dim=1)
    return out


def matmul_gflops(dim: int = 384, block: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(block, dim), torch.randn(dim, block)
    out = torch.empty(block, block)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * block * block * dim / best / 1e9


def large_worker(n: int, nq: int, dim: int, kind: str, distance: str, api: str) -> dict:
    """One evaluate_embeddings / EmbeddingMetrics call on the large set (run in a fresh process)."""
    from lookalike.metrics import EmbeddingMetrics, evaluate_embeddings

    x = make_embeddings(n, dim, kind)
    labels = torch.arange(n) % max(n // 5, 1)  # 5 items per label, spread out: every query has 4 relevant items
    is_query = torch.zeros(n, dtype=torch.bool)
    is_query[:nq] = True
    is_gallery = ~is_query
    rss_data = proc_status_mib("VmRSS")
    start = time.perf_counter()
    if api == "evaluate_embeddings":
        out = evaluate_embeddings(x, labels, is_query, is_gallery, cmc_top_k=(1, 5, 10), precision_top_k=(10,),
                                  map_top_k=(10,), distance=distance)
        stats = {}
    else:
        metrics = EmbeddingMetrics(cmc_top_k=(1, 5, 10), precision_top_k=(10,), map_top_k=(10,), distance=distance)
        for a in range(0, n, 100_000):  # batches, as a validation loop feeds them
            metrics.update(x[a : a + 100_000], labels[a : a + 100_000], is_query[a : a + 100_000],
                           is_gallery[a : a + 100_000], torch.arange(a, min(a + 100_000, n)))
        out = metrics.compute()
        stats = {"ids_sum": int(metrics.last_results.retrieved_ids.sum())}
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib(), "rss_after_data_mib": rss_data,
            "input_mib": x.numel() * 4 / 2**20, "cmc": out["OVERALL"]["cmc"], "map": out["OVERALL"]["map"], **stats}


def fnmr_worker(n: int, dim: int, fmr_vals: list[float]) -> dict:
    """FNMR@FMR and a top-k search on the same N items (every item query and gallery, 5 items per label)."""
    from lookalike.metrics import fnmr_at_fmr
    from lookalike.retrieval import RetrievalResults

    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) // 5
    centres = torch.randn(n // 5 + 1, dim, generator=gen)
    x = torch.nn.functional.normalize(centres[labels] + 4.0 * torch.randn(n, dim, generator=gen), dim=1)
    flags = torch.ones(n, dtype=torch.bool)
    start = time.perf_counter()
    RetrievalResults.from_embeddings(x, labels, flags, flags, k=10)
    search_s = time.perf_counter() - start
    start = time.perf_counter()
    values = fnmr_at_fmr(x, labels, flags, flags, fmr_vals)
    fnmr_s = time.perf_counter() - start
    return {"search_s": search_s, "fnmr_s": fnmr_s, "fnmr": values, "peak_rss_mib": peak_rss_mib()}


def run_json(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["large", "fnmr"], help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="uniform", help=argparse.SUPPRESS)
    parser.add_argument("--distance", default="cosine", help=argparse.SUPPRESS)
    parser.add_argument("--api", default="evaluate_embeddings", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1_010_000, help="items in the large set (queries included)")
    parser.add_argument("--nq", type=int, default=10_000, help="queries: the first rows")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--cases", nargs="*", default=["uniform:cosine", "uniform:euclidean", "clustered:cosine",
                                                       "clustered:euclidean", "uniform:cosine:EmbeddingMetrics"],
                        help="kind:distance[:api] large cases to run")
    parser.add_argument("--fnmr-n", type=int, default=20_000, help="N of the FNMR@FMR case (0: skip)")
    parser.add_argument("--fmr-vals", type=float, nargs="+", default=[0.001, 0.01, 0.1])
    parser.add_argument("--record", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.worker == "large":
        print(json.dumps(large_worker(args.n, args.nq, args.dim, args.kind, args.distance, args.api)))
        return
    if args.worker == "fnmr":
        print(json.dumps(fnmr_worker(args.n, args.dim, args.fmr_vals)))
        return

    before = uptime()
    print(before, flush=True)
    gflops = matmul_gflops(args.dim)
    ng = args.n - args.nq
    floor = 2 * args.nq * ng * args.dim / 1e9 / gflops
    print(f"fp32 matmul {gflops:.0f} GFLOP/s; floor for {2 * args.nq * ng * args.dim / 1e12:.2f} TFLOP: "
          f"{floor:.1f} s", flush=True)
    rows = []
    for case in args.cases:
        kind, distance, *api = case.split(":")
        api = api[0] if api else "evaluate_embeddings"
        r = run_json(["--worker", "large", "--n", str(args.n), "--nq", str(args.nq), "--dim", str(args.dim),
                      "--kind", kind, "--distance", distance, "--api", api])
        over = r["peak_rss_mib"] - r["input_mib"]
        rows.append(f"| {api} | {kind} | {distance} | {r['seconds']:.1f} | {r['seconds'] / floor:.2f}x "
                    f"| {r['peak_rss_mib']:.0f} | {r['input_mib']:.0f} | {over:.0f} "
                    f"| {r['cmc']['1']:.4f} / {r['cmc']['10']:.4f} |")
        print(rows[-1], flush=True)
    fnmr_row = ""
    if args.fnmr_n:
        f = run_json(["--worker", "fnmr", "--n", str(args.fnmr_n), "--dim", str(args.dim), "--fmr-vals",
                      *map(str, args.fmr_vals)])
        fnmr_row = (f"| {args.fnmr_n:,} | {', '.join(map(str, args.fmr_vals))} | {f['search_s']:.2f} "
                    f"| {f['fnmr_s']:.2f} | {f['fnmr_s'] / f['search_s']:.2f}x | {f['peak_rss_mib']:.0f} "
                    f"| {json.dumps(f['fnmr'])} |")
        print(fnmr_row, flush=True)
    after = uptime()
    print(after, flush=True)
    text = "\n".join([
        SECTION, "",
        f"Command: `.venv/bin/python benchmarks/bench_metrics_scale.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')} UTC.  ",
        f"`uptime` before: `{before}`; after: `{after}`.", "",
        f"{args.nq:,} queries x {ng:,} gallery items, dim {args.dim}, top-10 metrics, default backend "
        "(`exact`). Each row is a fresh process; peak RSS = `VmHWM`; \"above input\" = peak RSS minus the "
        f"embeddings' own size. fp32 matmul measured in the same run: {gflops:.0f} GFLOP/s, so the floor for the "
        f"{2 * args.nq * ng * args.dim / 1e12:.2f} TFLOP of scoring every pair once is {floor:.1f} s.", "",
        "| API | data | distance | time (s) | vs fp32 floor | peak RSS (MiB) | input (MiB) | above input (MiB) "
        "| CMC@1 / @10 |",
        "|---|---|---|---|---|---|---|---|---|", *rows, "",
    ])
    if fnmr_row:
        text += "\n".join([
            f"FNMR@FMR against a top-10 search (`RetrievalResults.from_embeddings`) of the same {args.fnmr_n:,} "
            "items (every item query and gallery, 5 items per label, random directions around label centres):", "",
            "| N | FMR values | top-10 search (s) | fnmr_at_fmr (s) | ratio | peak RSS (MiB) | FNMR |",
            "|---|---|---|---|---|---|---|", fnmr_row, ""])
    print(text)
    if args.record:
        from results_md import write_section

        write_section(SECTION, text)


if __name__ == "__main__":
    main()
