"""ArcFace criteria: an additive angular margin softmax whose classification head lives inside the loss.

`forward(features, labels)` like every criterion. Labels are the dataset's label ids (any integers): the
known ids (`labels`, or the keys of `label2category`, or 0..num_classes-1) are mapped to rows of the head.
With `label2category`, each sample's softmax runs only over the labels of its own category, so the head
learns to tell apart look-alikes of the same category.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lookalike.errors import LookalikeError

__all__ = ["ArcFaceLoss", "ArcFaceLossWithMLP"]


class ArcFaceLoss(nn.Module):
    """Additive angular margin loss: logit of the true class is s*cos(theta + m), the others s*cos(theta).

    Where theta + m would pass pi, the usual linear extension cos(theta) - m*sin(m) keeps the logit monotone.
    `label_smoothing` spreads that mass over the allowed classes (all, or the sample's category).
    Margin warm-up: with `m_start` and `m_ramp=[first, last]` (epochs counted from 0) the margin is `m_start`
    until epoch `first`, grows linearly to `m` at epoch `last` and stays there, so that a margin too large to
    converge from a fresh head is reached once the classes are apart; the training loop reports progress with
    `set_epoch` (fractional epochs; the pipelines call it every step).
    `last_logs`: `loss`, `accuracy` (top-1 of the head on the plain cosines) and, with a warm-up, `margin`.
    """

    def __init__(self, in_features: int, num_classes: int, *, m: float = 0.5, s: float = 64.0,
                 m_start: float | None = None, m_ramp: Sequence[float] | None = None,
                 label_smoothing: float = 0.0, label2category: Mapping | None = None,
                 labels: Iterable[int] | None = None, reduction: str = "mean") -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise LookalikeError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if reduction not in ("mean", "sum", "none"):
            raise LookalikeError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if not 0.0 <= m < math.pi / 2 or s <= 0:
            raise LookalikeError(f"ArcFace needs a margin 0 <= m < pi/2 (radians, 0.5 is usual) and a scale s > 0, "
                                 f"got m={m}, s={s}")
        self.m_start, self.m_ramp = self._check_warmup(m_start, m_ramp, m)
        ids = self._label_ids(num_classes, labels, label2category)
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.m, self.s, self.label_smoothing, self.reduction = float(m), float(s), float(label_smoothing), reduction
        self.epoch = 0.0
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)
        self.register_buffer("label_ids", torch.as_tensor(ids, dtype=torch.long), persistent=True)
        if label2category is not None:
            lookup = {int(k): v for k, v in label2category.items()}
            absent = [int(i) for i in ids if int(i) not in lookup]
            if absent:
                raise LookalikeError(f"ArcFace: label2category has no category for label(s) {absent[:10]}"
                                     f"{' and more' if len(absent) > 10 else ''}; give every training label one.")
            categories = [str(lookup[int(i)]) for i in ids]
            codes = torch.as_tensor(np.unique(np.asarray(categories, dtype=str), return_inverse=True)[1])
            self.register_buffer("class_category", codes.long().reshape(-1), persistent=True)
        else:
            self.register_buffer("class_category", None)
        self.last_logs: dict[str, float] = {}

    @staticmethod
    def _check_warmup(m_start: float | None, m_ramp: Sequence[float] | None,
                      m: float) -> tuple[float | None, tuple | None]:
        if m_start is None and m_ramp is None:
            return None, None
        if m_start is None or m_ramp is None:
            raise LookalikeError("ArcFace margin warm-up needs both m_start (the first margin) and m_ramp "
                                 "([first, last] epoch of the linear ramp to m), e.g. m_start: 0.3, m_ramp: [1, 8]; "
                                 f"got m_start={m_start!r}, m_ramp={m_ramp!r}.")
        if isinstance(m_start, bool) or not isinstance(m_start, (int, float)) or not 0.0 <= m_start < math.pi / 2:
            raise LookalikeError(f"ArcFace m_start must be a margin in [0, pi/2), got {m_start!r}.")
        ramp = list(m_ramp) if isinstance(m_ramp, (list, tuple)) else None
        if (ramp is None or len(ramp) != 2 or any(isinstance(e, bool) or not isinstance(e, (int, float)) for e in ramp)
                or not 0 <= ramp[0] < ramp[1]):
            raise LookalikeError(f"ArcFace m_ramp must be [first, last] epochs with 0 <= first < last, got {m_ramp!r}.")
        if m_start > m:
            raise LookalikeError(f"ArcFace m_start ({m_start}) is above m ({m}): the warm-up grows the margin up to m.")
        return float(m_start), (float(ramp[0]), float(ramp[1]))

    def set_epoch(self, epoch: float) -> None:
        """Training progress in (fractional) epochs, which sets the margin under a warm-up."""
        self.epoch = float(epoch)

    @property
    def margin(self) -> float:
        """The margin in force: `m`, or under a warm-up the ramp's value at the current epoch."""
        if self.m_ramp is None:
            return self.m
        first, last = self.m_ramp
        t = min(1.0, max(0.0, (self.epoch - first) / (last - first)))
        return self.m_start + (self.m - self.m_start) * t

    @staticmethod
    def _label_ids(num_classes: int, labels: Iterable[int] | None, label2category: Mapping | None) -> np.ndarray:
        if labels is not None:
            ids = np.unique(np.asarray(list(labels), dtype=np.int64))
        elif label2category is not None:
            ids = np.unique(np.asarray([int(k) for k in label2category], dtype=np.int64))
        else:
            ids = np.arange(num_classes, dtype=np.int64)
        if len(ids) != num_classes:
            raise LookalikeError(f"ArcFace: num_classes={num_classes} but the data has {len(ids)} distinct labels; "
                                 "set num_classes to the number of training labels (pipelines infer it).")
        return ids

    @classmethod
    def from_data(cls, feat_dim: int, labels: Sequence[int], label2category: Mapping | None = None, **kwargs):
        """A criterion sized from the extractor's feat_dim and the training labels."""
        ids = np.unique(np.asarray(labels))
        return cls(feat_dim, len(ids), labels=ids, label2category=label2category, **kwargs)

    def class_index(self, labels: Tensor) -> Tensor:
        """Rows of the head for dataset label ids; an id unseen at construction is an error."""
        labels = labels.to(self.label_ids.device).long()
        index = torch.searchsorted(self.label_ids, labels).clamp(max=len(self.label_ids) - 1)
        unknown = self.label_ids[index] != labels
        if bool(unknown.any()):
            raise LookalikeError(f"ArcFace got label(s) {labels[unknown][:10].tolist()} it was not built for; "
                                 "build the criterion from the training labels (labels=... or from_data).")
        return index

    def logits(self, features: Tensor) -> Tensor:
        """Cosines between the normalised features and the normalised class weights, (B, C), in float32 even
        under autocast (scaled by s=64, bf16 cosines would be off by a whole logit)."""
        with torch.autocast(device_type=features.device.type, enabled=False):
            return F.linear(F.normalize(features.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        target = self.class_index(labels)
        cos = self.logits(features).clamp(-1.0, 1.0)
        cos_t = cos.gather(1, target[:, None])
        sin_t = (1.0 - cos_t.square()).clamp(min=1e-12).sqrt()
        m = self.margin
        with_margin = cos_t * math.cos(m) - sin_t * math.sin(m)
        threshold, fallback = math.cos(math.pi - m), math.sin(math.pi - m) * m
        with_margin = torch.where(cos_t > threshold, with_margin, cos_t - fallback)
        logits = cos.scatter(1, target[:, None], with_margin) * self.s

        allowed = None
        if self.class_category is not None:
            allowed = self.class_category[None, :] == self.class_category[target][:, None]
            logits = logits.masked_fill(~allowed, -torch.inf)
        log_p = F.log_softmax(logits, dim=1)
        n_allowed = allowed.sum(1, keepdim=True) if allowed is not None else torch.full_like(cos_t, cos.shape[1])
        smooth = self.label_smoothing / n_allowed
        weights = torch.zeros_like(log_p) + smooth
        if allowed is not None:
            weights = weights.masked_fill(~allowed, 0.0)
        weights = weights.scatter_add(1, target[:, None], torch.full_like(cos_t, 1.0 - self.label_smoothing))
        per_sample = -(weights * log_p.masked_fill(weights == 0, 0.0)).sum(1)

        with torch.no_grad():
            plain = cos.masked_fill(~allowed, -torch.inf) if allowed is not None else cos
            accuracy = (plain.argmax(1) == target).float().mean()
        self.last_logs = {"loss": float(per_sample.detach().mean()), "accuracy": float(accuracy)}
        if self.m_ramp is not None:
            self.last_logs["margin"] = m
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample


class ArcFaceLossWithMLP(ArcFaceLoss):
    """ArcFace on top of an MLP (Linear + BatchNorm + ReLU per hidden layer) applied to the features."""

    # the arguments are spelled out (not **kwargs) so that pipelines see `labels` / `label2category` to fill
    def __init__(self, in_features: int, num_classes: int, *, mlp_features: Sequence[int] = (512,), m: float = 0.5,
                 s: float = 64.0, m_start: float | None = None, m_ramp: Sequence[float] | None = None,
                 label_smoothing: float = 0.0, label2category: Mapping | None = None,
                 labels: Iterable[int] | None = None, reduction: str = "mean") -> None:
        if not mlp_features:
            raise LookalikeError("ArcFaceLossWithMLP needs at least one size in mlp_features")
        mlp_features = [int(f) for f in mlp_features]
        super().__init__(mlp_features[-1], num_classes, m=m, s=s, m_start=m_start, m_ramp=m_ramp,
                         label_smoothing=label_smoothing,
                         label2category=label2category, labels=labels, reduction=reduction)
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip((in_features, *mlp_features[:-1]), mlp_features)):
            layers.append(nn.Linear(c_in, c_out))
            if i < len(mlp_features) - 1:
                layers += [nn.BatchNorm1d(c_out), nn.ReLU(inplace=True)]
        self.mlp = nn.Sequential(*layers)
        self.in_features = int(in_features)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return super().forward(self.mlp(features), labels)
