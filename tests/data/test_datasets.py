"""Datasets: item dicts and their values, bbox crops, the cache through the dataset, DataLoader collation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lookalike.data import (
    ImageDataset,
    example_dataset_root,
    get_transforms,
    images,
    load_dataset_table,
    train_and_validation_datasets,
)
from tests.conftest import good_rows, write_dataset


def test_items_have_every_key_and_value(dataset_root):
    train, val = train_and_validation_datasets(dataset_root)
    assert (len(train), len(val)) == (6, 6)
    item = val[1]
    assert set(item) == {"input", "label", "index", "path", "is_query", "is_gallery", "category"}
    assert item["label"] == 3 and item["index"] == 1 and item["is_query"] is True and item["is_gallery"] is True
    assert item["category"] == "odd" and item["path"].endswith("img/3_1.png")
    assert item["input"].shape == (3, 12, 16) and item["input"].dtype == torch.float32
    assert 0.0 <= float(item["input"].min()) and float(item["input"].max()) <= 1.0
    assert train[0]["is_query"] is False and train[0]["is_gallery"] is False
    assert train.labels.dtype == np.int64 and train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert train.label_to_category == {0: "even", 1: "odd", 2: "even"}
    assert list(train.categories) == ["even", "even", "odd", "odd", "even", "even"]
    assert isinstance(train.table, pd.DataFrame) and list(train.table.index) == list(range(6))
    assert val[-1]["index"] == 5


def test_pixels_match_the_file(dataset_root):
    _, val = train_and_validation_datasets(dataset_root)
    expected = np.asarray(Image.open(val.paths[2]).convert("RGB"), dtype=np.float32) / 255
    assert torch.allclose(val[2]["input"].permute(1, 2, 0), torch.from_numpy(expected))


def test_bbox_crop_and_whole_image_rows(tmp_path):
    rows = good_rows()
    for row in rows:
        row.update({"x_1": 2, "x_2": 10, "y_1": 3, "y_2": 7})
    rows[1].update({"x_1": "", "x_2": "", "y_1": "", "y_2": ""})
    table = load_dataset_table(write_dataset(tmp_path / "ds", rows))
    dataset = ImageDataset(table)
    full = np.asarray(Image.open(table["path"][0]).convert("RGB"), dtype=np.float32) / 255
    assert dataset[0]["input"].shape == (3, 4, 8)
    assert torch.allclose(dataset[0]["input"].permute(1, 2, 0), torch.from_numpy(full[3:7, 2:10]))
    assert dataset[1]["input"].shape == (3, 12, 16)


def test_sequence_and_no_category(tmp_path):
    rows = good_rows(n_train_labels=1, n_val_labels=2)
    for i, row in enumerate(rows):
        row["sequence"] = f"s{i}"
        del row["category"]
    _, val = train_and_validation_datasets(write_dataset(tmp_path / "ds", rows))
    item = val[0]
    assert item["sequence"] == "s2" and "category" not in item
    assert val.categories is None and val.label_to_category is None


def test_table_not_from_the_loader_parses_flags(tmp_path):
    table = pd.DataFrame({"label": [0, 0], "path": ["a", "b"], "is_query": ["False", "True"],
                          "is_gallery": [None, "1"]})
    dataset = ImageDataset(table)
    assert dataset.is_query.tolist() == [False, True] and dataset.is_gallery.tolist() == [False, True]


def test_transform_receives_a_uint8_image(dataset_root):
    seen = []

    def transform(image):
        seen.append((type(image).__name__, image.dtype, tuple(image.shape)))
        return image.float()

    ImageDataset(load_dataset_table(dataset_root), transform)[0]
    assert seen == [("Image", torch.uint8, (3, 12, 16))]


def test_cache_decodes_once_and_gives_the_same_items(dataset_root, monkeypatch):
    table = load_dataset_table(dataset_root)
    plain = [ImageDataset(table)[i]["input"] for i in range(len(table))]
    reads = []
    original = images.read_image_array
    monkeypatch.setattr(images, "read_image_array", lambda p, b=None, **kw: reads.append(p) or original(p, b, **kw))
    dataset = ImageDataset(table, cache_images=True)
    for _ in range(3):
        items = [dataset[i]["input"] for i in range(len(dataset))]
    assert len(reads) == len(table) and dataset.cache.n_decoded == len(table)
    assert all(torch.equal(a, b) for a, b in zip(plain, items))
    items[0].mul_(0)  # an item is a copy: the cache is untouched
    assert torch.equal(dataset[0]["input"], plain[0])


def test_preloaded_cache_is_shared_with_forked_workers(dataset_root, monkeypatch):
    table = load_dataset_table(dataset_root)
    dataset = ImageDataset(table, get_transforms("val", image_size=8), cache_images=True).preload()

    def no_decoding(path, bbox=None, **kwargs):
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(images, "read_image_array", no_decoding)  # inherited by the forked workers
    loader = DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context="fork")
    assert sum(len(batch["label"]) for batch in loader) == len(table)


def test_dataloader_collates_item_dicts(dataset_root):
    _, val = train_and_validation_datasets(dataset_root, transforms_val=get_transforms("val", image_size=8))
    batch = next(iter(DataLoader(val, batch_size=4)))
    assert batch["input"].shape == (4, 3, 8, 8) and batch["input"].dtype == torch.float32
    assert batch["label"].tolist() == [3, 3, 4, 4] and batch["index"].tolist() == [0, 1, 2, 3]
    assert batch["is_query"].dtype == torch.bool and batch["is_gallery"].all()
    assert batch["category"] == ["odd", "odd", "even", "even"] and len(batch["path"]) == 4


def test_example_data_datasets():
    train, val = train_and_validation_datasets(example_dataset_root(),
                                               transforms_val=get_transforms("val", image_size=32))
    assert len(np.unique(train.labels)) == 120 and len(np.unique(val.labels)) == 80
    assert val.is_query.all() and val.is_gallery.all() and len(set(val.label_to_category.values())) == 9
    assert val[0]["input"].shape == (3, 32, 32)


def test_validation_errors_pass_through(tmp_path):
    rows = good_rows()
    rows[0]["split"] = "test"
    from lookalike.errors import DatasetError

    with pytest.raises(DatasetError, match="'test'"):
        train_and_validation_datasets(write_dataset(tmp_path / "ds", rows))


def test_dataset_reads_sixteen_bit_like_eight_bit(tmp_path):
    eight = np.random.default_rng(0).integers(0, 256, size=(6, 5), dtype=np.uint8)
    Image.fromarray(eight, mode="L").save(tmp_path / "8.png")
    Image.frombytes("I;16", (5, 6), (eight.astype(np.uint16) * 257).astype("<u2").tobytes()).save(tmp_path / "16.png")
    table = pd.DataFrame({"label": [0, 0], "path": [str(tmp_path / "8.png"), str(tmp_path / "16.png")]})
    dataset = ImageDataset(table)
    assert dataset[1]["input"].shape == (3, 6, 5)
    assert np.array_equal(dataset.read(0).numpy(), dataset.read(1).numpy())
