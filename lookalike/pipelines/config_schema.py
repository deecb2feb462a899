"""The config schema: every top-level key with its types, default, choices and one-line doc (the single source of
truth for checks and for the reference table of docs/pipelines.md), and the arguments the pipelines infer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import yaml

__all__ = ["SCHEMA", "INPUT_PATH_KEYS", "PATH_KEYS", "Key", "Type", "REQUIRED", "INFERRED_ARGS", "NESTED_BLOCKS", "PRECISIONS", "is_int", "is_num",
           "schema_markdown"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


# --- types ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Type:
    """An accepted value type: a check and the words used in messages and docs."""

    words: str
    check: Callable[[Any], bool]


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


INT = Type("int", is_int)
NUM = Type("float", is_num)
STR = Type("str", lambda v: isinstance(v, str))
BOOL = Type("bool", lambda v: isinstance(v, bool))
INT_LIST = Type("list of int", lambda v: isinstance(v, list) and all(is_int(x) for x in v))
STR_LIST = Type("list of str", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
DICT = Type("mapping", lambda v: isinstance(v, dict))
COMPONENT = Type("component block {name, args}", lambda v: isinstance(v, (dict, str)))
NULL = Type("null", lambda v: v is None)


@dataclass(frozen=True)
class Key:
    """One top-level config key."""

    name: str
    types: tuple[Type, ...]
    default: Any
    doc: str
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    registry: str | None = None  # component block resolved through REGISTRIES[registry]
    block_extras: Mapping[str, tuple[tuple[Type, ...], Any, tuple[Any, ...]]] = field(default_factory=dict)
    section: str = "general"

    @property
    def nullable(self) -> bool:
        return NULL in self.types

    def type_words(self) -> str:
        return " | ".join(t.words for t in self.types)


def _k(name: str, types_: Sequence[Type], default: Any, doc: str, **kw: Any) -> Key:
    return Key(name, tuple(types_), default, doc, **kw)


_SCHEDULER_EXTRAS = {
    "interval": ((STR,), "epoch", ("epoch", "step")),
    "frequency": ((INT,), 1, ()),
    "monitor": ((STR, NULL), None, ()),
}

PRECISIONS = (32, 64, 16, "32", "32-true", "64-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true")

SCHEMA: dict[str, Key] = {
    k.name: k
    for k in [
        # data
        _k("dataset_root", (STR, NULL), None,
           "dataset folder (relative: to the YAML file naming it); null = the built-in example data (emoji pictures; "
           "emoji texts for a text extractor)",
           section="data"),
        _k("csv", (STR,), "df.csv", "dataset CSV, relative to dataset_root or absolute", section="data"),
        _k("check_images", (STR,), "quick", "image check when loading the CSV: quick = header, pixel limit and a "
           "reduced decode of every file (cached by path, size and mtime), before training starts",
           choices=("quick", "exists", "decode", "none"), section="data"),
        _k("max_pixels", (INT, NULL), None, "refuse images with more pixels (read from the header, before "
           "decoding); null = 50 MP or $LOOKALIKE_MAX_PIXELS, 0 = no limit", minimum=0, section="data"),
        _k("image_size", (INT,), 224, "side of the square images the transforms produce", minimum=1, section="data"),
        _k("cache_images", (BOOL,), False, "keep decoded images in memory (small images)", section="data"),
        _k("num_workers", (INT,), 0, "DataLoader worker processes", minimum=0, section="data"),
        _k("bs_train", (INT,), 64, "training batch size when sampler is null", minimum=1, section="data"),
        _k("bs_val", (INT,), 128, "validation / prediction batch size", minimum=1, section="data"),
        _k("predict_source", (STR, NULL), None,
           "predict: a CSV (column `path`; `text` for a text extractor) or a folder of images (relative: to the YAML "
           "file naming it); null = every row of dataset_root/csv",
           section="data"),
        # components
        _k("transforms_train", (COMPONENT,), {"name": "train", "args": {}}, "training transforms (images only)",
           registry="transforms_train", section="components"),
        _k("transforms_val", (COMPONENT,), {"name": "val", "args": {}}, "validation / prediction transforms",
           registry="transforms_val", section="components"),
        _k("extractor", (COMPONENT,), REQUIRED, "the model: images (or texts) -> embeddings", registry="extractor",
           section="components"),
        _k("sampler", (COMPONENT, NULL), None, "batch sampler; null = shuffled batches of bs_train",
           registry="sampler", section="components"),
        _k("criterion", (COMPONENT, NULL), None,
           "loss `forward(features, labels)`, miner inside (`args.miner`); required for training",
           registry="criterion", section="components"),
        _k("optimizer", (COMPONENT,), {"name": "adamw", "args": {"lr": 1e-3}},
           "optimizer over extractor + criterion parameters", registry="optimizer", section="components"),
        _k("scheduler", (COMPONENT, NULL), None, "lr scheduler; extra block keys: interval (epoch or step), frequency, monitor",
           registry="scheduler", block_extras=_SCHEDULER_EXTRAS, section="components"),
        _k("logger", (COMPONENT, NULL), {"name": "csv", "args": {}}, "Lightning logger; null = none",
           registry="logger", section="components"),
        # training
        _k("seed", (INT,), 0, "seed of weights, sampler order and augmentations", minimum=0, section="training"),
        _k("max_epochs", (INT,), 10, "training epochs (an epoch of a balance sampler = a pass over the labels)",
           minimum=1, section="training"),
        _k("max_minutes", (NUM, NULL), None,
           "training-time budget in minutes, validation excluded (stops inside an epoch, then validates); null = none",
           section="training"),
        _k("limit_train_batches", (INT, NUM, NULL), None, "cap on batches per training epoch (int) or fraction",
           section="training"),
        _k("holdout_labels", (NUM,), 0.0,
           "fraction of the train split's labels the extractor never trains on, kept for `train-pairwise` to mine "
           "pairs that look like unseen labels (recorded in the run's holdout_labels.json); 0 = train on every label", minimum=0,
           section="training"),
        _k("freeze_backbone_epochs", (INT,), 0,
           "epochs during which the extractor's `backbone` (or the whole extractor) is frozen", minimum=0,
           section="training"),
        _k("freeze_layers", (STR_LIST,), [],
           "names of extractor modules kept frozen for the whole run, weights and BatchNorm statistics (e.g. the "
           "stem and first blocks of a pretrained CNN: generic features kept, faster steps); see docs/pipelines.md",
           section="training"),
        _k("mixstyle_layers", (STR_LIST,), [],
           "extractor modules whose outputs MixStyle mixes during training (channel statistics of one image under "
           "another's: style invariance, e.g. for drawing styles or cameras never seen); [] = off",
           section="training"),
        _k("mixstyle_p", (NUM,), 0.5, "probability that MixStyle acts on a batch", minimum=0, section="training"),
        _k("mixstyle_alpha", (NUM,), 0.1, "Beta(alpha, alpha) of MixStyle's mixing weights", minimum=0,
           section="training"),
        _k("cache_frozen_trunk", (BOOL,), False,
           "run the frozen first stages (freeze_layers, a prefix of the backbone) once per training image, at the "
           "start of training, and train on random crops of their cached feature maps: faster steps; the training "
           "transform may only crop (see docs/pipelines.md)", section="training"),
        _k("backbone_lr", (NUM, NULL), None,
           "learning rate of the extractor's `backbone` (a pretrained start wants it below the new head's); "
           "null = the optimizer's lr for every parameter", minimum=0, section="training"),
        _k("gradient_clip_val", (NUM, NULL), None, "clip gradient norm to this value", section="training"),
        _k("accumulate_grad_batches", (INT,), 1,
           "optimizer step every this many batches (gradients summed over them, averaged like DDP ranks)",
           minimum=1, section="training"),
        _k("precision", (INT, STR), 32, "32, bf16-mixed, 16-mixed, ...", choices=PRECISIONS, section="training"),
        _k("channels_last", (BOOL,), False,
           "run convolutions in NHWC layout (faster CNNs on CPUs and with mixed precision on GPUs)",
           section="training"),
        _k("accelerator", (STR,), "auto", "cpu, gpu, mps or auto", section="training"),
        _k("devices", (INT, STR, INT_LIST), 1, "number of devices, a list of ids, or auto", section="training"),
        _k("num_nodes", (INT,), 1, "machines (nodes) of a multi-node run, each running `devices` processes; see "
           "docs/pipelines.md for launching on a cluster", minimum=1, section="training"),
        _k("strategy", (STR,), "auto", "Lightning strategy: auto, ddp, ddp_spawn, ...", section="training"),
        _k("checkpoint", (STR, NULL), None,
           "extractor weights: validate/predict evaluate them, train starts from them (a .ckpt of a run or a "
           "weights file; relative: to the YAML file naming it)", section="training"),
        # validation
        _k("valid_period", (INT,), 1, "validate every this many epochs (and after the last one)", minimum=1,
           section="validation"),
        _k("validate_before_training", (BOOL,), False, "also validate the untrained model", section="validation"),
        _k("metric_args", (DICT,), {}, "keyword arguments of EmbeddingMetrics (cmc_top_k, map_top_k, ...)",
           section="validation"),
        _k("postprocessor", (COMPONENT, NULL), None,
           "re-ranker of the retrieved lists before the metrics (e.g. query_expansion); null = none",
           registry="postprocessor", section="validation"),
        _k("metric_for_checkpointing", (STR,), "OVERALL/cmc/1",
           "metric that picks the best checkpoint: <OVERALL or category>/<metric>/<k>", section="validation"),
        _k("mode", (STR,), "max", "whether the metric is better when larger (max) or smaller (min)",
           choices=("max", "min"), section="validation"),
        _k("log_images", (BOOL,), False, "save pictures of the worst queries at each validation", section="validation"),
        _k("n_worst_queries", (INT,), 6, "how many worst queries the pictures show", minimum=1, section="validation"),
        # output
        _k("output_dir", (STR,), "runs", "folder holding run folders (relative: to the working directory)",
           section="output"),
        _k("run_name", (STR, NULL), None, "run folder name inside output_dir; null = a timestamp", section="output"),
        _k("overwrite", (BOOL,), False,
           "validate / predict may replace the results in an existing run_name folder (never a training run's)",
           section="output"),
        _k("progress_bar", (BOOL,), True, "show progress bars", section="output"),
        # inference runtime (lookalike export writes the ONNX file)
        _k("runtime", (STR,), "torch", "predict: run the extractor in torch, or its exported ONNX file in "
           "onnxruntime", choices=("torch", "onnx"), section="inference"),
        _k("onnx_model", (STR, NULL), None,
           "runtime onnx: the .onnx file; null = <run folder>/export/model.onnx", section="inference"),
    ]
}

#: paths the pipelines read: relative ones in a YAML file are relative to that file's folder
INPUT_PATH_KEYS = ("dataset_root", "checkpoint", "predict_source")
#: every path key; all are stored absolute in a run's config.yaml, and an empty value is an error
PATH_KEYS = (*INPUT_PATH_KEYS, "output_dir")

#: arguments the pipeline fills in per block: "owned" = always set by the pipeline (a user value is an error),
#: "absent" = filled when the user leaves it out or writes `auto`, "auto" = filled only when required or `auto`.
INFERRED_ARGS: dict[str, dict[str, str]] = {
    "transforms_train": {"image_size": "absent"},
    "transforms_val": {"image_size": "absent"},
    "extractor": {"image_size": "absent"},  # models with a fixed input size (ViT) follow the config
    "sampler": {"labels": "owned", "label2category": "owned", "rank": "owned", "world_size": "owned",
                "seed": "absent"},
    "criterion": {"in_features": "absent", "num_classes": "absent", "labels": "absent", "label2category": "auto"},
    "miner": {},
    "optimizer": {"params": "owned"},
    "scheduler": {"optimizer": "owned"},
    "logger": {"save_dir": "absent"},
    "postprocessor": {},
}

#: nested component blocks allowed inside a block's args: (block, arg name) -> registry key
NESTED_BLOCKS: dict[tuple[str, str], str] = {("criterion", "miner"): "miner"}


def schema_markdown() -> str:
    """The config reference table of docs/pipelines.md, generated from SCHEMA (one row per key)."""
    lines = []
    section = None
    for key in SCHEMA.values():
        if key.section != section:
            section = key.section
            lines += ["", f"**{section}**", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        if key.default is REQUIRED:
            default = "*required*"
        else:
            text = yaml.safe_dump(key.default, default_flow_style=True, width=1000, sort_keys=False).strip()
            default = f"`{text.removesuffix('...').strip()}`"
        choices = f" (one of: {', '.join(dict.fromkeys(map(str, key.choices)))})" if key.choices else ""
        doc = key.doc.replace("|", "/")
        lines.append(f"| `{key.name}` | {key.type_words().replace('|', 'or')} | {default} | {doc}{choices} |")
    return "\n".join(lines[1:])
