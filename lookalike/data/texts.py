"""Texts of a dataset table as item dicts, tokenised once by the extractor's tokenizer, padded per batch.

`TextDataset` returns the same item dicts as `ImageDataset` (``label``, ``index``, ``is_query``,
``is_gallery``, ``category``, ``sequence``) with ``input`` = ``{"input_ids", "attention_mask"}`` of that one
text (1-D, unpadded) and ``text`` in place of ``path``. `PadCollate` (the dataset's ``collate_fn``) pads a
batch to its longest text, so short texts never pay for the longest one of the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import default_collate

from lookalike.data import schema
from lookalike.data.datasets import LabelledRows
from lookalike.errors import DatasetError

__all__ = ["TextDataset", "PadCollate", "pad_ids"]

#: token ids of a list of texts, e.g. `lookalike.models.texts.TextTokenizer` (it also has `pad_id`)
Tokenizer = Callable[[Sequence[str]], Sequence[Sequence[int]]]


def pad_ids(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, Tensor]:
    """Token id lists -> ``{"input_ids", "attention_mask"}`` (B, longest) int64 tensors, padded on the right."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    longest = int(lengths.max()) if len(lengths) else 0
    ids = torch.full((len(sequences), longest), int(pad_id), dtype=torch.int64)
    mask = torch.arange(longest)[None, :] < lengths[:, None]
    if mask.any():
        ids[mask] = torch.cat([torch.as_tensor(s, dtype=torch.int64) for s in sequences if len(s)])
    return {"input_ids": ids, "attention_mask": mask.to(torch.int64)}


class PadCollate:
    """DataLoader ``collate_fn`` for text items: ``input`` padded to the longest text of the batch
    (`pad_ids`), every other key collated as torch does."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = int(pad_id)

    def __call__(self, items: list[dict]) -> dict:
        inputs = [item[schema.INPUT_KEY]["input_ids"] for item in items]
        rest = default_collate([{k: v for k, v in item.items() if k != schema.INPUT_KEY} for item in items])
        return {schema.INPUT_KEY: pad_ids(inputs, self.pad_id), **rest}


class TextDataset(LabelledRows):
    """Texts of a dataset table (column ``text``, as `load_dataset_table(..., modality="text")` returns it), one
    item dict per row. Every text is tokenised once here (one batched call of ``tokenizer``); ``pad_id`` is the
    padding token of `collate_fn` (default: ``tokenizer.pad_id``)."""

    modality = "text"

    def __init__(self, table: pd.DataFrame, tokenizer: Tokenizer, *, pad_id: int | None = None) -> None:
        if schema.TEXT not in table.columns:
            raise DatasetError(f"a text dataset needs a {schema.TEXT!r} column; the table has "
                               f"{', '.join(map(str, table.columns))}.")
        super().__init__(table)
        self.texts: list[str] = self.table[schema.TEXT].astype(str).tolist()
        self.token_ids: list[Tensor] = [torch.as_tensor(ids, dtype=torch.int64) for ids in tokenizer(self.texts)]
        if len(self.token_ids) != len(self.texts):
            raise DatasetError(f"the tokenizer returned {len(self.token_ids)} token lists for {len(self.texts)} "
                               "texts.")
        if pad_id is None:
            pad_id = getattr(tokenizer, "pad_id", 0)
        self.collate_fn = PadCollate(int(pad_id))

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += len(self)
        ids = self.token_ids[index]
        return self.item(index, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, schema.TEXT_KEY,
                         self.texts[index])
