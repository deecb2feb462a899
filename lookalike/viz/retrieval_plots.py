"""Pictures of retrieval: each query, its top-k in green (relevant) / red (not) frames, and the relevant items it
missed in blue frames. The worst queries of a validation are the most useful ones to look at.

Images are anything the ``loader`` callable turns into an array: by default a path (read with Pillow), a PIL
image, or a CxHxW / HxWxC tensor or array (uint8, or float: values outside [0, 1], e.g. normalised inputs,
are rescaled per image). Drawn with matplotlib's non-interactive Agg backend, so it works headless.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lookalike.data.images import read_image, to_rgb_array  # noqa: E402
from lookalike.errors import ArgumentError  # noqa: E402
from lookalike.metrics.functional import has_relevant, worst_queries  # noqa: E402
from lookalike.retrieval import RetrievalResults, factorize_sequences  # noqa: E402

__all__ = ["load_image_array", "plot_retrieval", "plot_worst_queries", "GREEN", "RED", "BLUE", "BLACK"]

GREEN, RED, BLUE, BLACK = "#1a9641", "#d7191c", "#2c7bb6", "#000000"
#: inches per picture cell
CELL = 1.7
#: characters of a text item shown in a cell
TEXT_CHARS = 120


def load_image_array(image: Any) -> np.ndarray:
    """HxWx3 (or HxW) float array in [0, 1] from a path, a PIL image, or a CxHxW / HxWxC tensor or array."""
    if isinstance(image, (str, bytes)) or isinstance(image, os.PathLike):
        image = read_image(image)  # the datasets' rules: every Pillow mode, transparency over white
    elif _is_pil_image(image):
        image = to_rgb_array(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[2] not in (1, 3):
        array = array.transpose(1, 2, 0)  # CxHxW -> HxWxC
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype == np.uint8:
        return array / 255.0
    array = array.astype(np.float64)
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:  # e.g. a normalised model input: stretch to [0, 1] to show it
        array = (array - low) / max(high - low, 1e-12)
    return array


def _is_pil_image(x: Any) -> bool:
    return hasattr(x, "mode") and hasattr(x, "getbands")


def _is_one_image(x: Any) -> bool:
    if isinstance(x, (str, bytes, os.PathLike)):
        return True
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return x.ndim <= 3
    return hasattr(x, "size") and hasattr(x, "mode")  # a PIL image


def _frame(ax, colour: str, title: str, dashed: bool) -> None:
    """A cell's frame (``colour``, dashed for a missed item) and title, without ticks."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(colour)
        spine.set_linewidth(4)
        if dashed:
            spine.set_linestyle((0, (3, 1.5)))
    ax.set_title(title, fontsize=7, color=colour)


def _show(ax, image: Any, colour: str, title: str, loader: Callable, dashed: bool = False) -> None:
    try:
        array = loader(image)
        ax.imshow(array, cmap="gray" if np.ndim(array) == 2 else None, vmin=0.0, vmax=1.0)
    except Exception as error:  # a missing or broken image must not lose the whole picture
        ax.set_facecolor("#eeeeee")
        ax.text(0.5, 0.5, f"cannot load\n{type(error).__name__}", ha="center", va="center", fontsize=7,
                transform=ax.transAxes)
    _frame(ax, colour, title, dashed)


def _show_text(ax, text: Any, colour: str, title: str, loader: Callable, dashed: bool = False) -> None:
    """A text item in a framed cell: the text wrapped to the cell (long texts cut with an ellipsis)."""
    import textwrap

    shown = str(text)
    shown = shown if len(shown) <= TEXT_CHARS else shown[:TEXT_CHARS - 1] + "\u2026"
    ax.set_facecolor("#fafafa")
    # parse_math=False: a text is drawn as written ("$5 or $6" is no formula, "$^$" no mathtext error)
    ax.text(0.5, 0.5, "\n".join(textwrap.wrap(shown, 18)) or " ", ha="center", va="center", fontsize=7,
            transform=ax.transAxes, parse_math=False)  # no wrap=True: its width measure parses mathtext
    _frame(ax, colour, title, dashed)


