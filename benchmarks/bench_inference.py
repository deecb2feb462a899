"""Inference throughput: onnxruntime vs torch fp32 vs torch bf16 (autocast, channels_last), ResNet-18 and
EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``, random init: speed does not depend on the weights), at 64
and 224 px, batch 1 and batch 64, images/s of the model alone on batches of random tensors, in one run.

Each model is exported with ``lookalike.export.to_onnx`` (the default dynamo exporter, parity check included)
and run through ``OnnxModel``; the torch sides run through ``lookalike.inference.Embedder.embed_batch``.
torch and onnxruntime use the same number of threads. Per cell: one warm-up call, then calls until
--seconds have passed (at least --min-calls), so the run is bounded by 2 + min-calls calls per slow cell
(the whole run's seconds are recorded with the figures; about 20 minutes on the shared 2-core CPU of RESULTS.md,
where bf16 is emulated: no bf16 units).

    .venv/bin/python benchmarks/bench_inference.py [--threads 2] [--seconds 2] [--min-calls 2] [--record]

--record rewrites this script's section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from lookalike.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from lookalike.export import OnnxModel, to_onnx  # noqa: E402
from lookalike.inference import Embedder  # noqa: E402
from lookalike.models import ResNetExtractor, TimmExtractor  # noqa: E402

SECTION = "## Inference: onnxruntime vs torch fp32 / bf16"
MODELS = {
    "ResNet-18": lambda: ResNetExtractor("resnet18"),
    "EfficientNet-Lite0": lambda: TimmExtractor("tf_efficientnet_lite0"),
}
SIZES, BATCHES = (64, 224), (1, 64)
RUNTIMES = ("torch fp32", "torch bf16 + channels_last", "onnxruntime fp32")


def throughput(fn, batch: torch.Tensor, seconds: float, min_calls: int) -> float:
    fn(batch)  # warm-up (first-call allocations, oneDNN / ORT kernel selection)
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        fn(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - start)


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load average %.2f, %.2f, %.2f" % os.getloadavg()


def bf16_units() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return "unknown"
    return ", ".join(f for f in ("amx_bf16", "avx512_bf16") if f in flags) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--min-calls", type=int, default=2)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = uptime()
    rows, closeness = [], []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in MODELS.items():
            torch.manual_seed(0)
            model = make().eval()
            for size in SIZES:
                t0 = time.perf_counter()
                path = to_onnx(model, Path(tmp) / f"{name}_{size}.onnx", image_size=size, mean=IMAGENET_MEAN,
                               std=IMAGENET_STD, parity_samples=16, verbose=False)
                export_s = time.perf_counter() - t0
                sides = {
                    "torch fp32": Embedder(model, device="cpu", precision="32").embed_batch,
                    "torch bf16 + channels_last": Embedder(model, device="cpu", precision="bf16-mixed",
                                                           channels_last=True).embed_batch,
                    "onnxruntime fp32": Embedder(OnnxModel(path, threads=args.threads)).embed_batch,
                }
                x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
                out = {}
                for k, fn in sides.items():
                    model.to(memory_format=torch.channels_last if "channels_last" in k else torch.contiguous_format)
                    out[k] = fn(x)
                model.to(memory_format=torch.contiguous_format)
                closeness.append((name, size, export_s,
                                  float(np.abs(out["onnxruntime fp32"] - out["torch fp32"]).max()),
                                  float((out["torch bf16 + channels_last"] * out["torch fp32"]).sum(1).min())))
                for batch in BATCHES:
                    xb = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))
                    speeds = {}
                    for runtime in RUNTIMES:  # each torch side with its own weight layout
                        model.to(memory_format=torch.channels_last if "channels_last" in runtime
                                 else torch.contiguous_format)
                        speeds[runtime] = throughput(sides[runtime], xb, args.seconds, args.min_calls)
                    model.to(memory_format=torch.contiguous_format)
                    rows.append((name, size, batch, speeds))
                    print(name, size, batch, {k: round(v, 1) for k, v in speeds.items()}, flush=True)
    total = time.perf_counter() - t_all
    load_after = uptime()

    lines = [SECTION, "",
             f"Command: `.venv/bin/python benchmarks/bench_inference.py --threads {args.threads} --seconds "
             f"{args.seconds:g} --min-calls {args.min_calls}{' --record' if args.record else ''}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, bf16 units: {bf16_units()}; {args.threads} "
             f"threads for torch and onnxruntime; torch {torch.__version__}, onnxruntime "
             f"{__import__('onnxruntime').__version__}; {time.strftime('%Y-%m-%d')}; whole run {total:.0f} s.  ",
             f"`uptime` before: `{load_before}`; after: `{load_after}`. The machine is shared with other "
             "engineers' jobs, so single figures are noisy (treat them as +-30%); the three runtimes of a row are "
             "measured back to back in the same run.",
             "",
             "Images/s of the model alone (random input tensors, preprocessing excluded), random-init weights, "
             "embeddings L2-normalised in the graph; onnxruntime runs the file `lookalike.export.to_onnx` wrote "
             "(dynamo exporter, opset 20, parity check passed).",
             "",
             "| model | px | batch | torch fp32 | torch bf16 + channels_last | onnxruntime fp32 | ORT / torch fp32 "
             "| ORT / torch bf16 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, size, batch, s in rows:
        a, b, c = (s[r] for r in RUNTIMES)
        lines.append(f"| {name} | {size} | {batch} | {a:.1f} | {b:.1f} | {c:.1f} | {c / a:.2f}x | {c / b:.2f}x |")
    lines += ["", "| model | px | export + parity (s) | max abs diff ORT vs torch fp32 | min cosine bf16 vs fp32 |",
              "|---|---|---|---|---|"]
    for name, size, export_s, diff, cos in closeness:
        lines.append(f"| {name} | {size} | {export_s:.1f} | {diff:.1e} | {cos:.5f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.record:
        from results_md import write_section

        write_section(SECTION, text)


if __name__ == "__main__":
    main()
