"""The image check before a run: "quick" finds corrupt and oversized files cheaply, and caches what passed."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from lookalike.data import image_check
from lookalike.data.image_check import check_image_files, default_cache_folder, inspect_image
from lookalike.data.validation import check_dataset, format_summary, load_dataset_table
from lookalike.errors import DatasetError
from tests.conftest import good_rows, write_dataset


def noise(path, size=(64, 48), seed=0, **save):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **save)
    return str(path)


def truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


@pytest.fixture
def opened(monkeypatch):
    """The files the check actually opens (cache misses)."""
    calls: list[str] = []
    original = image_check.inspect_image

    def counting(path, level, max_pixels):
        calls.append(path)
        return original(path, level, max_pixels)

    monkeypatch.setattr(image_check, "inspect_image", counting)
    return calls


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_quick_finds_truncated_files_that_exists_misses(tmp_path, suffix):
    good, bad = noise(tmp_path / f"good{suffix}"), noise(tmp_path / f"bad{suffix}", seed=1)
    truncate(bad)
    assert check_image_files([good, bad], "exists").missing == []  # "exists" sees nothing wrong
    report = check_image_files([good, bad], "quick", cache=False)
    assert report.sizes == {good: (64, 48)} and list(report.broken) == [bad]
    assert "truncated" in report.broken[bad]


def test_quick_decodes_jpeg_at_reduced_size(tmp_path, monkeypatch):
    path = noise(tmp_path / "a.jpg", size=(256, 128))
    drafts = []
    original = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: drafts.append(size) or original(self, mode, size))
    assert inspect_image(path, "quick", None) == ((256, 128), None)  # the size reported is the real one
    assert drafts == [(32, 16)]


def test_quick_refuses_oversized_images_without_decoding(tmp_path, monkeypatch):
    path = noise(tmp_path / "a.png", size=(40, 30))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    assert inspect_image(path, "quick", 1000) == ((40, 30), "too large")


def test_results_are_cached_by_path_mtime_and_size(tmp_path, opened):
    cache = tmp_path / "cache"
    paths = [noise(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    first = check_image_files(paths, "quick", cache=cache, cache_key="df.csv")
    assert first.n_cached == 0 and len(opened) == 3 and len(list(cache.iterdir())) == 1
    second = check_image_files(paths, "quick", cache=cache, cache_key="df.csv")
    assert second.n_cached == 3 and len(opened) == 3 and second.sizes == first.sizes  # nothing opened again
    truncate(paths[1])  # new size: checked again, and now found broken
    os.utime(paths[2], ns=(1, 1))  # new mtime only: checked again, still fine
    third = check_image_files(paths, "quick", cache=cache, cache_key="df.csv")
    assert opened[3:] == [paths[1], paths[2]] and list(third.broken) == [paths[1]] and third.n_cached == 1
    fourth = check_image_files(paths, "quick", cache=cache, cache_key="df.csv")
    assert opened[5:] == [paths[1]]  # broken files are never cached
    assert check_image_files(paths[:1], "quick", cache=cache, max_pixels=100, cache_key="df.csv").too_large == {
        paths[0]: (64, 48)}  # a cached size still meets today's limit
    assert fourth.n_cached == 2


def test_cache_folder_and_a_damaged_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_IMAGE_CHECK_CACHE", "off")
    assert default_cache_folder() is None
    monkeypatch.setenv("LOOKALIKE_IMAGE_CHECK_CACHE", str(tmp_path / "c"))
    assert default_cache_folder() == tmp_path / "c"
    monkeypatch.delenv("LOOKALIKE_IMAGE_CHECK_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_folder() == tmp_path / "xdg" / "lookalike" / "image-checks"
    path = noise(tmp_path / "a.png")
    check_image_files([path], "quick")
    (cache_file,) = (tmp_path / "xdg" / "lookalike" / "image-checks").iterdir()
    cache_file.write_text("{not json")
    assert check_image_files([path], "quick").sizes == {path: (64, 48)}  # a damaged cache is only a miss


def test_load_dataset_table_quick_level(tmp_path):
    root = write_dataset(tmp_path / "ds", good_rows())
    (root / "img/1_0.png").write_bytes((root / "img/1_0.png").read_bytes()[:60])
    load_dataset_table(root, check_images="exists")
    with pytest.raises(DatasetError, match=r"1 image file\(s\) cannot be decoded \(CSV line 4\): .*1_0\.png"):
        load_dataset_table(root, check_images="quick")


def test_check_data_reports_oversized_images_and_the_limit(tmp_path):
    root = write_dataset(tmp_path / "ds", good_rows())  # 16 x 12 = 192 pixels each
    noise(root / "img/4_1.png", size=(20, 12))  # 240 pixels, on CSV line 11
    with pytest.raises(DatasetError) as info:
        load_dataset_table(root, check_images="quick", max_pixels=200)
    raise_message = str(info.value)
    assert ("1 image(s) have more pixels than the limit of 200 (CSV line 11)" in raise_message
            and "4_1.png (20 x 12)" in raise_message and "--max-pixels" in raise_message)
    with pytest.raises(DatasetError, match="more pixels than the limit"):
        check_dataset(root, check_images="decode", max_pixels=200)
    summary = check_dataset(root, check_images="quick", max_pixels=240)
    assert summary.images.largest == (20, 12)
    line = [x for x in format_summary(summary).splitlines() if "images:" in x][0]
    assert line == ("  images: 12 files read (header, pixel limit and a reduced decode), 11 of them from the cache "
                    "of an earlier check; largest 20 x 12; pixel limit 240")
    # the 11 small files passed (and were cached) in the first call above; the large one in the last one
    again = check_dataset(root, check_images="quick", max_pixels=None)
    assert "12 of them from the cache" in format_summary(again) and "pixel limit none" in format_summary(again)
