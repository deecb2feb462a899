"""Worst-query pictures: the right rows and items, frames coloured by relevance, a valid PNG of the right size."""

from __future__ import annotations

import matplotlib.colors as mcolors
import numpy as np
import torch
from PIL import Image

from lookalike.metrics import EmbeddingMetrics
from lookalike.retrieval import RetrievalResults
from lookalike.viz import plot_retrieval, plot_worst_queries
from lookalike.viz.retrieval_plots import BLACK, BLUE, CELL, GREEN, RED


def frame(ax) -> str:
    return mcolors.to_hex(ax.spines["top"].get_edgecolor())


def hand_results() -> RetrievalResults:
    """Dataset items 0..5, labels [0, 0, 1, 1, 0, 2]; queries 0, 2 and 5 (5 has no relevant item), gallery all.
    q0 retrieves 1 (relevant), 3 (not), 2 (not); item 4 (label 0) is missed.   cmc@1 = 1
    q2 retrieves 0 (not), 4 (not), 3 (relevant).                                cmc@1 = 0  <- the worst
    """
    return RetrievalResults(
        retrieved_ids=torch.tensor([[1, 3, 2], [0, 4, 3], [0, 1, 2]]),
        distances=torch.tensor([[0.1, 0.2, 0.3], [0.15, 0.25, 0.35], [0.1, 0.2, 0.3]]),
        is_relevant=torch.tensor([[True, False, False], [False, False, True], [False, False, False]]),
        n_relevant=torch.tensor([2, 1, 0]),
        query_ids=torch.tensor([0, 2, 5]),
        gallery_ids=torch.arange(6),
        query_labels=torch.tensor([0, 1, 2]),
        gallery_labels=torch.tensor([0, 0, 1, 1, 0, 2]),
    )


def test_worst_queries_rows_items_and_frames(tmp_path):
    results = hand_results()
    paths = [f"item{i}.jpg" for i in range(6)]
    loaded = []
    loader = lambda path: loaded.append(path) or np.full((8, 8, 3), 0.5)  # noqa: E731
    cmc1 = torch.tensor([1.0, 0.0, 0.0])  # q5 is 0 as well but has no relevant item: never shown
    figure = plot_worst_queries(results, cmc1, paths, n=5, top_k=2, n_missed=2, loader=loader,
                                metric_name="cmc@1")
    axes = np.array(figure.axes).reshape(2, 1 + 2 + 1)  # 2 rows (q2, then q0), query + top-2 + 1 missed column
    assert axes[0, 0].get_title() == "query 2\ncmc@1=0.00" and axes[1, 0].get_title() == "query 0\ncmc@1=1.00"
    # q2: items 0, 4 (both red); missed: item 3, found at rank 3
    assert [frame(ax) for ax in axes[0]] == [BLACK, RED, RED, BLUE]
    assert axes[0, 1].get_title() == "#1 d=0.150" and axes[0, 3].get_title() == "missed, #3"
    # q0: items 1 (green), 3 (red); missed: item 4, not in the top 3 at all
    assert [frame(ax) for ax in axes[1]] == [BLACK, GREEN, RED, BLUE]
    assert axes[1, 3].get_title() == "missed, > #3"
    # row by row: query, retrieved, missed
    assert loaded == [f"item{i}.jpg" for i in (2, 0, 4, 3, 0, 1, 3, 4)]

    figure.savefig(tmp_path / "worst.png", dpi=100)
    with Image.open(tmp_path / "worst.png") as png:
        png.verify()
    with Image.open(tmp_path / "worst.png") as png:
        assert png.format == "PNG"
        assert png.size == (round(CELL * 4 * 100), round((CELL * 1.25 * 2 + 0.3) * 100))


