"""Pairwise models: given two items, the logit that they show the same thing (plain PyTorch).

Every model splits into ``encode(x)`` (per item, computed once per item by the re-ranker) and ``score(a, b)``
(per pair, symmetric by construction: ``score(a, b) == score(b, a)``); ``forward(x, y) = score(encode(x),
encode(y))``. ``input_kind`` says what ``x`` is: ``"embeddings"`` or ``"images"``.

- `EmbeddingPairClassifier`: an MLP over ``[a * b, |a - b|]`` of two embeddings; cheap (a few thousand
  multiply-adds per pair), so it can re-rank every query of a large validation.
- `ImagePairClassifier`: the OML ``ConcatSiamese`` idea at feature-map level: a CNN trunk (e.g. the trained
  extractor's convolutional body) encodes each image into a spatial feature map; the head compares the two maps
  position by position (``[fa * fb, |fa - fb|]``, convolutions, pooling, MLP). ConcatSiamese stacks the two
  images and runs the backbone once per *pair*; here the trunk runs once per *item* and only the light head
  runs per pair, so re-ranking n candidates costs n head passes, not n backbone passes, while the head still
  sees spatial detail that the pooled embedding has lost.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lookalike.errors import CheckpointError, LookalikeError
from lookalike.models.base import blank_forward

__all__ = ["PairwiseModel", "EmbeddingPairClassifier", "ImagePairClassifier", "PAIRWISE_MODELS",
           "build_pairwise_model", "load_pairwise_model", "save_pairwise_model", "saved_pairwise_spec"]


def _mlp(in_features: int, hidden_dims: Sequence[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden_dims:
        layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = int(h)
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def _check_dims(hidden_dims: Sequence[int], dropout: float, owner: str) -> tuple[int, ...]:
    dims = tuple(hidden_dims)
    if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in dims):
        raise LookalikeError(f"{owner}: hidden_dims must be positive integers, got {list(dims)}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise LookalikeError(f"{owner}: dropout must be in [0, 1), got {dropout!r}.")
    return dims


class PairwiseModel(nn.Module):
    """Base: ``encode`` per item, ``score`` per pair (logit of "same"), ``predict`` = P(different)."""

    input_kind = "embeddings"

    def encode(self, x: Tensor) -> Tensor:
        return x

    def score(self, a: Tensor, b: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.score(self.encode(x), self.encode(y))

    @torch.no_grad()
    def predict(self, x: Tensor, y: Tensor) -> Tensor:
        """P(the two items are different): the distance-like value a re-ranker sorts by."""
        return torch.sigmoid(-self(x, y))


class EmbeddingPairClassifier(PairwiseModel):
    """MLP over the symmetric combination ``[a * b, |a - b|]`` of two (L2-normalised when ``normalise``)
    embeddings of size ``in_features`` -> one logit of "same".

    ``residual``: the logit is ``scale * (cos(a, b) - shift) + MLP(...)`` with the MLP's last layer starting at
    zero, so the untrained model orders candidates exactly as the cosine does and training can only move away
    from the search's order where the pairs show a reason to (a plain MLP starts from noise and must re-learn
    the cosine from the few pairs it is given)."""

    def __init__(self, in_features: int, hidden_dims: Sequence[int] = (256,), dropout: float = 0.1,
                 normalise: bool = True, residual: bool = False) -> None:
        super().__init__()
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise LookalikeError(f"EmbeddingPairClassifier: in_features must be a positive integer, "
                                 f"got {in_features!r}.")
        self.in_features, self.normalise, self.residual = in_features, bool(normalise), bool(residual)
        self.head = _mlp(2 * in_features, _check_dims(hidden_dims, dropout, "EmbeddingPairClassifier"), dropout)
        if self.residual:
            self.scale = nn.Parameter(torch.tensor(10.0))
            self.shift = nn.Parameter(torch.tensor(0.5))
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def encode(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise LookalikeError(f"EmbeddingPairClassifier expects embeddings of size {self.in_features}, "
                                 f"got shape {tuple(x.shape)}.")
        x = x.float()
        return nn.functional.normalize(x, dim=1) if self.normalise else x

    def score(self, a: Tensor, b: Tensor) -> Tensor:
        product = a * b
        logit = self.head(torch.cat([product, (a - b).abs()], dim=1)).squeeze(1)
        if self.residual:
            cosine = product.sum(dim=1) if self.normalise else nn.functional.cosine_similarity(a, b, dim=1)
            logit = logit + self.scale * (cosine - self.shift)
        return logit


class ImagePairClassifier(PairwiseModel):
    """Siamese head over CNN feature maps: ``trunk`` (images -> (B, trunk_channels, h, w)), a 1x1 projection to
    ``channels``, then per pair ``[fa * fb, |fa - fb|]`` -> 3x3 conv -> ReLU -> global average + max pooling
    -> MLP -> logit. ``freeze_trunk`` keeps the trunk's weights (and BatchNorm statistics) fixed."""

    input_kind = "images"

    def __init__(self, trunk: nn.Module, trunk_channels: int, channels: int = 64,
                 hidden_dims: Sequence[int] = (128,), dropout: float = 0.3, freeze_trunk: bool = True) -> None:
        super().__init__()
        dims = _check_dims(hidden_dims, dropout, "ImagePairClassifier")
        self.trunk = trunk
        self.freeze_trunk = bool(freeze_trunk)
        self.project = nn.Sequential(nn.Conv2d(trunk_channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.compare = nn.Sequential(nn.Conv2d(2 * channels, channels, 3, padding=1), nn.ReLU(inplace=True))
        self.head = _mlp(2 * channels, dims, dropout)
        if self.freeze_trunk:
            for p in self.trunk.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ImagePairClassifier":
        super().train(mode)
        if self.freeze_trunk:
            self.trunk.eval()
        return self

    def encode(self, x: Tensor) -> Tensor:
        return self.encode_maps(self.trunk(x))

    def encode_maps(self, maps: Tensor) -> Tensor:
        """``encode`` from the trunk's feature maps: a frozen trunk's maps can be computed once and cached."""
        if maps.ndim != 4:
            raise LookalikeError(f"ImagePairClassifier: the trunk must return feature maps (B, C, h, w), got "
                                 f"shape {tuple(maps.shape)}; use the convolutional body of a CNN.")
        return self.project(maps)

    def score(self, a: Tensor, b: Tensor) -> Tensor:
        joint = self.compare(torch.cat([a * b, (a - b).abs()], dim=1))
        pooled = torch.cat([joint.mean(dim=(2, 3)), joint.amax(dim=(2, 3))], dim=1)
        return self.head(pooled).squeeze(1)


class _FeatureMaps(nn.Module):
    """A timm CNN's feature maps (``forward_features``: everything before its pooling)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return self.net.forward_features(images)


def conv_trunk(extractor: nn.Module) -> tuple[nn.Module, int]:
    """The convolutional body of a lookalike CNN extractor (ResNet, small CNN, a timm CNN) and its output
    channels: the part before pooling, whose feature maps `ImagePairClassifier` compares; under `embed_from`, the
    stages the embedding runs through (not the training-only projection after them)."""
    backbone = getattr(extractor, "backbone", None)
    net = getattr(backbone, "net", None)
    tapped = getattr(extractor, "embedding_stages", None)
    if tapped:
        trunk: nn.Module = nn.Sequential(*(extractor.get_submodule(name) for name in tapped))
    elif net is not None and callable(getattr(net, "forward_features", None)):  # the timm extractor
        trunk = _FeatureMaps(net)
    elif isinstance(backbone, nn.Sequential) and len(backbone) >= 2:
        layers = list(backbone.children())[:-1]  # everything but the pooling
        trunk = layers[0] if len(layers) == 1 else nn.Sequential(*layers)
    else:
        raise LookalikeError(f"{type(extractor).__name__} has no convolutional body to take feature maps from; "
                             "the image pairwise model needs a CNN extractor (resnet, small_cnn, timm CNNs).")
    try:
        maps = blank_forward([trunk], 64)
    except (AssertionError, RuntimeError) as exc:
        raise LookalikeError(f"{type(extractor).__name__}: its body does not take a 64 px image ({exc}); the "
                             "image pairwise model needs a CNN extractor.") from None
    if maps.ndim != 4:
        raise LookalikeError(f"{type(extractor).__name__}: its body returns shape {tuple(maps.shape)}, not feature "
                             "maps (B, C, h, w) (a transformer?); the image pairwise model needs a CNN extractor.")
    return trunk, int(maps.shape[1])


#: registry names of the pairwise models (the ``pairwise_model`` block of ``lookalike train-pairwise``)
PAIRWISE_MODELS = {"embedding_mlp": EmbeddingPairClassifier, "image_siamese": ImagePairClassifier}


def build_pairwise_model(name: str, args: dict[str, Any], *, feat_dim: int | None = None,
                         extractor: nn.Module | None = None) -> PairwiseModel:
    """A pairwise model by registry name; ``feat_dim`` fills ``in_features`` and ``extractor`` the trunk."""
    args = dict(args)
    if name == "embedding_mlp":
        if "in_features" not in args or args["in_features"] == "auto":
            if feat_dim is None:
                raise LookalikeError("embedding_mlp needs in_features (the embedding size).")
            args["in_features"] = int(feat_dim)
        return EmbeddingPairClassifier(**args)
    if name == "image_siamese":
        if extractor is None:
            raise LookalikeError("image_siamese needs an extractor whose convolutional body is its trunk.")
        trunk, channels = conv_trunk(extractor)
        return ImagePairClassifier(trunk, channels, **args)
    from lookalike.errors import unknown_choice

    raise LookalikeError(unknown_choice("pairwise model", name, list(PAIRWISE_MODELS)))


def save_pairwise_model(model: PairwiseModel, spec: dict, path: str | os.PathLike) -> None:
    """Weights and the model block (``{name, args}``) in one file (atomic; loadable with weights_only)."""
    import json

    from lookalike.io import atomic_path

    state = {"state_dict": {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()},
             "pairwise_model": json.dumps(spec)}
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save(state, tmp)


def saved_pairwise_spec(path: str | os.PathLike) -> dict:
    """The model block (``{name, args, feat_dim}``) stored in a pairwise checkpoint, without building the model."""
    import json

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"pairwise checkpoint {path!r} not found; give a train-pairwise run's "
                              "pairwise/checkpoints/best.ckpt.")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        return json.loads(raw["pairwise_model"])
    except Exception as exc:
        raise CheckpointError(f"pairwise checkpoint {path} cannot be read as a lookalike pairwise model "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); it must "
                              "be written by lookalike train-pairwise.") from None


def load_pairwise_model(path: str | os.PathLike, extractor: nn.Module | None = None) -> PairwiseModel:
    """The pairwise model saved by `save_pairwise_model` or a ``train-pairwise`` checkpoint, in eval mode.
    Image models need the ``extractor`` the trunk was taken from (same architecture)."""
    from lookalike.models.checkpoints import load_into, load_weights

    path = os.fspath(path)
    spec = saved_pairwise_spec(path)
    model = build_pairwise_model(spec["name"], spec.get("args") or {}, feat_dim=spec.get("feat_dim"),
                                 extractor=extractor)
    load_into(model, load_weights(path, prefix="model."))
    return model.eval()
