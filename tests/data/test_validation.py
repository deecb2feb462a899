"""The CSV checks: each rule broken once gives its own clear message; a good dataset gives the right summary.

Row numbers in messages are CSV line numbers (header = line 1), so row i of `good_rows()` is CSV line i + 2.
"""

from __future__ import annotations

import os
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


# --- a good dataset ------------------------------------------------------------------------------------------

def test_good_dataset_summary(dataset_root):
    summary = check_dataset(dataset_root)
    assert summary.n_items == 12 and summary.n_labels == 6
    assert summary.items_per_split == {"train": 6, "validation": 6}
    assert summary.labels_per_split == {"train": 3, "validation": 3}
    assert (summary.n_queries, summary.n_gallery, summary.n_categories) == (6, 6, 2)
    assert summary.warnings == []
    text = format_summary(summary)
    assert "dataset OK" in text and "queries: 6" in text and "validation: 6 items, 3 labels" in text


def test_table_types_and_absolute_paths(dataset_root):
    table = load_dataset_table(dataset_root)
    assert table["label"].dtype == np.int64
    assert table["is_query"].dtype == bool and table["is_gallery"].dtype == bool
    assert not table.loc[table["split"] == "train", ["is_query", "is_gallery"]].any().any()
    assert table.loc[table["split"] == "validation", "is_query"].all()
    assert all(os.path.isabs(p) and p.startswith(str(dataset_root)) for p in table["path"])
    assert all(isinstance(c, str) for c in table["category"])
    assert list(table.index) == list(range(12))


def test_relative_root_gives_absolute_paths(dataset_root, monkeypatch):
    monkeypatch.chdir(dataset_root.parent)
    table = load_dataset_table("ds")
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in table["path"])


def test_accepted_spellings_extra_columns_absolute_paths_and_query_only_items(tmp_path):
    rows = good_rows()
    for row, (q, g) in zip(rows[6:], [("1", "0"), ("no", "yes"), ("TRUE", "true"), ("", "1"), ("y", " True "),
                                      ("false", "yes")]):
        row["is_query"], row["is_gallery"] = q, g
    for row in rows:
        row["note"] = "kept"
    root = write_dataset(tmp_path / "ds", rows)
    outside = write_dataset(tmp_path / "elsewhere", [{"path": "x.png"}])
    rows[0]["path"] = str(outside / "x.png")  # absolute paths are used as they are
    rows[1]["path"] = "./img/0_1.png"
    write_dataset(root, rows)
    table = load_dataset_table(root)
    assert table["path"][1] == str(root / "img" / "0_1.png")
    assert table["note"].tolist() == ["kept"] * 12
    assert table["path"][0] == str(outside / "x.png")
    val = table[table["split"] == "validation"]
    assert val["is_query"].tolist() == [True, False, True, False, True, False]
    assert val["is_gallery"].tolist() == [False, True, True, True, True, True]


def test_labels_written_as_floats_are_integers(tmp_path):
    rows = good_rows()
    rows[0]["label"] = "0.0"
    assert load_dataset_table(write_dataset(tmp_path / "ds", rows))["label"][0] == 0


# --- file-level problems -------------------------------------------------------------------------------------

def test_root_that_is_not_a_folder(tmp_path):
    assert "is not a folder" in problems_of(tmp_path / "nowhere")


def test_missing_csv_names_the_file_and_lists_csvs(tmp_path):
    root = write_dataset(tmp_path / "ds", good_rows(), csv="other.csv")
    message = problems_of(root)
    assert "df.csv" in message and "other.csv" in message and "--csv" in message
    assert len(load_dataset_table(root, "other.csv")) == 12


def test_empty_csv_and_header_only(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "df.csv").write_text("")
    assert "is empty" in problems_of(root)
    (root / "df.csv").write_text("label,path,split,is_query,is_gallery\n")
    assert "no rows" in problems_of(root)


def test_unparsable_csv_is_one_message(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "df.csv").write_text('label,path,split,is_query,is_gallery\n1,"a.png,train,,\n2,b.png,train,,,\n')
    message = problems_of(root)
    assert "cannot be parsed" in message and "Traceback" not in message


