"""Image reading (RGB, transparency over white, bbox crops, clear errors) and the decoded-image cache."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lookalike.data import images
from lookalike.data.images import DecodedImageCache, image_size, read_image, read_image_array
from lookalike.errors import DatasetError
from tests.conftest import write_image


def test_rgb_pixels_unchanged(tmp_path):
    path = write_image(tmp_path / "a.png", (16, 12))
    image = read_image(path)
    assert image.mode == "RGB" and image.size == (16, 12)
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(path)))


def test_bbox_crop_pixelwise(tmp_path):
    path = write_image(tmp_path / "a.png", (16, 12))
    full = np.asarray(Image.open(path))
    crop = read_image_array(path, (2, 3, 10, 7))  # x1, y1, x2, y2
    assert crop.shape == (4, 8, 3) and crop.dtype == np.uint8
    assert np.array_equal(crop, full[3:7, 2:10])
    assert np.array_equal(read_image_array(path, (2.4, 2.6, 9.6, 7.4)), full[3:7, 2:10])  # rounded to pixels


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_goes_over_white(tmp_path, mode):
    path = tmp_path / "t.png"
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    if mode == "LA":
        rgba.convert("LA").save(path)
    elif mode == "P":
        palette = rgba.convert("RGB").convert("P")
        palette.info["transparency"] = palette.getpixel((0, 0))
        palette.save(path, transparency=palette.getpixel((0, 0)))
    else:
        rgba.save(path)
    pixels = np.asarray(read_image(path))
    assert pixels[0, 0].tolist() == [255, 255, 255]  # transparent -> white, not black
    assert pixels[1, 1].tolist() != [255, 255, 255]


def test_greyscale_becomes_rgb(tmp_path):
    path = write_image(tmp_path / "g.png", (5, 4), mode="L")
    pixels = np.asarray(read_image(path))
    assert pixels.shape == (4, 5, 3) and np.array_equal(pixels[..., 0], pixels[..., 2])


def test_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"not found: .*nope\.png"):
        read_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"cannot decode image .*bad\.png.*replace it"):
        read_image(bad)
    with pytest.raises(DatasetError, match="is a folder"):
        read_image(tmp_path)


def test_image_size_reads_the_header_only(tmp_path):
    assert image_size(write_image(tmp_path / "a.png", (7, 3))) == (7, 3)


@pytest.fixture
def counted_reads(monkeypatch):
    """Counts the files actually decoded through the cache."""
    calls: list[str] = []
    original = images.read_image_array

    def counting(path, bbox=None):
        calls.append(str(path))
        return original(path, bbox)

    monkeypatch.setattr(images, "read_image_array", counting)
    return calls


def test_cache_decodes_each_file_once(tmp_path, counted_reads):
    paths = [str(write_image(tmp_path / f"{i}.png", (6, 5), seed=i)) for i in range(3)]
    cache = DecodedImageCache(paths + [paths[0]])  # row 3 repeats row 0: one decode for both
    first = [cache.get(i) for i in range(4)]
    for _ in range(3):
        again = [cache.get(i) for i in range(4)]
    assert len(counted_reads) == 3 and cache.n_decoded == 3
    assert all(a is b for a, b in zip(first, again)) and first[3] is first[0]
    assert cache.n_bytes == 3 * 6 * 5 * 3
    assert np.array_equal(first[1], read_image_array(paths[1]))
    assert not first[0].flags.writeable  # shared arrays cannot be changed by accident


def test_cache_keys_include_the_bbox(tmp_path, counted_reads):
    path = str(write_image(tmp_path / "a.png", (8, 8)))
    cache = DecodedImageCache([path, path], [None, (0, 0, 4, 4)])
    assert cache.get(0).shape == (8, 8, 3) and cache.get(1).shape == (4, 4, 3)
    assert len(counted_reads) == 2


def test_cache_budget_and_preload(tmp_path, counted_reads):
    paths = [str(write_image(tmp_path / f"{i}.png", (16, 12), seed=i)) for i in range(6)]
    one_image = 3 * 12 * 16
    cache = DecodedImageCache(paths, max_bytes=2 * one_image).preload()
    assert cache.n_bytes == 2 * one_image and 0 in cache and 1 in cache and 2 not in cache
    cache.get(5), cache.get(5), cache.get(0)
    assert len(counted_reads) == 4  # items beyond the budget are decoded on every read; cached ones never
