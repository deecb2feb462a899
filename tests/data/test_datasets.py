"""Datasets: item dicts, bbox crops, the decoded-image cache, transforms, and the example-data helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lookalike.data import ImageDataset, get_transforms, load_dataset_table, train_and_validation_datasets
from lookalike.data.images import DecodedImageCache, read_image
from lookalike.data.transforms import denormalize
from lookalike.errors import DatasetError, LookalikeError
from tests.conftest import good_rows, write_dataset


def test_items_have_every_key(dataset_root):
    train, val = train_and_validation_datasets(dataset_root)
    assert (len(train), len(val)) == (6, 6)
    item = val[1]
    assert set(item) == {"input", "label", "index", "path", "is_query", "is_gallery", "category"}
    assert item["label"] == 3 and item["index"] == 1 and item["is_query"] and item["is_gallery"]
    assert item["category"] == "odd" and item["path"].endswith("img/3_1.png")
    assert item["input"].shape == (3, 12, 16) and item["input"].dtype == torch.float32
    assert 0.0 <= float(item["input"].min()) and float(item["input"].max()) <= 1.0
    assert train.label_to_category == {0: "even", 1: "odd", 2: "even"}
    assert not train[0]["is_query"]


def test_pixels_match_the_file(dataset_root):
    _, val = train_and_validation_datasets(dataset_root)
    expected = np.asarray(Image.open(val.paths[2]).convert("RGB"), dtype=np.float32) / 255
    assert torch.allclose(val[2]["input"].permute(1, 2, 0), torch.from_numpy(expected))


def test_bbox_crop(tmp_path):
    rows = good_rows()
    for row in rows:
        row.update({"x_1": 2, "x_2": 10, "y_1": 3, "y_2": 7})
    root = write_dataset(tmp_path / "ds", rows)
    table = load_dataset_table(root)
    item = ImageDataset(table)[0]
    full = np.asarray(Image.open(table["path"][0]).convert("RGB"), dtype=np.float32) / 255
    assert item["input"].shape == (3, 4, 8)
    assert torch.allclose(item["input"].permute(1, 2, 0), torch.from_numpy(full[3:7, 2:10]))


def test_transparency_goes_over_white(tmp_path):
    path = tmp_path / "t.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(path)
    assert np.asarray(read_image(path)).min() == 255


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="bad.png"):
        read_image(bad)


def test_cache_decodes_each_file_once(dataset_root):
    table = load_dataset_table(dataset_root)
    dataset = ImageDataset(table, get_transforms("train", image_size=8), cache_images=True)
    for _ in range(3):
        for i in range(len(dataset)):
            dataset[i]
    assert dataset.cache.n_decoded == len(dataset)
    plain = ImageDataset(table)
    cached = ImageDataset(table, cache_images=True)
    assert all(torch.equal(plain[i]["input"], cached[i]["input"]) for i in range(len(table)))


def test_cache_budget_and_preload(dataset_root):
    table = load_dataset_table(dataset_root)
    one_image = 3 * 12 * 16
    cache = DecodedImageCache(list(table["path"]), max_bytes=2 * one_image).preload()
    assert cache.n_bytes == 2 * one_image and len(cache._arrays) == 2
    cache.get(5), cache.get(5)
    assert cache.n_decoded == 4  # items beyond the budget are decoded on every read


def test_transform_presets_shapes_and_normalisation(dataset_root):
    table = load_dataset_table(dataset_root)
    for name in ("train", "val"):
        x = ImageDataset(table, get_transforms(name, image_size=24))[0]["input"]
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and type(x) is torch.Tensor
    val = ImageDataset(table, get_transforms("val", image_size=16))[0]["input"]
    assert float(denormalize(val).min()) >= 0.0 and float(denormalize(val).max()) <= 1.0
    # pad-to-square keeps the aspect ratio: a 16x12 image gets white bands top and bottom
    raw = ImageDataset(table, get_transforms("to_tensor", image_size=16))[0]["input"]
    assert torch.all(raw[:, 0, :] == 1.0) and torch.all(raw[:, -1, :] == 1.0)


def test_unknown_preset_suggests_the_close_name():
    with pytest.raises(LookalikeError, match="Did you mean 'train'"):
        get_transforms("trian")


def test_dataloader_collates_item_dicts(dataset_root):
    _, val = train_and_validation_datasets(dataset_root, transforms_val=get_transforms("val", image_size=8))
    batch = next(iter(DataLoader(val, batch_size=4)))
    assert batch["input"].shape == (4, 3, 8, 8)
    assert batch["label"].tolist() == [3, 3, 4, 4] and batch["is_query"].dtype == torch.bool
    assert batch["category"] == ["odd", "odd", "even", "even"]
