"""Worst-query pictures of a validation (drawn by ``lookalike.viz``), saved as PNG and sent to the loggers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from lookalike.errors import ConfigError
from lookalike.io import atomic_path

__all__ = ["save_worst_queries", "per_query_for", "send_figure", "shown_items"]


def shown_items(dataset: Any) -> tuple[Sequence[Any], bool]:
    """(what a picture shows of each item by dataset index, whether they are texts): image paths, or texts."""
    texts = getattr(dataset, "texts", None)
    if texts is not None:
        return texts, True
    return dataset.paths, False


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
    raise ConfigError(f"worst-query pictures: the validation metrics hold no per-query values to rank queries by "
                      f"(asked for {metric!r}; found {', '.join(map(str, per_query)) or 'none'}); keep a top-k "
                      "metric such as cmc in metric_args, or set log_images: false.")


def save_worst_queries(metrics, images: Sequence[Any], path: Path, *, n_queries: int = 6, metric: str = "",
                       loggers: Sequence[Any] = (), step: int = 0, tag: str = "worst_queries",
                       as_text: bool = False) -> Path | None:
    """Plots the ``n_queries`` worst queries of the last ``metrics.compute()``; ``images`` by dataset index
    (texts with ``as_text``, see `shown_items`)."""
    if metrics.last_results is None or metrics.last_per_query is None:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from lookalike.viz import plot_worst_queries

    values, name = per_query_for(metrics.last_per_query, metric)
    figure = plot_worst_queries(metrics.last_results, values, images, n=n_queries, metric_name=name,
                                as_text=as_text)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=80, format="png")
    send_figure(figure, path, loggers, key=f"worst_queries/{name}", step=step, tag=tag)
    plt.close(figure)
    return path


def send_figure(figure: Any, png: Path, loggers: Sequence[Any], *, key: str, step: int, tag: str) -> None:
    """Hands a figure to every logger that takes pictures: TensorBoard, MLflow (artifact) and W&B (image).
    CSV loggers have no place for pictures; the PNG in the run folder is theirs."""
    for logger in loggers:
        if hasattr(logger, "log_image"):  # W&B
            logger.log_image(key=key, images=[str(png)], step=step)
            continue
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_figure"):  # TensorBoard's SummaryWriter
            experiment.add_figure(key, figure, global_step=step)
        elif hasattr(experiment, "log_figure") and getattr(logger, "run_id", None):  # MlflowClient
            experiment.log_figure(logger.run_id, figure, f"{key}/{tag}.png")