def test_too_many_fields_is_a_parse_error(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "df.csv").write_text("label,path,split,is_query,is_gallery\n1,a.png,train,,,,,\n2,b.png,train,,\n"
                                 "3,c.png,train,,,\n")
    message = problems_of(root)
    assert "cannot be parsed" in message and "CSV lines 2, 4 have 8, 6 fields but the header has 5" in message


def test_missing_required_column(tmp_path):
    rows = [{k: v for k, v in row.items() if k not in ("split", "is_gallery")} for row in good_rows()]
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert "lacks the required column(s) split, is_gallery" in message and "found columns" in message


# --- row-level problems --------------------------------------------------------------------------------------

def test_bad_labels_splits_and_flags_all_reported_with_csv_lines(tmp_path):
    rows = good_rows()
    rows[0]["label"] = "cat"        # CSV line 2
    rows[1]["split"] = "val"        # CSV line 3
    rows[2]["is_query"] = "True"    # train row flagged: CSV line 4
    rows[7]["is_gallery"] = "maybe"  # CSV line 9
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert "4 problems" in message
    assert re.search(r"column 'label'.*CSV line 2\b.*'cat'.*integer", message)
    assert re.search(r"column 'split'.*'val'.*CSV line 3\b.*'train' or 'validation'", message)
    assert "probably meant: 'val' -> 'validation'" in message
    assert re.search(r"train row\(s\) are marked.*CSV line 4\b.*leave both empty", message)
    assert re.search(r"column 'is_gallery'.*'maybe'.*CSV line 9\b.*true/false", message)


def test_missing_and_non_finite_labels(tmp_path):
    rows = good_rows()
    rows[3]["label"] = ""
    rows[4]["label"] = "inf"
    rows[5]["label"] = "1.5"
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert re.search(r"column 'label': 3 value\(s\) are missing or not integers at CSV lines 5, 6, 7\b", message)


def test_many_bad_rows_show_the_first_ten_and_a_count(tmp_path):
    rows = good_rows(n_train_labels=8, n_val_labels=0, per_label=2)
    for row in rows:
        row["split"] = "tr"
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert "CSV lines 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 (and 6 more)" in message


def test_validation_row_neither_query_nor_gallery(tmp_path):
    rows = good_rows()
    rows[6]["is_query"] = rows[6]["is_gallery"] = "False"
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert re.search(r"1 validation row\(s\) are neither query nor gallery at CSV line 8\b.*set at least one",
                     message)


def test_queries_without_gallery_error_or_drop(tmp_path):
    rows = good_rows()
    rows.append({"label": 99, "path": "img/lonely.png", "split": "validation", "is_query": "True",
                 "is_gallery": "True", "category": "odd"})
    rows.append({"label": 98, "path": "img/lonely2.png", "split": "validation", "is_query": "True",
                 "is_gallery": "False", "category": "odd"})
    root = write_dataset(tmp_path / "ds", rows)
    message = problems_of(root)
    assert re.search(r"2 validation queries have no other gallery item.*CSV lines 14, 15; labels 99, 98", message)
    assert "--drop-queries-without-gallery" in message
    with pytest.warns(UserWarning, match="2 queries .* dropped as queries"):
        table = load_dataset_table(root, queries_without_gallery="drop")
    lonely = table[table["label"] == 99]
    assert len(lonely) == 1 and not lonely["is_query"].iloc[0] and lonely["is_gallery"].iloc[0]
    assert 98 not in set(table["label"])  # neither query nor gallery any more: the row is gone
    summary = check_dataset(root, queries_without_gallery="drop")
    assert summary.n_queries == 6 and summary.n_gallery == 7 and "dropped" in summary.warnings[0]


def test_query_only_items_need_a_gallery_item_of_their_label(tmp_path):
    rows = good_rows(n_train_labels=0, n_val_labels=1, per_label=2)
    rows[0]["is_gallery"] = "False"  # query only, the other item is its gallery: fine
    rows[1]["is_query"] = "False"
    assert load_dataset_table(write_dataset(tmp_path / "ok", rows))["is_query"].tolist() == [True, False]
    rows[1]["is_gallery"] = rows[0]["is_gallery"] = "True"
    rows[1]["is_query"] = "False"
    rows[0]["is_gallery"] = "False"
    rows[1]["label"] = 1  # the query's label has no gallery item at all
    assert "1 validation queries have no other gallery item" in problems_of(write_dataset(tmp_path / "no", rows))