def test_same_sequence_items_are_not_missed():
    results = hand_results()
    # item 4 shares query 0's sequence: it is not relevant to query 0, so it is not "missed" either
    figure = plot_worst_queries(results, torch.tensor([0.0, 1.0, 0.0]), torch.rand(6, 3, 4, 4), n=1, top_k=2,
                                sequences=["a", None, None, None, "a", None])
    assert len(figure.axes) == 3  # query + top-2, no missed column


def test_metrics_last_results_feed_the_picture():
    torch.manual_seed(0)
    n = 24
    labels = torch.arange(n) // 3
    flags = torch.ones(n, dtype=torch.bool)
    metrics = EmbeddingMetrics(cmc_top_k=(1,))
    metrics.update(torch.randn(n, 4), labels, flags, flags, torch.arange(n))
    metrics.compute()
    per_query = metrics.last_per_query["cmc"][1]
    figure = plot_worst_queries(metrics.last_results, per_query, torch.rand(n, 3, 8, 8), n=3, top_k=4, n_missed=2)
    res = metrics.last_results  # the worst: lowest metric, then fewest hits, then the closest wrong first answer
    worst = min(range(n), key=lambda q: (float(per_query[q]), int(res.is_relevant[q].sum()),
                                         float(res.distances[q, 0]), q))
    row = figure.axes[: 1 + 4 + 2]
    expected = [GREEN if r else RED for r in metrics.last_results.is_relevant[worst, :4].tolist()]
    assert [frame(ax) for ax in row[1:5]] == expected
    assert row[0].get_title().startswith(f"query {worst}\n")


def test_plot_retrieval_from_paths_one_row(tmp_path):
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (10, 6), colour).save(paths[-1])
    figure = plot_retrieval(str(paths[0]), [paths[1], str(tmp_path / "gone.png")], [True, False],
                            missed_relevant_images=[paths[2]], distances=[0.1, 0.2])
    assert len(figure.axes) == 4 and figure.axes[1].get_title() == "#1 d=0.100"
    assert [frame(ax) for ax in figure.axes] == [BLACK, GREEN, RED, BLUE]
    shown = figure.axes[1].get_images()[0].get_array()
    assert shown.shape == (6, 10, 3) and np.allclose(shown[0, 0], [0, 1, 0])  # the green picture, read by Pillow
    assert "cannot load" in figure.axes[2].texts[0].get_text()  # a missing file does not lose the picture


def test_plot_retrieval_rows_of_different_lengths():
    grey = torch.rand(1, 5, 5)  # one channel
    normalised = torch.randn(3, 5, 5) * 2  # a normalised model input: stretched to [0, 1]
    figure = plot_retrieval([grey, normalised], [[normalised] * 3, [grey]], [[True, True, False], [False]])
    axes = np.array(figure.axes).reshape(2, 4)
    assert [frame(ax) for ax in axes[1, :2]] == [BLACK, RED] and not axes[1, 2].axison  # padding cells are off
    shown = axes[0, 1].get_images()[0].get_array()
    assert shown.min() == 0.0 and shown.max() == 1.0
    assert axes[0, 0].get_images()[0].get_array().shape == (5, 5)


def test_no_query_to_show():
    results = hand_results().subset(torch.tensor([2]))  # only the query without relevant items
    figure = plot_worst_queries(results, torch.tensor([0.0]), torch.rand(6, 3, 4, 4))
    assert figure.axes[0].texts[0].get_text() == "no query to show"


def test_texts_are_drawn_as_written_even_with_dollar_signs():
    # a text is no mathtext: "$^$" must not raise at draw time, "$5 or $6" must not become a formula
    import io

    texts = ["x $^$ y", "price $5 or $6", "a $\\frac$ b"]
    figure = plot_retrieval(texts[0], texts[1:], [True, False], as_text=True)
    figure.savefig(io.BytesIO(), format="png")
    drawn = [t for ax in figure.axes for t in ax.texts]
    assert [t.get_text() for t in drawn] == ["x $^$ y", "price $5 or $6", "a $\\frac$ b"]
