"""Pictures of retrieval: a query, its top-k with green (relevant) / red (not) frames, and what it missed.

Images are given as paths or tensors; `load` turns one into an HxWx3 array (default: Pillow for paths,
denormalised CxHxW tensors as they are). Uses matplotlib's Agg backend: works headless.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lookalike.metrics.functional import has_relevant, worst_queries  # noqa: E402
from lookalike.retrieval import RetrievalResults  # noqa: E402

__all__ = ["load_image_array", "plot_retrieval", "plot_worst_queries"]

GREEN, RED, BLUE, GREY = "#1a9641", "#d7191c", "#2c7bb6", "#7f7f7f"


def load_image_array(image: Any) -> np.ndarray:
    """HxWx3 float array in [0, 1] from a path, a PIL image, a CxHxW / HxWxC tensor or array."""
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        from lookalike.data.images import read_image

        image = read_image(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.transpose(1, 2, 0)
    array = np.asarray(image)
    if array.dtype == np.uint8:
        array = array / 255.0
    return np.clip(array, 0.0, 1.0)


def _show(ax, image: Any, colour: str, title: str, load: Callable) -> None:
    ax.imshow(load(image))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(4)
    ax.set_title(title, fontsize=8, color=colour)


def plot_retrieval(query: Any, retrieved: Sequence[Any], is_relevant: Sequence[bool],
                   missed: Sequence[Any] = (), distances: Sequence[float] | None = None,
                   load: Callable = load_image_array, ax_row=None, title: str = "query"):
    """One row: the query (blue), its retrieved items (green relevant / red not), missed relevant items (grey).

    Returns a new Figure, or draws into `ax_row` (a sequence of axes) when given.
    """
    n = 1 + len(retrieved) + len(missed)
    figure = None
    if ax_row is None:
        figure, ax_row = plt.subplots(1, n, figsize=(1.6 * n, 2.0), squeeze=False)
        ax_row = ax_row[0]
    _show(ax_row[0], query, BLUE, title, load)
    for i, (item, relevant) in enumerate(zip(retrieved, is_relevant)):
        label = f"#{i + 1}" + (f" d={distances[i]:.3f}" if distances is not None else "")
        _show(ax_row[1 + i], item, GREEN if relevant else RED, label, load)
    for j, item in enumerate(missed):
        _show(ax_row[1 + len(retrieved) + j], item, GREY, "missed", load)
    for ax in ax_row[n:]:
        ax.axis("off")
    if figure is not None:
        figure.tight_layout()
    return figure


def plot_worst_queries(results: RetrievalResults, per_query_metric: torch.Tensor, images: Sequence[Any],
                       n: int = 5, top_k: int = 5, n_missed: int = 2, load: Callable = load_image_array,
                       metric_name: str = "metric"):
    """A figure with one row per worst query: query, top-k (green/red frames), up to n_missed missed items.

    `images` is indexed by dataset index (paths or tensors), like `results.query_ids` / `gallery_ids`.
    """
    rows = worst_queries(per_query_metric, n, has_relevant(results)).tolist()
    top_k = min(top_k, results.k)
    columns = 1 + top_k + n_missed
    figure, axes = plt.subplots(max(len(rows), 1), columns, figsize=(1.6 * columns, 2.0 * max(len(rows), 1)),
                                squeeze=False)
    for ax_row, q in zip(axes, rows):
        ids = results.retrieved_ids[q, :top_k]
        valid = ids >= 0
        gallery_pos = ids[valid]
        retrieved = [images[int(results.gallery_ids[g])] for g in gallery_pos]
        relevant = results.is_relevant[q, :top_k][valid].tolist()
        shown = set(gallery_pos.tolist())
        same_label = (results.gallery_labels == results.query_labels[q]).nonzero().squeeze(1).tolist()
        missed = [images[int(results.gallery_ids[g])] for g in same_label
                  if g not in shown and int(results.gallery_ids[g]) != int(results.query_ids[q])][:n_missed]
        value = float(per_query_metric[q])
        plot_retrieval(images[int(results.query_ids[q])], retrieved, relevant, missed,
                       results.distances[q, :top_k][valid].tolist(), load=load, ax_row=ax_row,
                       title=f"query {int(results.query_ids[q])}\n{metric_name}={value:.2f}")
    if not rows:
        axes[0][0].text(0.5, 0.5, "no query with a relevant item", ha="center", va="center")
        for ax in axes[0]:
            ax.axis("off")
    figure.tight_layout()
    return figure