def plot_retrieval(query_image: Any, retrieved_images: Sequence, is_relevant: Sequence,
                   missed_relevant_images: Sequence | None = None, distances: Sequence | None = None, *,
                   loader: Callable[[Any], Any] = load_image_array, query_titles: Sequence[str] | None = None,
                   missed_titles: Sequence | None = None, as_text: bool = False) -> Figure:
    """A figure with one row per query: the query (black frame), its retrieved items left to right (green frame:
    relevant, red: not) and the relevant items it missed (blue dashed frame).

    ``query_image`` is one image (then the other arguments describe that one row) or a sequence of them (then
    every other argument holds one sequence per query). Images go through ``loader`` (default: Pillow for
    paths, tensors and arrays as they are). ``as_text``: the items are texts, drawn as wrapped text in each cell.
    """
    show = _show_text if as_text else _show
    if isinstance(query_image, str) if as_text else _is_one_image(query_image):
        wrap = lambda x: None if x is None else [x]  # noqa: E731
        queries, retrieved_images, is_relevant = [query_image], [retrieved_images], [is_relevant]
        missed_relevant_images, distances, missed_titles = (wrap(missed_relevant_images), wrap(distances),
                                                           wrap(missed_titles))
    else:
        queries = list(query_image)
    n_rows = len(queries)
    missed_relevant_images = missed_relevant_images or [[] for _ in range(n_rows)]
    for name, value in (("retrieved_images", retrieved_images), ("is_relevant", is_relevant),
                        ("missed_relevant_images", missed_relevant_images), ("distances", distances),
                        ("query_titles", query_titles), ("missed_titles", missed_titles)):
        if value is not None and len(value) != n_rows:
            raise ArgumentError(f"plot_retrieval: {name} has {len(value)} rows for {n_rows} queries; pass one row "
                                f"per query image")
    n_top = max((len(r) for r in retrieved_images), default=0)
    n_missed = max((len(m) for m in missed_relevant_images), default=0)
    columns = 1 + n_top + n_missed
    figure = Figure(figsize=(CELL * columns, CELL * 1.25 * max(n_rows, 1) + 0.3))
    axes = figure.subplots(max(n_rows, 1), columns, squeeze=False)
    for row in range(n_rows):
        ax_row = axes[row]
        show(ax_row[0], queries[row], BLACK, query_titles[row] if query_titles else "query", loader)
        for i, (item, relevant) in enumerate(zip(retrieved_images[row], is_relevant[row])):
            title = f"#{i + 1}"
            if distances is not None:
                title += f" d={float(distances[row][i]):.3f}"
            show(ax_row[1 + i], item, GREEN if relevant else RED, title, loader)
        for j, item in enumerate(missed_relevant_images[row]):
            title = missed_titles[row][j] if missed_titles else "missed"
            show(ax_row[1 + n_top + j], item, BLUE, title, loader, dashed=True)
        used = {0, *range(1, 1 + len(retrieved_images[row])),
                *range(1 + n_top, 1 + n_top + len(missed_relevant_images[row]))}
        for c, ax in enumerate(ax_row):
            if c not in used:
                ax.axis("off")
    if n_rows == 0:
        axes[0][0].axis("off")
        axes[0][0].text(0.5, 0.5, "no query to show", ha="center", va="center")
    figure.suptitle("frames: green = relevant, red = not relevant, blue dashed = relevant but missed",
                    fontsize=8)
    figure.tight_layout()
    return figure


def plot_worst_queries(results: RetrievalResults, per_query_metric: torch.Tensor, paths: Any, n: int = 5,
                       top_k: int = 5, *, n_missed: int = 2, loader: Callable[[Any], Any] = load_image_array,
                       metric_name: str = "metric", sequences: Sequence | None = None, as_text: bool = False
                       ) -> Figure:
    """`plot_retrieval` of the ``n`` queries with the lowest ``per_query_metric``, each with its ``top_k`` and
    ``n_missed`` missed items. Ties go to the query with fewer relevant items among its retrieved ones, then to
    the one whose wrong first answer is closest (the most confident mistake); queries without a relevant gallery
    item are skipped.

    ``paths[i]`` is the image of dataset index i (a list, array or mapping of paths or tensors), like
    ``results.query_ids`` / ``gallery_ids``. ``sequences`` (by dataset index) keeps same-sequence items out of
    the missed ones, as in the metrics. ``as_text``: ``paths`` holds texts, drawn as text.
    """
    tie_breakers = (results.is_relevant.sum(1), results.distances[:, 0])
    rows = worst_queries(per_query_metric, n, has_relevant(results), tie_breakers).tolist()
    top_k = min(top_k, results.k)
    seq = None if sequences is None else factorize_sequences(sequences)
    queries, retrieved, relevant, missed, dists, q_titles, m_titles = [], [], [], [], [], [], []
    for q in rows:
        q_id = int(results.query_ids[q])
        row_ids = results.retrieved_ids[q]
        ids = row_ids[:top_k]
        valid = ids >= 0
        retrieved.append([paths[int(results.gallery_ids[g])] for g in ids[valid].tolist()])
        relevant.append(results.is_relevant[q, :top_k][valid].tolist())
        dists.append(results.distances[q, :top_k][valid].tolist())
        same = (results.gallery_labels == results.query_labels[q]) & (results.gallery_ids != q_id)
        if seq is not None and int(seq[q_id]) >= 0:
            same &= seq[results.gallery_ids] != seq[q_id]
        shown = set(ids[valid].tolist())
        ranks = {g: r for r, g in enumerate(row_ids.tolist()) if g >= 0}
        candidates = [g for g in same.nonzero().squeeze(1).tolist() if g not in shown]
        candidates.sort(key=lambda g: ranks.get(g, len(ranks)))  # found further down first, then gallery order
        chosen = candidates[:n_missed]
        missed.append([paths[int(results.gallery_ids[g])] for g in chosen])
        m_titles.append([f"missed, #{ranks[g] + 1}" if g in ranks else f"missed, > #{results.k}" for g in chosen])
        queries.append(paths[q_id])
        q_titles.append(f"query {q_id}\n{metric_name}={float(per_query_metric[q]):.2f}")
    figure = plot_retrieval(queries, retrieved, relevant, missed, dists, loader=loader, query_titles=q_titles,
                            missed_titles=m_titles, as_text=as_text)
    return figure
