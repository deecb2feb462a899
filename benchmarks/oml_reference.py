"""OML 4.0.0 side of bench_validation.py: runs inside benchmarks/.venv-oml (OML's own environment).

Computes CMC@1/5, precision@5 and mAP@5 with OML's public EmbeddingMetrics on embeddings saved by the parent
script, and prints one JSON line: wall time, peak RSS, and the metrics; the per-query values go to
DATA_DIR/oml_per_query.npz (written after the timer stops).

    benchmarks/.venv-oml/bin/python benchmarks/oml_reference.py DATA_DIR
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from oml.interfaces.datasets import IQueryGalleryLabeledDataset
from oml.metrics.embeddings import EmbeddingMetrics


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ArrayDataset(IQueryGalleryLabeledDataset):
    """Just enough of OML's dataset interface for its metrics: labels and query/gallery ids."""

    def __init__(self, labels, is_query, is_gallery):
        self.labels, self.is_query, self.is_gallery = labels, is_query, is_gallery
        self.extra_data = {}
        self.index_key = "idx"
        self.input_tensors_key = "input"
        self.labels_key = "labels"

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, item):
        return {"idx": item, "labels": self.labels[item]}

    def get_labels(self):
        return self.labels

    def get_query_ids(self):
        return torch.from_numpy(np.flatnonzero(self.is_query))

    def get_gallery_ids(self):
        return torch.from_numpy(np.flatnonzero(self.is_gallery))


def main() -> None:
    data = Path(sys.argv[1])
    embeddings = torch.from_numpy(np.load(data / "embeddings.npy"))
    labels = np.load(data / "labels.npy")
    flags = np.ones(len(labels), dtype=bool)
    rss_after_data = peak_rss_mib()
    start = time.perf_counter()
    metrics = EmbeddingMetrics(ArrayDataset(labels, flags, flags), cmc_top_k=(1, 5), precision_top_k=(5,),
                               map_top_k=(5,), pcf_variance=(), verbose=False)
    metrics.setup(len(labels))
    for i in range(0, len(labels), 1024):
        metrics.update(embeddings[i:i + 1024], torch.arange(i, min(i + 1024, len(labels))))
    result = metrics.compute_metrics()
    seconds = time.perf_counter() - start
    overall = result["OVERALL"]
    per_query = metrics.metrics_unreduced["OVERALL"]  # OML's own per-query values, saved for the parent
    np.savez(data / "oml_per_query.npz", cmc1=per_query["cmc"][1].numpy(), cmc5=per_query["cmc"][5].numpy(),
             precision5=per_query["precision"][5].numpy(), map5=per_query["map"][5].numpy())
    print(json.dumps({
        "seconds": seconds, "peak_rss_mib": peak_rss_mib(), "rss_after_data_mib": rss_after_data,
        "cmc": {k: float(overall["cmc"][k]) for k in (1, 5)},
        "precision": {5: float(overall["precision"][5])}, "map": {5: float(overall["map"][5])},
    }))


if __name__ == "__main__":
    main()
