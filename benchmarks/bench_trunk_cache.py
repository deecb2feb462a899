"""Training step time with and without ``cache_frozen_trunk``: EfficientNet-Lite0 at 112 px, batch 64, stem and
stages 0-1 frozen (the `small_images_pretrained` recipe's set-up), an ArcFace-like head, AdamW, fp32, channels_last.
Both steps are timed in the same process, alternating (the median of each round), on random images: the time does
not depend on the pixels. The cached step reads fp16 maps, crops them (`random_resized_crop_maps`) and runs the rest
of the network; the full step runs the whole network on the images (data loading excluded from both).

    .venv/bin/python benchmarks/bench_trunk_cache.py [--rounds 3] [--steps 8] [--record]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTION = "## Frozen-trunk cache (cache_frozen_trunk): training step time"
FROZEN = ["backbone.net.conv_stem", "backbone.net.bn1", "backbone.net.blocks.0", "backbone.net.blocks.1"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--record", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    import torch
    import torch.nn.functional as F

    from lookalike.data.transforms import random_resized_crop_maps
    from lookalike.models import TimmExtractor

    torch.manual_seed(0)
    cl = torch.channels_last
    extractor = TimmExtractor("tf_efficientnet_lite0", embedding_dim=256).to(memory_format=cl)
    trunk, rest = extractor.split_frozen_prefix(FROZEN)
    trunk.requires_grad_(False)
    centres = torch.nn.Parameter(torch.randn(900, 256) * 0.01)
    optimizer = torch.optim.AdamW([p for p in extractor.parameters() if p.requires_grad] + [centres], lr=1e-3)
    images = torch.randn(64, 3, args.size, args.size).contiguous(memory_format=cl)
    labels = torch.randint(0, 900, (64,))
    extractor.train()
    trunk.eval()
    started = time.perf_counter()
    with torch.no_grad():
        maps = trunk(images).half()
    trunk_seconds = time.perf_counter() - started

    def step(cached: bool) -> float:
        t = time.perf_counter()
        if cached:
            crops = random_resized_crop_maps(maps.float(), (0.6, 1.0))
            embeddings = rest(crops.contiguous(memory_format=cl))
        else:
            embeddings = extractor(images)
        loss = F.cross_entropy(30 * embeddings @ F.normalize(centres).T, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t

    for cached in (False, True):  # warm-up
        step(cached)
    full, cached = [], []
    for _ in range(args.rounds):
        full.append(statistics.median(step(False) for _ in range(args.steps)))
        cached.append(statistics.median(step(True) for _ in range(args.steps)))
    f, c = statistics.median(full), statistics.median(cached)
    load = os.getloadavg()
    lines = [f"- full step (whole network on the images): **{f:.3f} s**",
             f"- cached step (fp16 maps -> crops -> the rest of the network): **{c:.3f} s**, {f / c:.2f}x faster",
             f"- the trunk's forward on one batch (what the cache saves per step, once per image instead): "
             f"{trunk_seconds:.3f} s",
             f"- load average after the run: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f} on {os.cpu_count()} CPUs; "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads"]
    print("\n".join(lines))
    if args.record:
        sys.path.insert(0, str(HERE))
        from results_md import write_section

        write_section(SECTION, f"{SECTION}\n\nCommand: `.venv/bin/python benchmarks/bench_trunk_cache.py --rounds "
                               f"{args.rounds} --steps {args.steps} --record`; EfficientNet-Lite0, {args.size} px, "
                               "batch 64, "
                               "stem + stages 0-1 frozen, fp32, channels_last; medians of alternating rounds.\n\n"
                      + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