def test_same_sequence_gallery_items_do_not_count(tmp_path):
    rows = good_rows(n_train_labels=0, n_val_labels=2, per_label=2)
    for row in rows:
        row["sequence"] = f"s{row['label']}"  # both items of a label are in one sequence
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert "4 validation queries have no other gallery item" in message and "own sequence" in message
    rows[1]["sequence"] = "other"  # label 0: now two sequences, each query sees the other one
    rows[3]["sequence"] = ""       # no sequence: only the item itself is excluded
    table = load_dataset_table(write_dataset(tmp_path / "ds2", rows))
    assert len(table) == 4


def test_missing_images_are_listed(tmp_path):
    rows = good_rows()
    rows[3]["path"] = "missing/a.png"
    rows[4]["path"] = "missing/b.png"
    rows[5]["path"] = "missing/b.png"
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert "2 image file(s) do not exist (CSV lines 5, 6, 7)" in message and "missing/a.png" in message
    assert load_dataset_table(tmp_path / "ds", check_images="none")["path"].str.endswith("b.png").sum() == 2


def test_many_missing_images_list_ten_and_count(tmp_path):
    rows = good_rows(n_train_labels=12, n_val_labels=0, per_label=1)
    for i, row in enumerate(rows):
        row["path"] = f"missing/{i}.png"
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert "12 image file(s) do not exist" in message and "missing/9.png (and 2 more)" in message
    assert "missing/10.png" not in message


def test_empty_path_cell(tmp_path):
    rows = good_rows()
    rows[2]["path"] = ""
    message = problems_of(write_dataset(tmp_path / "d", rows))
    assert re.search(r"column 'path': 1 empty cell\(s\) at CSV line 4\b", message)


def test_corrupt_image_found_only_with_decode(tmp_path):
    root = write_dataset(tmp_path / "ds", good_rows())
    (root / "img/1_0.png").write_bytes(b"not a png at all")
    load_dataset_table(root, check_images="exists")  # only existence is checked
    message = problems_of(root, check_images="decode")
    assert re.search(r"1 image file\(s\) cannot be decoded \(CSV line 4\).*1_0\.png.*replace those files", message)


