"""The CSV checks: each rule broken once gives its own clear message; a good dataset gives the right summary."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from lookalike.data import check_dataset, example_dataset_root, format_summary, load_dataset_table
from lookalike.errors import DatasetError
from tests.conftest import good_rows, write_dataset


def problems_of(root, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset_table(root, **kwargs)
    return str(info.value)


def test_good_dataset_summary(dataset_root):
    summary = check_dataset(dataset_root)
    assert summary.n_items == 12 and summary.n_labels == 6
    assert summary.items_per_split == {"train": 6, "validation": 6}
    assert summary.labels_per_split == {"train": 3, "validation": 3}
    assert (summary.n_queries, summary.n_gallery, summary.n_categories) == (6, 6, 2)
    text = format_summary(summary)
    assert "dataset OK" in text and "queries: 6" in text


def test_table_types_and_absolute_paths(dataset_root):
    table = load_dataset_table(dataset_root)
    assert table["label"].dtype == np.int64
    assert table["is_query"].dtype == bool and table["is_gallery"].dtype == bool
    assert not table.loc[table["split"] == "train", "is_query"].any()
    assert all(p.startswith(str(dataset_root)) for p in table["path"])


def test_missing_csv_names_the_file_and_lists_csvs(tmp_path):
    root = write_dataset(tmp_path / "ds", good_rows(), csv="other.csv")
    message = problems_of(root)
    assert "df.csv" in message and "other.csv" in message and "--csv" in message


def test_missing_required_column(tmp_path):
    rows = [{k: v for k, v in row.items() if k != "split"} for row in good_rows()]
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert "split" in message and "required" in message


def test_unparsable_csv_is_one_message(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "df.csv").write_text('label,path,split,is_query,is_gallery\n1,"a.png,train,,\n2,b.png,train,,,\n')
    message = problems_of(root)
    assert "cannot be parsed" in message or "problem" in message


def test_bad_labels_splits_and_flags_all_reported_with_csv_lines(tmp_path):
    rows = good_rows()
    rows[0]["label"] = "cat"        # CSV line 2
    rows[1]["split"] = "val"        # CSV line 3
    rows[2]["is_query"] = "True"    # train row flagged: CSV line 4
    rows[7]["is_gallery"] = "maybe"  # CSV line 9
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert "4 problems" in message
    assert re.search(r"column 'label'.*CSV line 2\b", message)
    assert re.search(r"column 'split'.*'val'.*CSV line 3\b.*'train' or 'validation'", message)
    assert re.search(r"train row\(s\) are marked.*CSV line 4\b", message)
    assert re.search(r"column 'is_gallery'.*'maybe'.*CSV line 9\b", message)


def test_validation_row_neither_query_nor_gallery(tmp_path):
    rows = good_rows()
    rows[6]["is_query"] = rows[6]["is_gallery"] = "False"
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert "neither query nor gallery" in message and "CSV line 8" in message


def test_queries_without_gallery_error_or_drop(tmp_path):
    rows = good_rows()
    rows.append({"label": 99, "path": "img/lonely.png", "split": "validation", "is_query": "True",
                 "is_gallery": "True", "category": "odd"})
    root = write_dataset(tmp_path / "ds", rows)
    message = problems_of(root)
    assert "no other gallery item" in message and "99" in message and "CSV line 14" in message
    with pytest.warns(UserWarning, match="dropped as queries"):
        table = load_dataset_table(root, queries_without_gallery="drop")
    lonely = table[table["label"] == 99]
    assert len(lonely) == 1 and not lonely["is_query"].iloc[0] and lonely["is_gallery"].iloc[0]


def test_same_sequence_gallery_items_do_not_count(tmp_path):
    rows = good_rows(n_train_labels=0, n_val_labels=2)
    for row in rows:
        row["sequence"] = f"s{row['label']}"  # both items of a label are in one sequence
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert "4 validation queries have no other gallery item" in message


def test_missing_images_are_listed(tmp_path):
    rows = good_rows()
    rows[3]["path"] = "missing/a.png"
    rows[4]["path"] = "missing/b.png"
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert "2 image file(s) do not exist" in message and "missing/a.png" in message and "CSV lines 5, 6" in message


def test_corrupt_image_found_only_with_decode(tmp_path):
    root = write_dataset(tmp_path / "ds", good_rows())
    (root / "img/1_0.png").write_bytes(b"not a png at all")
    load_dataset_table(root, check_images="exists")  # only existence is checked
    message = problems_of(root, check_images="decode")
    assert "cannot be decoded" in message and "1_0.png" in message


def test_label_with_several_categories(tmp_path):
    rows = good_rows()
    rows[1]["category"] = "odd"  # label 0 is 'even' in its other row
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert "several categories" in message and "label 0: even, odd" in message


def test_bounding_box_rules(tmp_path):
    rows = good_rows()
    for row in rows:
        row.update({"x_1": "", "x_2": "", "y_1": "", "y_2": ""})
    rows[0].update({"x_1": 1, "x_2": 5})                      # partial: CSV line 2
    rows[1].update({"x_1": 5, "x_2": 3, "y_1": 0, "y_2": 4})  # inverted: line 3
    rows[2].update({"x_1": -1, "x_2": 3, "y_1": 0, "y_2": 4})  # negative: line 4
    rows[3].update({"x_1": 0, "x_2": 30, "y_1": 0, "y_2": 4})  # outside the 16x12 image: line 5
    rows[4].update({"x_1": 1, "x_2": 8, "y_1": 2, "y_2": 10})  # fine
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert "4 problems" in message
    assert re.search(r"only some of x_1, x_2, y_1, y_2 at CSV line 2\b", message)
    assert re.search(r"x_1 >= x_2 or y_1 >= y_2 at CSV line 3\b", message)
    assert re.search(r"negative coordinates at CSV line 4\b", message)
    assert re.search(r"outside their image at CSV line 5\b", message)


def test_partial_bbox_columns(tmp_path):
    rows = good_rows()
    for row in rows:
        row["x_1"] = 0
    assert "needs all four columns" in problems_of(write_dataset(tmp_path / "ds", rows))


def test_example_data_is_valid_and_small():
    root = example_dataset_root()
    summary = check_dataset(root, check_images="decode")
    assert summary.labels_per_split["train"] >= 100 and summary.labels_per_split["validation"] >= 50
    table = load_dataset_table(root)
    val = table[table["split"] == "validation"]
    assert val.groupby("label").size().min() >= 2
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 5 * 1024 * 1024
    assert (root / "LICENSES.md").is_file()
    with Image.open(table["path"].iloc[0]) as image:
        assert image.size == (64, 64)
