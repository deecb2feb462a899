"""Tiny text models and text datasets for the tests (no download, no 90 MB package).

`make_tiny_text_model(folder)` writes a randomly initialised 2-layer BERT (hidden size 32) with a WordPiece
vocabulary of `VOCAB` into ``folder`` with ``save_pretrained``, as a user's own model folder would be.
`concept_rows()` is a text dataset of `N_CONCEPTS` labels: every text is one of its label's 2 synonyms among 2
filler words shared by all labels, so an untrained model (dominated by the fillers) retrieves poorly and a model
that learns which words matter retrieves well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

N_CONCEPTS = 8
SYNONYMS = [[f"w{c}x{s}" for s in range(2)] for c in range(N_CONCEPTS)]
FILLERS = [f"f{i}" for i in range(24)]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + [w for group in SYNONYMS for w in group] + FILLERS + ["hello", "world", "dog", "cat"]


def make_tiny_text_model(folder: Path, seed: int = 0, hidden: int = 32) -> Path:
    """A random tiny BERT + WordPiece tokenizer saved in ``folder`` (config.json, weights, tokenizer files)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {word: i for i, word in enumerate(VOCAB)}
    BertTokenizerFast(vocab=vocab, do_lower_case=True).save_pretrained(str(folder))
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(folder))
    return folder


def concept_text(rng: np.random.Generator, concept: int) -> str:
    words = [str(rng.choice(SYNONYMS[concept]))] + list(rng.choice(FILLERS, size=2, replace=False))
    rng.shuffle(words)
    return " ".join(words)


def concept_rows(per_label_train: int = 12, per_label_val: int = 6, seed: int = 0) -> list[dict]:
    """Train and validation texts of the same N_CONCEPTS labels (different texts); validation rows are both
    query and gallery."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (("train", per_label_train), ("validation", per_label_val)):
        for concept in range(N_CONCEPTS):
            for _ in range(n):
                val = split == "validation"
                rows.append({"label": concept, "text": concept_text(rng, concept), "split": split,
                             "is_query": "true" if val else "", "is_gallery": "true" if val else ""})
    return rows


def write_text_dataset(root: Path, rows: list[dict] | None = None) -> Path:
    """``rows`` (default `concept_rows()`) as root/df.csv; returns root."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows if rows is not None else concept_rows()).to_csv(root / "df.csv", index=False)
    return root