def test_truncated_image_found_with_decode(tmp_path):
    root = write_dataset(tmp_path / "ds", good_rows(), size=(64, 64))
    data = (root / "img/2_1.png").read_bytes()
    (root / "img/2_1.png").write_bytes(data[: len(data) // 2])
    assert "2_1.png" in problems_of(root, check_images="decode")


def test_label_with_several_categories(tmp_path):
    rows = good_rows()
    rows[1]["category"] = "odd"  # label 0 is 'even' in its other row
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert "1 label(s) are mapped to several categories" in message and "label 0: even, odd" in message


def test_empty_category_cell(tmp_path):
    rows = good_rows()
    rows[4]["category"] = ""
    message = problems_of(write_dataset(tmp_path / "d", rows))
    assert re.search(r"column 'category': 1 empty cell\(s\) at CSV line 6\b", message)


def test_bounding_box_rules(tmp_path):
    rows = good_rows()
    for row in rows:
        row.update({"x_1": "", "x_2": "", "y_1": "", "y_2": ""})  # empty: the whole image
    rows[0].update({"x_1": 1, "x_2": 5})                      # partial: CSV line 2
    rows[1].update({"x_1": 5, "x_2": 3, "y_1": 0, "y_2": 4})  # inverted: line 3
    rows[2].update({"x_1": -1, "x_2": 3, "y_1": 0, "y_2": 4})  # negative: line 4
    rows[3].update({"x_1": 0, "x_2": 30, "y_1": 0, "y_2": 4})  # outside the 16x12 image: line 5
    rows[4].update({"x_1": 1, "x_2": 8, "y_1": 2, "y_2": 10})  # fine
    rows[5].update({"x_1": "a", "x_2": 8, "y_1": 2, "y_2": 10})  # non-numeric: line 7
    rows[6].update({"x_1": 0, "x_2": 16, "y_1": 0, "y_2": 13})  # outside (height 12): line 8
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert "5 problems" in message
    assert re.search(r"only some of x_1, x_2, y_1, y_2 at CSV line 2\b", message)
    assert re.search(r"x_1 >= x_2 or y_1 >= y_2 at CSV line 3\b", message)
    assert re.search(r"negative coordinates in x_1 at CSV line 4\b", message)
    assert re.search(r"2 box\(es\) reach outside their image at CSV lines 5, 8\b.*image width", message)
    assert re.search(r"non-numeric values at CSV line 7\b", message)


def test_bboxes_are_floats_with_nan_for_whole_images(tmp_path):
    rows = good_rows()
    for row in rows:
        row.update({"x_1": 0, "x_2": 16, "y_1": 0, "y_2": 12})
    rows[0].update({"x_1": "", "x_2": "", "y_1": "", "y_2": ""})
    table = load_dataset_table(write_dataset(tmp_path / "ds", rows))
    assert table["x_2"].dtype == float and np.isnan(table["x_1"][0]) and table["y_2"][1] == 12.0


def test_partial_bbox_columns(tmp_path):
    rows = good_rows()
    for row in rows:
        row["x_1"] = 0
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert "found x_1 but not x_2, y_1, y_2" in message and "all four columns" in message


def test_unknown_modes_suggest_the_close_name(dataset_root):
    assert "did you mean 'decode'" in problems_of(dataset_root, check_images="decod")
    assert "did you mean 'drop'" in problems_of(dataset_root, queries_without_gallery="dorp")


# --- the built-in example data -------------------------------------------------------------------------------

def test_example_data_is_valid_and_small():
    root = example_dataset_root()
    summary = check_dataset(root, check_images="decode")
    assert summary.labels_per_split == {"train": 120, "validation": 80} and summary.n_categories == 9
    table = load_dataset_table(root)
    assert {"category", "style", "unicode"} <= set(table.columns)
    assert sorted(table["label"].unique()) == list(range(200))
    val = table[table["split"] == "validation"]
    assert val.groupby("label").size().min() >= 2
    assert not set(val["label"]) & set(table.loc[table["split"] == "train", "label"])
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size < 5 * 1024 * 1024
    assert (root / "LICENSES.md").is_file() and (root / "README.md").is_file()
    with Image.open(table["path"].iloc[0]) as image:
        assert image.size == (64, 64)


def test_negative_boxes_name_their_columns_and_rows(tmp_path):
    rows = good_rows()
    for row in rows:
        row.update({"x_1": 0, "x_2": 4, "y_1": 0, "y_2": 4})
    rows[1].update({"y_1": -2})                          # CSV line 3: y_1
    rows[4].update({"x_1": -3, "y_1": -1})               # CSV line 6: x_1 and y_1
    rows[7].update({"x_1": -5, "x_2": -1})               # CSV line 9: x_1 and x_2
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert ("negative coordinates in x_1 at CSV lines 6, 9; x_2 at CSV line 9; y_1 at CSV lines 3, 6; "
            "pixel coordinates start at 0") in message
    assert "y_2" not in message.split("negative coordinates")[1].split("pixel")[0]


def test_labels_beyond_2_to_the_53_are_exact_integers(tmp_path):
    rows = good_rows()
    big = 2**62 + 1  # not representable as a float
    for row in rows:
        if row["label"] == 5:
            row["label"] = str(big)
    rows[0]["label"] = "7.0"  # a float column: the big labels must still be read exactly
    table = load_dataset_table(write_dataset(tmp_path / "ds", rows))
    assert big in table["label"].tolist() and table["label"].dtype == np.int64 and 7 in table["label"].tolist()
    rows[1]["label"] = str(2**63)
    message = problems_of(write_dataset(tmp_path / "ds2", rows))
    assert "1 problem" in message and "do not fit in a 64-bit integer at CSV line 3" in message
    assert "not integers" not in message


def test_string_labels_give_no_spurious_category_problem(tmp_path):
    rows = good_rows()
    rows[0]["label"], rows[2]["label"] = "cat", "dog"  # categories "even" and "odd"
    message = problems_of(write_dataset(tmp_path / "ds", rows))
    assert "1 problem" in message and "not integers at CSV lines 2, 4" in message
    assert "several categories" not in message


def test_dataset_root_that_is_a_file(tmp_path):
    root = write_dataset(tmp_path / "ds", good_rows())
    message = problems_of(root / "df.csv")
    assert "df.csv is a file, but a folder is expected" in message and str(root) in message
