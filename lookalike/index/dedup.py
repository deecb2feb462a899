"""Near-duplicate groups: items within a distance threshold of each other, grouped transitively (connected
components of the "within threshold" graph), found with exact chunked top-k search (never the N x N matrix)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from lookalike.errors import LookalikeError
from lookalike.retrieval import ExactSearch, pair_distances
from lookalike.retrieval.base import as_embeddings, check_distance

__all__ = ["near_duplicate_groups", "connected_components"]


def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component label (its smallest member) of each of ``n`` nodes given the edges ``a[i] - b[i]``: min-label
    propagation with pointer jumping, vectorised over the edges."""
    labels = np.arange(n)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    while True:
        before = labels.copy()
        low = np.minimum(labels[a], labels[b])
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        while True:  # pointer jumping: every node points at its label's label until stable
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels, before):
            return labels


def near_duplicate_groups(embeddings: Any, threshold: float, *, distance: str = "cosine",
                          k: int = 16) -> pd.DataFrame:
    """Groups of items whose distance to another member is at most ``threshold`` (transitively).

    Returns one row per grouped item (items without a near duplicate are left out): ``group`` (0 = the
    largest group; ties by the position of their first item), ``position`` (row in ``embeddings``) and
    ``distance`` (to the group's first item, the member that comes first in ``embeddings``; 0 for itself).
    Rows are sorted by group, the first item first, then by distance. Each item's neighbours are searched
    ``k`` at a time, doubling ``k`` while its farthest neighbour found is still within the threshold.
    """
    distance = check_distance(distance)
    x = as_embeddings(embeddings, "embeddings")
    threshold = float(threshold)
    if not np.isfinite(threshold):
        raise LookalikeError(f"threshold must be a finite distance, got {threshold!r}.")
    n = len(x)
    empty = pd.DataFrame({"group": np.zeros(0, np.int64), "position": np.zeros(0, np.int64),
                          "distance": np.zeros(0, np.float32)})
    if n < 2:
        return empty
    search = ExactSearch(distance)
    everyone = torch.arange(n)
    todo, width = everyone, min(max(int(k), 1), n - 1)
    src, dst = [], []
    while len(todo):
        d, i = search.search(x[todo], x, width, exclude=(todo, everyone))
        close = (d <= threshold) & (i >= 0)
        rows, cols = close.nonzero(as_tuple=True)
        src.append(todo[rows].numpy())
        dst.append(i[rows, cols].numpy())
        if width >= n - 1:
            break
        todo = todo[close[:, -1]]  # all `width` neighbours within the threshold: there may be more
        width = min(2 * width, n - 1)
    a, b = np.concatenate(src), np.concatenate(dst)
    if len(a) == 0:
        return empty
    labels = connected_components(n, a, b)
    members = np.flatnonzero(np.bincount(labels, minlength=n)[labels] >= 2)
    first = labels[members]  # the smallest position of a component is its label
    dist = pair_distances(x, x, torch.from_numpy(members), torch.from_numpy(first), distance).numpy()
    size = np.bincount(labels, minlength=n)[first]
    # groups by size (largest first), then by the position of their first item
    order_groups = np.lexsort((first, -size))
    group_of_label = {}
    for lab in first[order_groups]:
        group_of_label.setdefault(int(lab), len(group_of_label))
    group = np.array([group_of_label[int(lab)] for lab in first], dtype=np.int64)
    is_first = members == first
    order = np.lexsort((members, dist, ~is_first, group))
    return pd.DataFrame({"group": group[order], "position": members[order],
                         "distance": np.where(is_first, 0.0, dist)[order].astype(np.float32)})
