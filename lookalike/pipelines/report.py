"""Human-readable outputs of the pipelines: a metrics table for the terminal and training-curve plots."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from lookalike.io import atomic_path

__all__ = ["curve_series", "flatten_metrics", "metrics_table", "plot_history"]


def flatten_metrics(results: Mapping, prefix: str = "", sep: str = "/") -> dict[str, float]:
    """``{"OVERALL": {"cmc": {1: 0.5}}}`` -> ``{"OVERALL/cmc/1": 0.5}`` (tensors and numpy scalars as floats)."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, name, sep))
        else:
            try:
                flat[name] = float(value)
            except (TypeError, ValueError):
                continue  # non-numeric extras (e.g. lists) are kept in the JSON only
    return flat


def metrics_table(results: Mapping[str, Mapping]) -> str:
    """One row per group (OVERALL first, then categories), one column per metric@k."""
    rows = {str(group): flatten_metrics(values, sep="@") for group, values in results.items()
            if isinstance(values, Mapping)}
    columns: list[str] = []
    for values in rows.values():
        columns += [c for c in values if c not in columns]
    names = sorted(rows, key=lambda g: (g != "OVERALL", g))
    width = max([len("group")] + [len(n) for n in names])
    col_w = [max(len(c), 6) for c in columns]
    lines = ["  ".join(["group".ljust(width)] + [c.rjust(w) for c, w in zip(columns, col_w)])]
    lines.append("-" * len(lines[0]))
    for name in names:
        cells = [f"{rows[name][c]:.4f}" if c in rows[name] else "-" for c in columns]
        lines.append("  ".join([name.ljust(width)] + [s.rjust(w) for s, w in zip(cells, col_w)]))
    return "\n".join(lines)


def curve_series(history: Mapping[str, Mapping]) -> dict[str, tuple[list[int], list[float]]]:
    """The curves of a run's history, name -> (epochs, values): training logs and OVERALL validation metrics
    (epochs as the run counts them: N = after N epochs, 0 = before training)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for key, entry in history.items():
        if not key.isdigit():
            continue
        for section in ("train", "val"):
            for name, value in (entry.get(section) or {}).items():
                # OVERALL metrics only; the query counts are the same every epoch, not a curve
                if section == "val" and (not name.startswith("OVERALL/") or "/n_queries" in name):
                    continue
                xs, ys = series.setdefault(name, ([], []))
                xs.append(int(key))
                ys.append(value)
    return series


def plot_history(history: Mapping[str, Mapping], path: str | Path) -> Path | None:
    """Training loss and OVERALL validation metrics per epoch, one panel each, saved as a PNG (atomically)."""
    series = curve_series(history)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = sorted(series, key=lambda n: (not n.startswith("loss"), n))
    n = len(names)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        xs, ys = series[name]
        order = sorted(range(len(xs)), key=xs.__getitem__)
        ax.plot([xs[i] for i in order], [ys[i] for i in order], marker="o", markersize=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
