"""Text datasets: the text column's checks, tokenised items, and per-batch padding that round-trips."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from lookalike.data import schema
from lookalike.data.texts import PadCollate, TextDataset, pad_ids
from lookalike.data.validation import check_dataset, load_dataset_table
from lookalike.errors import DatasetError
from tests.texts_support import concept_rows, make_tiny_text_model, write_text_dataset

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from lookalike.models.texts import TextTokenizer

    return TextTokenizer(make_tiny_text_model(tmp_path_factory.mktemp("tiny_bert")), max_length=16)


def test_pad_ids_pads_right_and_masks_exactly_the_tokens():
    batch = pad_ids([[2, 7, 3], [2, 3], [2, 9, 9, 9, 3]], pad_id=0)
    assert batch["input_ids"].tolist() == [[2, 7, 3, 0, 0], [2, 3, 0, 0, 0], [2, 9, 9, 9, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["input_ids"].dtype == torch.int64


def test_a_tokenised_batch_round_trips(tokenizer):
    texts = ["hello world", "dog", "cat dog hello world f1 f2", "W0X1 f3"]
    ids = tokenizer(texts)
    batch = pad_ids(ids, tokenizer.pad_id)
    assert batch["input_ids"].shape == (4, max(len(i) for i in ids))
    recovered = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert recovered == ids
    decoded = [tokenizer.tokenizer.decode(r, skip_special_tokens=True) for r in recovered]
    assert decoded == [t.lower() for t in texts]  # the vocabulary is lower case; nothing is lost or added


def test_max_length_truncates_with_the_special_tokens_kept(tokenizer):
    ids = tokenizer([" ".join(["dog"] * 40)])[0]
    assert len(ids) == 16
    assert ids[0] == tokenizer.tokenizer.cls_token_id and ids[-1] == tokenizer.tokenizer.sep_token_id


def test_text_dataset_items_and_collate(tmp_path, tokenizer):
    root = write_text_dataset(tmp_path)
    table = load_dataset_table(root, modality="text")
    val = TextDataset(table[table[schema.SPLIT] == "validation"], tokenizer)
    item = val[0]
    assert set(item) == {"input", "label", "index", "text", "is_query", "is_gallery"}
    assert item["input"]["input_ids"].tolist() == tokenizer([item["text"]])[0]
    loader = DataLoader(val, batch_size=5, collate_fn=val.collate_fn)
    batch = next(iter(loader))
    lengths = [len(tokenizer([t])[0]) for t in batch["text"]]
    assert batch["input"]["input_ids"].shape == (5, max(lengths))  # padded to this batch's longest text only
    assert batch["input"]["attention_mask"].sum(1).tolist() == lengths
    assert batch["label"].tolist() == val.labels[:5].tolist()
    assert batch["index"].tolist() == [0, 1, 2, 3, 4]
    assert batch["is_query"].all() and batch["is_gallery"].all()


def test_pad_collate_keeps_the_other_keys():
    items = [{"input": {"input_ids": torch.tensor([5, 6]), "attention_mask": torch.ones(2)}, "label": 1,
              "text": "a b", "category": "x"},
             {"input": {"input_ids": torch.tensor([7]), "attention_mask": torch.ones(1)}, "label": 2,
              "text": "c", "category": "y"}]
    batch = PadCollate(pad_id=0)(items)
    assert batch["input"]["input_ids"].tolist() == [[5, 6], [7, 0]]
    assert batch["label"].tolist() == [1, 2] and batch["text"] == ["a b", "c"] and batch["category"] == ["x", "y"]


# --- the CSV checks of the text column ----------------------------------------------------------------------
def _write(tmp_path, rows):
    pd.DataFrame(rows).to_csv(tmp_path / "df.csv", index=False)
    return tmp_path


def test_check_data_reads_a_text_dataset(tmp_path):
    summary = check_dataset(write_text_dataset(tmp_path))
    assert summary.n_texts == len(concept_rows()) and summary.images is None
    assert summary.items_per_split == {"train": 96, "validation": 48}


def test_empty_blank_and_control_character_texts_are_one_problem_each(tmp_path):
    rows = concept_rows(per_label_train=2, per_label_val=2)
    rows[0]["text"] = ""
    rows[1]["text"] = "   "
    rows[2]["text"] = "dog\x00cat"
    with pytest.raises(DatasetError) as err:
        check_dataset(_write(tmp_path, rows))
    message = str(err.value)
    assert "has 2 problems" in message
    assert "column 'text': 1 empty cell(s) at CSV line 2; 1 text(s) of only spaces at CSV line 3" in message
    assert "control characters (e.g. NUL) at CSV line 4" in message


def test_a_csv_with_neither_path_nor_text_names_both(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "text"} | {"words": r["text"]} for r in concept_rows(2, 2)]
    with pytest.raises(DatasetError, match="neither a 'path' column .images. nor a 'text' column"):
        check_dataset(_write(tmp_path, rows))


def test_a_text_pipeline_needs_the_text_column(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "text"} | {"path": "a.png"} for r in concept_rows(2, 2)]
    with pytest.raises(DatasetError, match="lacks the required column.s. text"):
        load_dataset_table(_write(tmp_path, rows), modality="text")


def test_non_utf8_text_names_the_line(tmp_path):
    write_text_dataset(tmp_path, concept_rows(2, 2))
    raw = (tmp_path / "df.csv").read_bytes().splitlines(keepends=True)
    raw[3] = raw[3].replace(b"f", b"\xe9", 1)  # Latin-1 e-acute inside CSV line 4
    (tmp_path / "df.csv").write_bytes(b"".join(raw))
    with pytest.raises(DatasetError, match=r"not UTF-8 text .* CSV line 4\)"):
        check_dataset(tmp_path)


def test_auto_modality_prefers_images_when_both_columns_exist(tmp_path):
    from tests.conftest import good_rows, write_dataset

    rows = [r | {"text": f"item {i}"} for i, r in enumerate(good_rows())]
    summary = check_dataset(write_dataset(tmp_path, rows))
    assert summary.images is not None and summary.n_texts is None
    table = load_dataset_table(tmp_path, modality="text")  # a text pipeline reads the text column of the same CSV
    assert table["text"].tolist()[:2] == ["item 0", "item 1"]


def test_non_utf8_far_into_a_large_file_names_its_own_line(tmp_path):
    # pandas decodes in chunks and reports the offset inside the chunk: the line must be the file's
    lines = ["label,text,split,is_query,is_gallery"] + [f"{i % 50},text number {i},train,," for i in range(40_000)]
    raw = "\n".join(lines).encode().split(b"\n")
    raw[30_001] = raw[30_001].replace(b"text", b"te\xfft")  # CSV line 30002
    (tmp_path / "df.csv").write_bytes(b"\n".join(raw))
    offset = b"\n".join(raw).index(b"\xff")
    with pytest.raises(DatasetError, match=rf"at byte {offset}, CSV line 30002\)"):
        check_dataset(tmp_path)
