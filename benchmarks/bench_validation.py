"""Validation metrics at scale: lookalike vs OML 4.0.0, wall time and peak memory, same data, same run.

Random normalised embeddings (dim 384, 5 items per label, every item both query and gallery). Each side runs
in its own fresh process (OML in its own virtualenv, benchmarks/.venv-oml), so peak RSS is comparable.

    .venv/bin/python benchmarks/bench_validation.py [--sizes 20000 50000] [--setup-oml] [--record]

--setup-oml creates benchmarks/.venv-oml when missing; --record appends the table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OML_PYTHON = HERE / ".venv-oml" / "bin" / "python"
OML_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "open-metric-learning==4.0.0",
                    "pytorch-lightning==2.1.2", "hydra-core==1.3.0", "numpy<2", "setuptools<81",
                    "timm==1.0.31"]  # timm: the OML side of bench_time_to_accuracy --pretrained
SECTION = "## Validation metrics vs OML 4.0.0"


def proc_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmHWM: peak RSS of this process image, VmRSS: now) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return proc_status_mib("VmHWM")


def ours(data: Path, backend: str) -> dict:
    """lookalike's side (run in a subprocess): accumulate in batches, then compute."""
    import torch

    from lookalike.metrics import EmbeddingMetrics

    embeddings = torch.from_numpy(np.load(data / "embeddings.npy"))
    labels = torch.from_numpy(np.load(data / "labels.npy"))
    flags = torch.ones(len(labels), dtype=torch.bool)
    rss_after_data = peak_rss_mib()
    start = time.perf_counter()
    metrics = EmbeddingMetrics(cmc_top_k=(1, 5), precision_top_k=(5,), map_top_k=(5,), backend=backend)
    for i in range(0, len(labels), 1024):
        j = min(i + 1024, len(labels))
        metrics.update(embeddings[i:j], labels[i:j], flags[i:j], flags[i:j], torch.arange(i, j))
    overall = metrics.compute()["OVERALL"]
    seconds = time.perf_counter() - start
    # OML normalises AP@k by the hits found in the top k (ours: by min(k, relevant)); recompute its variant
    # from our own retrieval results to check that the rankings agree
    hits = metrics.last_results.is_relevant[:, :5].double()
    precision_at_i = hits.cumsum(1) / torch.arange(1, 6)
    oml_map = ((precision_at_i * hits).sum(1) / hits.sum(1).clamp(min=1)).mean()
    per_query = metrics.last_per_query
    np.savez(data / "ours_per_query.npz", cmc1=per_query["cmc"][1].numpy(), cmc5=per_query["cmc"][5].numpy(),
             precision5=per_query["precision"][5].numpy(),
             map5_oml=((precision_at_i * hits).sum(1) / hits.sum(1).clamp(min=1)).numpy())
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib(),
            "rss_after_data_mib": rss_after_data, "cmc": overall["cmc"], "precision": overall["precision"],
            "map": overall["map"], "map_oml_definition": float(oml_map)}


