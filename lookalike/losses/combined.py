"""A weighted sum of criteria, e.g. ArcFace (class centres: fast, stable) plus a triplet loss with a hard miner
(the hardest negatives of each P x K batch: on data where a drawing style is shared across labels, these are the
same-style look-alikes that ArcFace's centres do not single out)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from lookalike.errors import LookalikeError

__all__ = ["WeightedSumLoss"]


class WeightedSumLoss(nn.Module):
    """``sum(w_i * criterion_i(features, labels))``. ``last_logs``: ``loss`` and each term's logs prefixed by its
    index (``0/loss``, ``1/n_triplets``, ...)."""

    def __init__(self, criteria: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not criteria:
            raise LookalikeError("WeightedSumLoss needs at least one criterion.")
        weights = [1.0] * len(criteria) if weights is None else [float(w) for w in weights]
        if len(weights) != len(criteria) or any(w < 0 for w in weights):
            raise LookalikeError(f"WeightedSumLoss: {len(criteria)} criteria need as many weights >= 0, got "
                                 f"{list(weights)}.")
        self.criteria = nn.ModuleList(criteria)
        self.weights = weights
        self.last_logs: dict[str, float] = {}

    def set_epoch(self, epoch: float) -> None:
        """Training progress, passed on to every term that follows it (e.g. ArcFace's margin warm-up)."""
        for criterion in self.criteria:
            if callable(getattr(criterion, "set_epoch", None)):
                criterion.set_epoch(epoch)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        total, logs = None, {}
        for i, (criterion, weight) in enumerate(zip(self.criteria, self.weights)):
            term = criterion(features, labels)
            total = weight * term if total is None else total + weight * term
            for key, value in (getattr(criterion, "last_logs", None) or {}).items():
                logs[f"{i}/{key}"] = value
        logs["loss"] = float(total.detach())
        self.last_logs = logs
        return total
