"""Registries: config names of components mapped to lazy import paths.

Nothing heavy is imported here; a component's module is imported only when a config names it. A user's own
class or function plugs in by an import path, ``name: my_pkg.module:MyClass``, in any block.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from lookalike.errors import ConfigError, suggest

__all__ = [
    "Entry",
    "Registry",
    "REGISTRIES",
    "TRANSFORMS_REGISTRY",
    "EXTRACTORS_REGISTRY",
    "SAMPLERS_REGISTRY",
    "CRITERIA_REGISTRY",
    "MINERS_REGISTRY",
    "OPTIMIZERS_REGISTRY",
    "SCHEDULERS_REGISTRY",
    "LOGGERS_REGISTRY",
    "POSTPROCESSORS_REGISTRY",
    "import_object",
]


def import_object(path: str, where: str) -> Any:
    """The object at ``'package.module:attr'`` (attr may be dotted); ConfigError naming ``where`` otherwise."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{where}: {path!r} is not an import path; write it as 'package.module:ClassName'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{where}: cannot import module {module_name!r} for {path!r} ({type(exc).__name__}: {exc}). "
            "Check the spelling and that the package is installed or on PYTHONPATH."
        ) from None
    except Exception as exc:  # the module itself fails while it is imported (a bug, a missing file, ...)
        raise ConfigError(
            f"{where}: importing module {module_name!r} for {path!r} failed inside that module "
            f"({type(exc).__name__}: {exc}); fix the module, or pick a registered name."
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(f"{where}: {module_name!r} has no attribute {attr!r}{suggest(part, public)}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{where}: {path!r} is not a class or a function.")
    return obj


@dataclass(frozen=True)
class Entry:
    """One registered component: where it lives, keyword arguments the registry binds, a package it needs."""

    target: str
    fixed: Mapping[str, Any] = field(default_factory=dict)
    requires: str | None = None
    doc: str = ""
    #: (import path of a mapping, key): the callable whose signature documents and checks the args, when the
    #: target itself only forwards ``**kwargs`` (e.g. transform presets behind ``get_transforms``)
    signature_from: tuple[str, str] | None = None


class Registry:
    """Names of one kind of component (extractors, samplers, ...) mapped to lazily imported callables."""

    def __init__(self, kind: str, entries: Mapping[str, Entry]):
        self.kind = kind
        self._entries = dict(entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def entry(self, name: str) -> Entry | None:
        return self._entries.get(name)

    def register(self, name: str, target: str, **kwargs: Any) -> None:
        """Adds (or replaces) a name, e.g. ``EXTRACTORS_REGISTRY.register('mine', 'my_pkg.models:Mine')``."""
        self._entries[name] = Entry(target, **kwargs)

    def resolve(self, name: Any, where: str) -> tuple[Callable, dict[str, Any]]:
        """The callable for ``name`` (a registered name or an import path) and the kwargs the registry binds."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: expected a component name (a string), got {name!r}.")
        if name in self._entries:
            entry = self._entries[name]
            if entry.requires and importlib.util.find_spec(entry.requires) is None:
                from lookalike.extras import install_hint

                raise ConfigError(
                    f"{where}: {self.kind} {name!r} needs the package {entry.requires!r}, which is not installed: "
                    f"{install_hint(entry.requires)} (or pick another {self.kind})."
                )
            return import_object(entry.target, f"{where} ({name!r} -> {entry.target})"), dict(entry.fixed)
        if ":" in name:
            return import_object(name, where), {}
        raise ConfigError(
            f"{where}: unknown {self.kind} {name!r}{suggest(name, self._entries)}. "
            f"Valid names: {', '.join(self._entries)}; or an import path 'package.module:ClassName'."
        )

    def signature(self, name: str, where: str) -> inspect.Signature:
        """Signature of the component without the arguments the registry binds."""
        return signature_without(self.signature_callable(name, where), self.resolve(name, where)[1])

    def signature_callable(self, name: str, where: str) -> Callable:
        """The callable whose signature the args of ``name`` are checked against."""
        fn, _ = self.resolve(name, where)
        entry = self._entries.get(name)
        if entry is not None and entry.signature_from is not None:
            mapping_path, key = entry.signature_from
            module_name, _, attr = mapping_path.partition(":")
            mapping = getattr(importlib.import_module(module_name), attr, None)
            if isinstance(mapping, Mapping) and callable(mapping.get(key)):
                return mapping[key]
        return fn


def signature_without(fn: Callable, drop: Mapping[str, Any] | tuple[str, ...] = ()) -> inspect.Signature:
    """``inspect.signature`` of a class or function, less the named parameters."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: accept anything
        return inspect.Signature([inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])
    return sig.replace(parameters=[p for p in sig.parameters.values() if p.name not in drop])


def _entries(target_of: Mapping[str, str], **common: Any) -> dict[str, Entry]:
    return {name: Entry(target, **common) for name, target in target_of.items()}


_TRANSFORMS = "lookalike.data.transforms:get_transforms"
_PRESETS = "lookalike.data.transforms:TRANSFORM_PRESETS"
TRANSFORMS_REGISTRY = Registry(
    "transforms",
    {
        # presets of lookalike.data.transforms.get_transforms, by preset name
        "train": Entry(_TRANSFORMS, {"name": "train"}, doc="augmentations for training",
                       signature_from=(_PRESETS, "train")),
        "val": Entry(_TRANSFORMS, {"name": "val"}, doc="pad to square, resize, normalise",
                     signature_from=(_PRESETS, "val")),
        "to_tensor": Entry(_TRANSFORMS, {"name": "to_tensor"}, doc="floats in [0, 1], no normalisation",
                           signature_from=(_PRESETS, "to_tensor")),
        "none": Entry(_TRANSFORMS, {"name": "none"}, doc="floats in [0, 1] at the original size"),
    },
)

EXTRACTORS_REGISTRY = Registry(
    "extractor",
    {
        "resnet": Entry("lookalike.models:ResNetExtractor"),
        "vit": Entry("lookalike.models:ViTExtractor"),
        "timm": Entry("lookalike.models:TimmExtractor", requires="timm"),
        "small_cnn": Entry("lookalike.models:SmallCNNExtractor"),
        "text_transformer": Entry("lookalike.models.texts:TextExtractor", requires="transformers",
                                  doc="texts: a transformers encoder from a local folder or package, mean-pooled"),
    },
)

SAMPLERS_REGISTRY = Registry(
    "sampler",
    _entries(
        {
            "balance": "lookalike.data.samplers:BalanceSampler",
            "category_balance": "lookalike.data.samplers:CategoryBalanceSampler",
            "distinct_category_balance": "lookalike.data.samplers:DistinctCategoryBalanceSampler",
        }
    ),
)

CRITERIA_REGISTRY = Registry(
    "criterion",
    _entries(
        {
            "triplet_with_miner": "lookalike.losses.triplet:TripletLossWithMiner",
            "arcface": "lookalike.losses.arcface:ArcFaceLoss",
            "arcface_with_mlp": "lookalike.losses.arcface:ArcFaceLossWithMLP",
            "sum": "lookalike.losses.combined:WeightedSumLoss",
        }
    ),
)

MINERS_REGISTRY = Registry(
    "miner",
    _entries(
        {
            "all_triplets": "lookalike.miners:AllTripletsMiner",
            "hard_triplets": "lookalike.miners:HardTripletsMiner",
            "n_hard_triplets": "lookalike.miners:NHardTripletsMiner",
            "hard_cluster": "lookalike.miners:HardClusterMiner",
            "memory_bank": "lookalike.miners:MemoryBankMiner",
        }
    ),
)

OPTIMIZERS_REGISTRY = Registry(
    "optimizer",
    _entries(
        {
            "sgd": "torch.optim:SGD",
            "adam": "torch.optim:Adam",
            "adamw": "torch.optim:AdamW",
            "rmsprop": "torch.optim:RMSprop",
        }
    ),
)

SCHEDULERS_REGISTRY = Registry(
    "scheduler",
    _entries(
        {
            "step": "torch.optim.lr_scheduler:StepLR",
            "multi_step": "torch.optim.lr_scheduler:MultiStepLR",
            "exponential": "torch.optim.lr_scheduler:ExponentialLR",
            "cosine": "torch.optim.lr_scheduler:CosineAnnealingLR",
            "cosine_warm_restarts": "torch.optim.lr_scheduler:CosineAnnealingWarmRestarts",
            "linear": "torch.optim.lr_scheduler:LinearLR",
            "one_cycle": "torch.optim.lr_scheduler:OneCycleLR",
            "reduce_on_plateau": "torch.optim.lr_scheduler:ReduceLROnPlateau",
        }
    ),
)

LOGGERS_REGISTRY = Registry(
    "logger",
    {
        "csv": Entry("lightning.pytorch.loggers:CSVLogger"),
        "tensorboard": Entry("lightning.pytorch.loggers:TensorBoardLogger", requires="tensorboard"),
        "mlflow": Entry("lightning.pytorch.loggers:MLFlowLogger", requires="mlflow"),
        "wandb": Entry("lightning.pytorch.loggers:WandbLogger", requires="wandb"),
    },
)

POSTPROCESSORS_REGISTRY = Registry(
    "postprocessor",
    {
        "query_expansion": Entry("lookalike.postprocess:QueryExpansion",
                                 doc="alpha query expansion: re-rank the top_n with the query + its neighbours"),
        "k_reciprocal": Entry("lookalike.postprocess:KReciprocalReranker",
                              doc="k-reciprocal re-ranking (Zhong et al. 2017) of the top_n, from top-k lists"),
        "pairwise": Entry("lookalike.postprocess:pairwise_reranker",
                          doc="re-rank the top_n with a pairwise model trained by lookalike train-pairwise"),
    },
)

#: registry of each config block (``miner`` is the nested block inside ``criterion.args``)
REGISTRIES: dict[str, Registry] = {
    "transforms_train": TRANSFORMS_REGISTRY,
    "transforms_val": TRANSFORMS_REGISTRY,
    "extractor": EXTRACTORS_REGISTRY,
    "sampler": SAMPLERS_REGISTRY,
    "criterion": CRITERIA_REGISTRY,
    "miner": MINERS_REGISTRY,
    "optimizer": OPTIMIZERS_REGISTRY,
    "scheduler": SCHEDULERS_REGISTRY,
    "logger": LOGGERS_REGISTRY,
    "postprocessor": POSTPROCESSORS_REGISTRY,
}