def make_data(folder: Path, n: int, dim: int = 384, per_label: int = 5, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) // per_label
    centres = rng.normal(size=(n // per_label + 1, dim)).astype(np.float32)
    x = centres[labels] + 4.0 * rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.save(folder / "embeddings.npy", x.astype(np.float32))
    np.save(folder / "labels.npy", labels.astype(np.int64))


def matmul_gflops(dtype_name: str, dim: int = 384, block: int = 4096, repeats: int = 5) -> float:
    """Measured throughput of this machine's (block x dim) @ (dim x block) matmul, the core of exact search."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(block, dim).to(dtype), torch.randn(dim, block).to(dtype)
    out = torch.empty(block, block, dtype=dtype)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * block * block * dim / best / 1e9


def growth_rows(sizes: list[int], backend: str) -> list[str]:
    """lookalike's time at each N next to the matmul floor 2 N^2 d / throughput (all pairs must be scored)."""
    fp32, bf16 = matmul_gflops("float32"), matmul_gflops("bfloat16")
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            make_data(Path(tmp), n)
            mine = run_json([sys.executable, __file__, "--worker", "ours", "--data", tmp, "--backend", backend])
        flops = 2 * n * n * 384 / 1e9
        rows.append(f"| {n:,} | {mine['seconds']:.2f} | {flops / fp32:.2f} | {flops / bf16:.2f} "
                    f"| {mine['seconds'] / (flops / bf16):.1f}x |")
        print(rows[-1], flush=True)
    head = (f"Matmul throughput measured in the same run (4096 x 384 @ 384 x 4096): fp32 {fp32:.0f} GFLOP/s, "
            f"bf16 {bf16:.0f} GFLOP/s. Floor = the time to score all N^2 pairs once at that throughput.\n\n"
            "| N | lookalike (s) | fp32 matmul floor (s) | bf16 matmul floor (s) | lookalike / bf16 floor |\n"
            "|---|---|---|---|---|")
    return [head, *rows]


def run_json(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def setup_oml() -> None:
    if OML_PYTHON.exists():
        return
    subprocess.run([sys.executable, "-m", "venv", str(HERE / ".venv-oml")], check=True)
    subprocess.run([str(OML_PYTHON), "-m", "pip", "install", "-q", *OML_REQUIREMENTS], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["ours"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="exact", help="lookalike search backend (exact, exact-bf16, ...)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 50000])
    parser.add_argument("--setup-oml", action="store_true")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--growth-sizes", type=int, nargs="*", default=[5000, 10000, 20000, 50000],
                        help="sizes for the lookalike-only growth table (none: skip it)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(ours(args.data, args.backend)))
        return
    if args.setup_oml:
        setup_oml()
    if not OML_PYTHON.exists():
        raise SystemExit("OML's virtualenv is missing: run with --setup-oml once (it installs OML 4.0.0 there).")

    import os

    load_before = os.getloadavg()
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            make_data(Path(tmp), n)
            mine = run_json([sys.executable, __file__, "--worker", "ours", "--data", tmp, "--backend", args.backend])
            theirs = run_json([str(OML_PYTHON), str(HERE / "oml_reference.py"), tmp])
            a, b = np.load(Path(tmp) / "ours_per_query.npz"), np.load(Path(tmp) / "oml_per_query.npz")
            # queries whose value differs (0 = identical per query, not only on average)
            differ = {name: int((np.abs(a[name] - b[name]) > 1e-6).sum()) for name in ("cmc1", "cmc5", "precision5")}
            differ["map5"] = int((np.abs(a["map5_oml"] - b["map5"]) > 1e-6).sum())
        # identical = every query has the same value (OML averages in float32, so means agree to ~1e-7 only)
        same_cmc = f"{differ['cmc1'] == differ['cmc5'] == 0} ({differ['cmc1']} / {differ['cmc5']} queries differ)"
        same_precision = f"{differ['precision5'] == 0} ({differ['precision5']} differ)"
        same_map = f"{differ['map5'] == 0} ({differ['map5']} differ)"
        extra_mine = mine["peak_rss_mib"] - mine["rss_after_data_mib"]
        extra_theirs = theirs["peak_rss_mib"] - theirs["rss_after_data_mib"]
        row = (f"| {n:,} | {theirs['seconds']:.2f} | {mine['seconds']:.2f} | {theirs['seconds'] / mine['seconds']:.1f}x "
               f"| {theirs['peak_rss_mib']:.0f} | {mine['peak_rss_mib']:.0f} | {extra_theirs:.0f} | {extra_mine:.0f} "
               f"| {extra_mine / max(extra_theirs, 1):.2f} | {same_cmc} | {same_precision} | {same_map} |")
        print(row, flush=True)
        print(f"   ours {mine['cmc']} {mine['precision']} {mine['map']}\n   OML  {theirs['cmc']} "
              f"{theirs['precision']} {theirs['map']}", flush=True)
        rows.append(row)

    table = "\n".join([
        "| N | OML (s) | lookalike (s) | speed-up | OML peak RSS (MiB) | lookalike peak RSS (MiB) "
        "| OML RSS above data (MiB) | lookalike RSS above data (MiB) | memory ratio | CMC@1 / @5 identical per query "
        "| precision@5 identical per query | mAP@5 identical per query (OML's definition) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|", *rows])
    print(table)
    growth = "\n".join(growth_rows(args.growth_sizes, args.backend)) if args.growth_sizes else ""
    if growth:
        print(growth)
    if args.record:
        import platform

        import torch

        text = (f"{SECTION}\n\nCommand: `.venv/bin/python benchmarks/bench_validation.py --sizes "
                f"{' '.join(map(str, args.sizes))} --backend {args.backend} --record`  \n"
                f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
                f"{time.strftime('%Y-%m-%d')}. Random normalised embeddings, dim 384, 5 items per label, every item "
                "both query and gallery; both sides accumulate in batches of 1,024 and compute CMC@1/5, "
                "precision@5, mAP@5 (OML with pcf_variance=() so it computes the same metrics). OML normalises AP@k by "
                "the hits found in the top k, lookalike by min(k, relevant items) (docs/metrics.md); the mAP "
                "column compares OML with its own definition recomputed from lookalike's rankings. Each side in its "
                "own process; 'RSS above data' = peak RSS minus RSS after loading the embeddings; speed-up = OML "
                "time / lookalike time; memory ratio = lookalike RSS above data / OML's. Load average (1 min) "
                f"{load_before[0]:.1f} before and {os.getloadavg()[0]:.1f} after the run, on "
                f"{os.cpu_count()} CPUs shared with other engineers' tests: timings are noisy (+-50%).\n\n"
                f"{table}\n" + (f"\n### Growth with N (lookalike only)\n\n{growth}\n" if growth else ""))
        from results_md import write_section

        write_section(SECTION, text)


if __name__ == "__main__":
    main()
