"""Worst-query pictures of a validation (drawn by ``lookalike.viz``), saved as PNG and sent to TensorBoard."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from lookalike.pipelines.io import atomic_path

__all__ = ["save_worst_queries", "per_query_for"]


def per_query_for(per_query: dict, metric: str) -> tuple[Any, str]:
    """The per-query values of ``<group>/<metric>/<k>`` (e.g. OVERALL/cmc/1), else of the first metric@k."""
    parts = metric.split("/")
    if len(parts) == 3 and parts[1] in per_query:
        values = per_query[parts[1]]
        for k, v in (values.items() if isinstance(values, dict) else ()):
            if str(k) == parts[2]:
                return v, f"{parts[1]}@{k}"
    for name, values in per_query.items():
        if isinstance(values, dict) and values:
            k, v = next(iter(values.items()))
            return v, f"{name}@{k}"
        if hasattr(values, "shape"):
            return values, name
    raise ValueError("no per-query metric to rank queries by")


def save_worst_queries(metrics, images: Sequence[Any], path: Path, *, n_queries: int = 6, metric: str = "",
                       loggers: Sequence[Any] = (), step: int = 0, tag: str = "worst_queries") -> Path | None:
    """Plots the ``n_queries`` worst queries of the last ``metrics.compute()``; ``images`` by dataset index."""
    if metrics.last_results is None or metrics.last_per_query is None:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from lookalike.viz import plot_worst_queries

    values, name = per_query_for(metrics.last_per_query, metric)
    figure = plot_worst_queries(metrics.last_results, values, images, n=n_queries, metric_name=name)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=80, format="png")
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_figure"):  # TensorBoard
            experiment.add_figure(f"worst_queries/{name}", figure, global_step=step)
    plt.close(figure)
    return path
