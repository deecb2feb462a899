"""`Extractor`: a backbone, an optional projection head and optional L2 normalisation, with one feat_dim."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Extractor", "Stages", "blank_forward"]

#: a backbone as a plain sequence: its stages in order (extractor-level module names) and the pooling after them
Stages = tuple[list[tuple[str, nn.Module]], Callable[[Tensor], Tensor]]


class Extractor(nn.Module):
    """Images (B, 3, H, W) -> embeddings (B, feat_dim).

    `backbone` maps images to (B, backbone_dim) vectors; `embedding_dim` adds a linear projection to that size;
    `normalise` L2-normalises the output; `weights` (a checkpoint path or "zoo:<name>") is loaded last, so it
    covers the head too. Subclasses only build the backbone.

    `embed_from` (a stage of `backbone_stages`, e.g. ``backbone.net.blocks.6``) takes the embedding from that
    stage's output, pooled as the extractor pools, instead; the later stages, the pooling and the head then form a
    projection that only the training loss sees (`training_features`), as SimCLR discards its projection head:
    features before it carry over better to labels never trained on.
    """

    def __init__(self, backbone: nn.Module, backbone_dim: int, *, embedding_dim: int | None = None,
                 normalise: bool = True, weights: str | os.PathLike | None = None,
                 embed_from: str | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone_dim, embedding_dim) if embedding_dim else nn.Identity()
        self.normalise = normalise
        self._training_dim = int(embedding_dim or backbone_dim)
        self._feat_dim = self._training_dim
        self.embed_from: str | None = None
        self._embed_names: list[str] = []  # looked up at each call: a stage replaced later is followed
        self._embed_pool: list[Callable[[Tensor], Tensor]] = []  # a plain list: the pooling is registered already
        if embed_from is not None:
            self._tap(str(embed_from))
        if weights is not None:
            self.load_weights(weights)

    @property
    def feat_dim(self) -> int:
        """Size of the embeddings this extractor returns."""
        return self._feat_dim

    @property
    def training_dim(self) -> int:
        """Size of the vectors the training loss sees (`training_features`): `feat_dim` unless `embed_from`."""
        return self._training_dim

    def forward(self, images: Tensor) -> Tensor:
        """The embeddings of a batch of images."""
        if self.embed_from is None:
            return self._through_head(images)
        maps = images
        for name in self._embed_names:
            maps = self.get_submodule(name)(maps)
        features = self._embed_pool[0](maps)
        return F.normalize(features, dim=1) if self.normalise else features

    def training_features(self, images: Tensor) -> Tensor:
        """What the training loss sees: the embeddings (``self(images)``), or under `embed_from` the output of the
        whole network and the head, the projection the embedding skips."""
        return self(images) if self.embed_from is None else self._through_head(images)

    def _through_head(self, images: Tensor) -> Tensor:
        features = self.head(self.backbone(images))
        return F.normalize(features, dim=1) if self.normalise else features

    @property
    def embedding_stages(self) -> list[str]:
        """The stages the embedding runs through under `embed_from` (extractor-level names), else []."""
        return list(self._embed_names)

    def _tap(self, name: str) -> None:
        """Takes the embedding from stage `name` of `backbone_stages` (see `embed_from`)."""
        from lookalike.errors import LookalikeError

        described = self.backbone_stages()
        if described is None:
            raise LookalikeError(f"{type(self).__name__}: embed_from needs a backbone that is a plain sequence of "
                                 "stages (ResNet, SmallCNN, timm's EfficientNet class and ResNets); this one is not.")
        stages, pool = described
        order = [stage for stage, _ in stages]
        if name not in order:
            raise LookalikeError(f"embed_from: {name!r} is not a stage of {type(self).__name__}'s backbone; its "
                                 f"stages: {', '.join(order)}.")
        self._embed_names = order[:order.index(name) + 1]
        self._embed_pool = [pool]  # the extractor's own pooling (a module it holds, or a bound method)
        tapped = [module for _, module in stages[:len(self._embed_names)]]
        try:
            self._feat_dim = int(blank_forward([*tapped, pool], 128).shape[-1])
        except (RuntimeError, ValueError) as exc:
            raise LookalikeError(f"embed_from: {name!r}: a 128 px image does not pass through the stages up to it "
                                 f"({str(exc).splitlines()[0]}).") from None
        self.embed_from = name

    def load_weights(self, weights: str | os.PathLike) -> str:
        """Load a checkpoint file, or "zoo:<name>" from the model zoo (hash-checked), and return one line saying
        what was loaded. A file of this extractor's keys loads whole; a plain backbone state dict (a torchvision
        or timm `state_dict()`) loads into the backbone, keeps the head as initialised and says so on stderr."""
        import sys

        from lookalike.models.checkpoints import load_pretrained

        text = str(weights)
        if text.startswith("zoo:"):
            from lookalike.models.zoo import zoo_state_dict

            state, source = zoo_state_dict(text[len("zoo:"):], model=self)
        else:
            state, source = weights, None
        report = load_pretrained(self, state, source=source)
        if report:
            print(report, file=sys.stderr)
        return report

    def plain_key(self, key: str) -> str | None:
        """This extractor's key for `key` of the plain network's own `state_dict()` (torchvision / timm names),
        or None for a key the extractor does not hold (the classifier). Subclasses with such a network
        override it; the default knows none."""
        return None

    def backbone_stages(self) -> Stages | None:
        """The backbone as ordered stages and the pooling after them, for backbones that are a plain sequence
        (CNNs); None where they are not. `split_frozen_prefix` uses it."""
        return None

    def split_frozen_prefix(self, names: Sequence[str]) -> tuple[nn.Module, nn.Module]:
        """``(trunk, rest)`` with ``rest(trunk(images)) == self.training_features(images)`` (the embeddings, unless
        `embed_from`): ``trunk`` runs the stages ``names`` (extractor-level module names, e.g.
        ``backbone.net.blocks.0``), which must be the backbone's first stages, ``rest`` runs the others (none when
        every stage is named), the pooling, the head and the normalisation. Both share this extractor's modules.
        Lets training compute a frozen trunk's output once per image instead of once per step."""
        from lookalike.errors import LookalikeError

        described = self.backbone_stages()
        if described is None:
            raise LookalikeError(f"{type(self).__name__}: its backbone is not a plain sequence of stages, so it cannot "
                                 "be split after its first stages (supported: ResNet, SmallCNN, and timm's "
                                 "EfficientNet class (EfficientNet, -Lite, MobileNetV2, MNASNet) and ResNets).")
        stages, pool = described
        order = [name for name, _ in stages]
        wanted = list(dict.fromkeys(names))
        if not wanted or order[:len(wanted)] != wanted:
            shown = ", ".join(order[:6]) + (" ..." if len(order) > 6 else "")
            raise LookalikeError(f"the layers {wanted} are not the first stages of {type(self).__name__}'s backbone "
                                 f"in order; its stages: {shown}. Name a prefix of them, in that order.")
        trunk = nn.Sequential(*(module for _, module in stages[:len(wanted)]))
        return trunk, _Rest(self, [module for _, module in stages[len(wanted):]], pool)

    def freeze_backbone(self) -> None:
        """Train only the head (e.g. for the first epochs on top of pretrained weights). Only gradients are
        switched off: call `self.backbone.eval()` too to keep BatchNorm statistics fixed."""
        self.backbone.requires_grad_(False)

    def unfreeze_backbone(self) -> None:
        """Make the backbone trainable again."""
        self.backbone.requires_grad_(True)


