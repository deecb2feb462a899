"""Triplet losses: on given (anchor, positive, negative) triplets, and as a criterion with a miner inside."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lookalike.errors import ArgumentError, unknown_choice
from lookalike.miners import HardTripletsMiner, TripletMiner, paired_euclidean

__all__ = ["TripletLoss", "TripletLossWithMiner"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_options(margin: float | None, reduction: str) -> None:
    if margin is not None and margin < 0:
        raise ArgumentError(f"triplet loss: margin must be >= 0, or None (null in YAML) for the soft margin; got "
                            f"{margin} (criterion.args.margin in a config)")
    if reduction not in _REDUCTIONS:
        raise ArgumentError("triplet loss: " + unknown_choice("reduction", reduction, _REDUCTIONS))


def _triplet_terms(d_ap: Tensor, d_an: Tensor, margin: float | None) -> Tensor:
    """Per-triplet loss: ``relu(d_ap - d_an + margin)``, or ``log(1 + exp(d_ap - d_an))`` when margin is None."""
    if margin is None:
        return F.softplus(d_ap - d_an)
    return F.relu(d_ap - d_an + margin)


def _reduce(per_triplet: Tensor, reduction: str, anchor: Tensor) -> Tensor:
    if len(per_triplet) == 0:  # no triplet: a zero that stays connected to the graph
        zero = anchor.sum() * 0.0 + 0.0  # (+ 0.0 turns a -0.0 into 0.0)
        return zero.expand(0) if reduction == "none" else zero
    if reduction == "mean":
        return per_triplet.mean()
    if reduction == "sum":
        return per_triplet.sum()
    return per_triplet


class TripletLoss(nn.Module):
    """Triplet loss on euclidean distances of given triplets: ``forward(anchor, positive, negative)``.

    ``margin`` > 0: ``max(0, d(a, p) - d(a, n) + margin)``; ``margin=None``: the soft margin
    ``log(1 + exp(d(a, p) - d(a, n)))`` (computed with softplus, stable for large differences).
    ``reduction``: "mean", "sum" or "none" (per-triplet values). Zero triplets give a zero (empty for
    "none") connected to the inputs. Distances use a safe sqrt: identical points give distance 0, gradient 0.
    """

    def __init__(self, margin: float | None = 0.2, reduction: str = "mean") -> None:
        super().__init__()
        _check_options(margin, reduction)
        self.margin = margin
        self.reduction = reduction

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        if not (anchor.shape == positive.shape == negative.shape) or anchor.ndim != 2:
            raise ArgumentError(
                "triplet loss: anchor, positive and negative must be 2-D tensors of the same shape (n_triplets, dim); "
                f"got {tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}; the extractor must "
                "return one embedding vector per image"
            )
        terms = _triplet_terms(paired_euclidean(anchor, positive), paired_euclidean(anchor, negative), self.margin)
        return _reduce(terms, self.reduction, anchor)


class TripletLossWithMiner(nn.Module):
    """Criterion ``forward(features, labels)``: mine triplets in the batch, then the triplet loss on them.

    ``miner`` defaults to ``HardTripletsMiner()``. After each call ``last_logs`` (when ``need_logs``) holds
    python floats: ``loss`` (the mean per-triplet loss, whatever the reduction), ``n_triplets``,
    ``active_triplets`` (fraction of triplets with a positive loss), ``pos_dist`` and ``neg_dist`` (mean
    anchor-positive and anchor-negative distances). A batch without a triplet gives a zero loss connected to
    ``features`` (so ``backward`` works) and logs with ``n_triplets`` 0 and the other values 0.
    """

    def __init__(
        self,
        margin: float | None = 0.2,
        miner: TripletMiner | None = None,
        reduction: str = "mean",
        need_logs: bool = True,
    ) -> None:
        super().__init__()
        _check_options(margin, reduction)
        self.margin = margin
        self.miner = miner if miner is not None else HardTripletsMiner()
        self.reduction = reduction
        self.need_logs = need_logs
        self.last_logs: dict[str, float] = {}

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        anchors, positives, negatives = self.miner(features, labels)
        d_ap = paired_euclidean(anchors, positives)
        d_an = paired_euclidean(anchors, negatives)
        terms = _triplet_terms(d_ap, d_an, self.margin)
        loss = _reduce(terms, self.reduction, features)
        if self.need_logs:
            self.last_logs = self._logs(terms.detach(), d_ap.detach(), d_an.detach())
        return loss

    @staticmethod
    def _logs(terms: Tensor, d_ap: Tensor, d_an: Tensor) -> dict[str, float]:
        n = len(terms)
        if n == 0:
            return {"loss": 0.0, "n_triplets": 0.0, "active_triplets": 0.0, "pos_dist": 0.0, "neg_dist": 0.0}
        return {
            "loss": float(terms.mean()),
            "n_triplets": float(n),
            "active_triplets": float((terms > 0).float().mean()),
            "pos_dist": float(d_ap.mean()),
            "neg_dist": float(d_an.mean()),
        }
