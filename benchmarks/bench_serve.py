"""Load test of `lookalike serve` on loopback: K concurrent clients, N searches each, against the same server with
micro-batching off (one model call per request), in the same run.

The index: emoji-open (about 7,170 images) embedded by the `small_images` recipe's extractor (ResNet-18 at 64 px,
bf16, channels-last; random init, which costs the same as trained weights), built once into --index-dir. Each
client is a thread with its own keep-alive connection that uploads dataset images (bytes read before the run)
to POST /search and waits for the answer; the clients run on the same CPUs as the server. Reported: p50/p99
latency, searches/s, errors, and the server's RSS (VmRSS of /proc/<pid>/status) before and after the run.

    .venv/bin/python benchmarks/bench_serve.py [--clients 8] [--requests 5000] [--naive-requests 1000] [--record]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = next((p for p in (ROOT.parent / "shared" / "data" / "emoji-open", Path("/work/shared/data/emoji-open"))
                     if p.is_dir()), ROOT.parent / "shared" / "data" / "emoji-open")
SECTION = "## Search service (lookalike serve)"
sys.path.insert(0, str(ROOT))


def build_index(data: Path, folder: Path) -> Path:
    if (folder / "index.json").is_file():
        return folder
    import torch

    from lookalike.pipelines.indexing import index

    import warnings

    torch.manual_seed(0)
    warnings.filterwarnings("ignore", message="checkpoint is null")
    t = time.perf_counter()
    index("small_images", [f"dataset_root={data}", f"source={data / 'df.csv'}", f"index_dir={folder}",
                           "progress_bar=false"])
    print(f"built the index in {time.perf_counter() - t:.0f} s")
    return folder


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def load_run(url: str, files: list[bytes], clients: int, per_client: int, top_k: int = 5) -> dict:
    """``clients`` threads, ``per_client`` searches each, released together; latencies in ms and errors."""
    import httpx

    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            barrier.wait()
            for i in range(per_client):
                data = files[(c * per_client + i) % len(files)]
                t = time.perf_counter()
                try:
                    r = http.post("/search", files={"file": ("q.png", data, "image/png")}, data={"top_k": str(top_k)})
                    ok = r.status_code == 200 and len(r.json()["results"]) == top_k
                except httpx.HTTPError:
                    ok = False
                latencies[c].append((time.perf_counter() - t) * 1000)
                errors[c] += 0 if ok else 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    lat = np.concatenate([np.asarray(x) for x in latencies])
    return {"requests": len(lat), "wall_s": wall, "per_s": len(lat) / wall, "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "errors": int(sum(errors))}


def run_server(index_dir: Path, files: list[bytes], clients: int, requests: int, options: list[str],
               warmup: int = 100) -> dict:
    sys.path.insert(0, str(ROOT / "tests" / "serve"))
    from tests.serve.server import Server

    with Server(index_dir, *options, "log_level=warning", timeout=300) as server:
        warm = load_run(server.url, files, clients, max(1, warmup // clients))  # first calls, allocator
        before = rss_mb(server.process.pid)
        result = load_run(server.url, files, clients, max(1, requests // clients))
        result["rss_before"], result["rss_after"] = before, rss_mb(server.process.pid)
        result["warmup"] = warm["requests"]
        import httpx

        result["batching"] = httpx.get(server.url + "/health").json()["batching"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--index-dir", type=Path, default=Path("/tmp/lookalike-bench-serve/index"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=5000, help="searches of the batched run (all clients)")
    parser.add_argument("--naive-requests", type=int, default=1000, help="searches of the naive baseline run")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="the servers' torch threads (0 = torch's default)")
    parser.add_argument("--record", action="store_true", help="write the figures into benchmarks/RESULTS.md")
    args = parser.parse_args()

    import pandas as pd

    index_dir = build_index(args.data, args.index_dir)
    paths = pd.read_csv(args.data / "df.csv")["path"].tolist()
    rng = np.random.default_rng(0)
    files = [(args.data / paths[i]).read_bytes() for i in rng.choice(len(paths), 500, replace=False)]
    load_before = uptime()
    common = [f"threads={args.threads}"]
    batched = run_server(index_dir, files, args.clients, args.requests,
                         [f"batch_wait_ms={args.batch_wait_ms}", *common])
    naive = run_server(index_dir, files, args.clients, args.naive_requests, ["max_batch=1", *common])
    load_after = uptime()

    sizes = batched["batching"]
    rows = []
    for name, r in (("micro-batched (default)", batched), ("naive: one model call per request", naive)):
        rows.append(f"| {name} | {r['requests']:,} | {r['per_s']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                    f"{r['errors']} | {r['rss_before']:.0f} | {r['rss_after']:.0f} | "
                    f"{r['rss_after'] - r['rss_before']:+.1f} |")
    ratio = batched["per_s"] / naive["per_s"]
    targets = [("searches/s >= 100", batched["per_s"] >= 100), ("p99 < 300 ms", batched["p99"] < 300),
               ("zero errors", batched["errors"] == 0),
               ("RSS growth < 50 MB", batched["rss_after"] - batched["rss_before"] < 50)]
    text = "\n".join([
        SECTION, "",
        f"Command: `.venv/bin/python benchmarks/bench_serve.py --clients {args.clients} --requests {args.requests} "
        f"--naive-requests {args.naive_requests} --threads {args.threads}{' --record' if args.record else ''}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other engineers' jobs; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. `uptime` before: `{load_before}`; after: "
        f"`{load_after}`.", "",
        "Index: emoji-open, " + f"{len(paths):,} images, the `small_images` extractor (ResNet-18, 64 px, bf16, "
        "channels-last, random init), exact search, top_k=5. Server: `lookalike serve` on 127.0.0.1 (uvicorn, "
        f"one process, batch_wait_ms={args.batch_wait_ms:g}, torch threads "
        f"{args.threads or 'default (2)'}); clients: {args.clients} threads on the same CPUs, "
        "each uploading dataset PNGs (500 distinct files) over a keep-alive connection, one request at a time. "
        "RSS: the server's VmRSS after a 100-request warm-up and after the run.", "",
        "| server | searches | searches/s | p50 (ms) | p99 (ms) | errors | RSS before (MiB) | RSS after (MiB) | "
        "RSS growth (MiB) |",
        "|---|---|---|---|---|---|---|---|---|", *rows, "",
        f"Micro-batching: {ratio:.2f}x the naive server's throughput; {sizes['model_calls']:,} model calls for "
        f"{batched['requests'] + batched['warmup']:,} searches, warm-up included (mean batch "
        f"{(batched['requests'] + batched['warmup']) / max(1, sizes['model_calls']):.1f}).",
        "Targets (issue 9, 8 clients): " + "; ".join(f"{n}: {'met' if ok else 'NOT met'}" for n, ok in targets) + ".",
    ])
    print(text)
    if args.record:
        from benchmarks.results_md import write_section

        write_section(SECTION, text)


if __name__ == "__main__":
    main()
