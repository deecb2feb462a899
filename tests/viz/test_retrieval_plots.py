"""Worst-query pictures: the right rows, frames coloured by relevance, a valid PNG."""

from __future__ import annotations

import matplotlib.colors as mcolors
import torch
from PIL import Image

from lookalike.metrics import EmbeddingMetrics
from lookalike.viz import plot_retrieval, plot_worst_queries
from lookalike.viz.retrieval_plots import GREEN, RED


def test_plot_worst_queries_png(tmp_path):
    torch.manual_seed(0)
    n = 24
    labels = torch.arange(n) // 3
    images = torch.rand(n, 3, 8, 8)
    flags = torch.ones(n, dtype=torch.bool)
    metrics = EmbeddingMetrics(cmc_top_k=(1,))
    metrics.update(torch.randn(n, 4), labels, flags, flags, torch.arange(n))
    metrics.compute()
    per_query = metrics.last_per_query["cmc"][1]
    figure = plot_worst_queries(metrics.last_results, per_query, images, n=3, top_k=4, n_missed=2)
    axes = figure.axes
    assert len(axes) == 3 * (1 + 4 + 2)
    first_row = axes[:7]
    results = metrics.last_results
    worst = int(torch.sort(per_query.double(), stable=True).indices[0])
    expected = [GREEN if r else RED for r in results.is_relevant[worst, :4].tolist()]
    got = [mcolors.to_hex(ax.spines["top"].get_edgecolor()) for ax in first_row[1:5]]
    assert got == [mcolors.to_hex(c) for c in expected]
    figure.savefig(tmp_path / "worst.png")
    with Image.open(tmp_path / "worst.png") as png:
        assert png.size[0] > png.size[1] > 100


def test_plot_retrieval_single_row():
    figure = plot_retrieval(torch.rand(3, 6, 6), [torch.rand(3, 6, 6)] * 2, [True, False], missed=[torch.rand(3, 6, 6)],
                            distances=[0.1, 0.2])
    assert len(figure.axes) == 4 and figure.axes[1].get_title() == "#1 d=0.100"