def blank_forward(parts: Sequence[Callable[[Tensor], Tensor]], height: int, width: int | None = None) -> Tensor:
    """``parts`` applied in turn to one blank image (1, 3, height, width), without gradients, in eval mode on the
    parameters' device and dtype: the output size of a network's piece without touching its BatchNorm statistics.
    The training flags of every module involved (a bound method's owner too) are restored."""
    owners = [part if isinstance(part, nn.Module) else getattr(part, "__self__", None) for part in parts]
    modules = [module for owner in owners if isinstance(owner, nn.Module) for module in owner.modules()]
    first = next((p for module in modules for p in module.parameters(recurse=False)), None)
    saved = [(module, module.training) for module in modules]
    try:
        for module, _ in saved:
            module.training = False
        with torch.no_grad():
            x = torch.zeros(1, 3, height, width or height, device=first.device if first is not None else "cpu",
                            dtype=first.dtype if first is not None else torch.float32)
            for part in parts:
                x = part(x)
    finally:
        for module, training in saved:
            module.training = training
    return x


class _Rest(nn.Module):
    """The part of an extractor after a split trunk: later stages, pooling, head, normalisation (what the loss
    sees: `Extractor.training_features`)."""

    def __init__(self, extractor: Extractor, stages: list[nn.Module], pool: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.stages = nn.Sequential(*stages)
        self.head = extractor.head
        self.normalise = extractor.normalise
        self._pool = [pool]  # a bound method of the backbone, or a module it already holds

    def forward(self, maps: Tensor) -> Tensor:
        features = self.head(self._pool[0](self.stages(maps)))
        return F.normalize(features, dim=1) if self.normalise else features
