"""Image reading (every Pillow mode to 8-bit RGB, transparency over white, bbox crops, the pixel limit, clear
errors) and the decoded-image cache."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lookalike.data import images
from lookalike.data.images import DecodedImageCache, image_size, read_image, read_image_array, to_rgb_array
from lookalike.errors import ArgumentError, ConfigError, DatasetError
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

    def counting(path, bbox=None, **kwargs):
        calls.append(str(path))
        return original(path, bbox, **kwargs)

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


# ---- every Pillow mode, against hand-made pixels ------------------------------------------------------------

def png_bytes(samples: np.ndarray, color_type: int, bit_depth: int = 16, extra: bytes = b"") -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit colour): samples HxWxC, big-endian, filter 0."""
    height, width = samples.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + samples[y].astype(dtype).tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + extra + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


SIXTEEN_BIT_IN = np.array([[0, 255, 256, 32768], [65280, 65535, 257 * 10, 257 * 200]], dtype=np.uint16)
SIXTEEN_BIT_OUT = np.array([[0, 0, 1, 128], [255, 255, 10, 200]], dtype=np.uint8)  # v // 256: the high byte


def grey(pixels: np.ndarray) -> np.ndarray:
    """Assert the three channels agree and return one."""
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])
    return pixels[..., 0]


@pytest.mark.parametrize("mode, fmt", [("I;16", "png"), ("I;16", "tif"), ("I;16B", "tif"), ("I;16L", "tif")])
def test_sixteen_bit_greyscale_files_keep_their_range(tmp_path, mode, fmt):
    order = ">u2" if mode.endswith("B") else "<u2"
    image = Image.frombytes(mode, (4, 2), SIXTEEN_BIT_IN.astype(order).tobytes())
    path = tmp_path / f"g.{fmt}"
    image.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode.startswith("I;16")  # the file really holds 16-bit samples
    assert np.array_equal(grey(read_image_array(path)), SIXTEEN_BIT_OUT)


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I;16N"])
def test_sixteen_bit_images_in_memory(mode):
    order = ">u2" if mode.endswith("B") else ("=u2" if mode.endswith("N") else "<u2")
    image = Image.frombytes(mode, (4, 2), SIXTEEN_BIT_IN.astype(order).tobytes())
    assert np.array_equal(grey(to_rgb_array(image)), SIXTEEN_BIT_OUT)


def test_sixteen_bit_colour_and_alpha_pngs(tmp_path):
    rgb = np.stack([SIXTEEN_BIT_IN, SIXTEEN_BIT_IN[:, ::-1], np.full_like(SIXTEEN_BIT_IN, 257 * 99)], axis=-1)
    (tmp_path / "rgb.png").write_bytes(png_bytes(rgb, color_type=2))
    expected = np.stack([SIXTEEN_BIT_OUT, SIXTEEN_BIT_OUT[:, ::-1], np.full_like(SIXTEEN_BIT_OUT, 99)], axis=-1)
    assert np.array_equal(read_image_array(tmp_path / "rgb.png"), expected)

    opaque, clear = 65535, 0
    rgba = np.array([[[257 * 200, 0, 257 * 50, opaque], [0, 0, 0, clear]]], dtype=np.uint16)
    (tmp_path / "rgba.png").write_bytes(png_bytes(rgba, color_type=6))
    assert read_image_array(tmp_path / "rgba.png").tolist() == [[[200, 0, 50], [255, 255, 255]]]

    la = np.array([[[257 * 30, opaque], [0, clear]]], dtype=np.uint16)
    (tmp_path / "la.png").write_bytes(png_bytes(la, color_type=4))
    assert read_image_array(tmp_path / "la.png").tolist() == [[[30, 30, 30], [255, 255, 255]]]


def test_sixteen_bit_transparent_key_goes_over_white(tmp_path):
    samples = np.array([[[257 * 40], [1234]]], dtype=np.uint16)
    transparent = b"\x00\x00\x00\x02tRNS\x04\xd2" + struct.pack(">I", zlib.crc32(b"tRNS\x04\xd2") & 0xFFFFFFFF)
    (tmp_path / "key.png").write_bytes(png_bytes(samples, color_type=0, extra=transparent))
    assert grey(read_image_array(tmp_path / "key.png")).tolist() == [[40, 255]]


def test_32_bit_integer_tiffs(tmp_path):
    sixteen = np.array([[0, 256, 65535, 257 * 77]], dtype=np.int32)  # 16-bit samples widened: v // 256
    Image.fromarray(sixteen, mode="I").save(tmp_path / "i16.tif")
    assert grey(read_image_array(tmp_path / "i16.tif")).tolist() == [[0, 1, 255, 77]]

    wide = np.array([[-100, 0, 100, 50]], dtype=np.int32)  # outside 0..65535: min-max
    Image.fromarray(wide, mode="I").save(tmp_path / "wide.tif")
    with Image.open(tmp_path / "wide.tif") as reopened:
        assert reopened.mode == "I"
    assert grey(read_image_array(tmp_path / "wide.tif")).tolist() == [[0, 128, 255, 191]]

    huge = np.array([[0, 2**31 - 1]], dtype=np.int32)
    assert grey(to_rgb_array(Image.fromarray(huge, mode="I"))).tolist() == [[0, 255]]


def test_float_tiffs(tmp_path):
    unit = np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)  # within [0, 1]: v * 255
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    with Image.open(tmp_path / "unit.tif") as reopened:
        assert reopened.mode == "F"
    assert grey(read_image_array(tmp_path / "unit.tif")).tolist() == [[0, 128, 255, 64]]

    wide = np.array([[-1.0, 0.0, 3.0, 1.0]], dtype=np.float32)  # outside [0, 1]: min-max
    Image.fromarray(wide, mode="F").save(tmp_path / "wide.tif")
    assert grey(read_image_array(tmp_path / "wide.tif")).tolist() == [[0, 64, 255, 128]]


def test_float_non_finite_and_constant_images():
    odd = np.array([[np.nan, np.inf, -np.inf, 0.5, 0.0]], dtype=np.float32)
    assert grey(to_rgb_array(Image.fromarray(odd, mode="F"))).tolist() == [[0, 255, 0, 128, 0]]
    assert grey(to_rgb_array(Image.fromarray(np.full((2, 2), 7.0, np.float32), mode="F"))).tolist() == [[0, 0]] * 2
    assert grey(to_rgb_array(Image.fromarray(np.full((1, 2), np.nan, np.float32), mode="F"))).tolist() == [[0, 0]]


@pytest.mark.parametrize("mode, value, expected", [
    ("1", 1, (255, 255, 255)),
    ("L", 77, (77, 77, 77)),
    ("RGB", (10, 20, 30), (10, 20, 30)),
    ("RGBX", (10, 20, 30, 0), (10, 20, 30)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
    ("YCbCr", (128, 128, 128), (128, 128, 128)),
    ("HSV", (0, 255, 255), (255, 0, 0)),
    ("LAB", (int(0.5 * 255), 128, 128), (118, 118, 118)),  # L* = 50 grey in sRGB
    ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
    ("LA", (40, 0), (255, 255, 255)),
    ("La", (40, 255), (40, 40, 40)),
    ("PA", (0, 0), (255, 255, 255)),
])
def test_eight_bit_modes(tmp_path, mode, value, expected):
    image = Image.new(mode, (2, 1), value)
    assert to_rgb_array(image)[0, 0].tolist() == list(expected)
    if mode in ("1", "L", "RGB", "RGBA", "LA", "CMYK"):
        path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
        image.save(path, **({"quality": 100} if mode == "CMYK" else {}))
        assert np.abs(read_image_array(path)[0, 0].astype(int) - expected).max() <= 2


def test_unknown_mode_is_refused_clearly():
    image = Image.new("L", (2, 2))
    image._mode = "BGR;16"  # a mode Pillow no longer converts; stands for any mode not in SUPPORTED_MODES
    with pytest.raises(DatasetError, match=r"Pillow mode 'BGR;16'.*cannot convert.*supported: .*I;16"):
        to_rgb_array(image)


# ---- the pixel limit, checked from the header before any decoding -------------------------------------------

def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds no pixel data: decoding it fails, its header reads."""
    whole = png_bytes(np.zeros((1, 1, 1), np.uint8), color_type=0, bit_depth=8)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    ihdr = struct.pack(">I", 13) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header) & 0xFFFFFFFF)
    return whole[:8] + ihdr + whole[8 + 25:]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_image_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(header_only_png(12000, 12000))  # 144 MP: would need 432 MB decoded
    assert image_size(path) == (12000, 12000)
    with pytest.raises(DatasetError, match=r"huge\.png is 12000 x 12000 = 144,000,000 pixels, above the limit of "
                                           r"50,000,000.*LOOKALIKE_MAX_PIXELS"):
        read_image(path)  # the header alone decides: the (missing) pixel data is never decoded


def test_pixel_limit_argument_and_environment(tmp_path, monkeypatch):
    path = write_image(tmp_path / "a.png", (40, 30))  # 1200 pixels
    with pytest.raises(DatasetError, match="1,200 pixels, above the limit of 1,000"):
        read_image(path, max_pixels=1000)
    assert read_image(path, max_pixels=1200).size == (40, 30)
    assert read_image(path, max_pixels=None).size == (40, 30)
    monkeypatch.setenv("LOOKALIKE_MAX_PIXELS", "1000")
    with pytest.raises(DatasetError, match="above the limit of 1,000"):
        read_image_array(path)
    with pytest.raises(DatasetError, match="above the limit"):
        DecodedImageCache([str(path)]).get(0)
    monkeypatch.setenv("LOOKALIKE_MAX_PIXELS", "none")
    assert read_image(path).size == (40, 30)
    monkeypatch.setenv("LOOKALIKE_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="LOOKALIKE_MAX_PIXELS='lots' is not a pixel count"):
        read_image(path)
    with pytest.raises(ArgumentError, match="max_pixels must be a positive number"):
        read_image(path, max_pixels=-5)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_limit_above_pillows_own_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses above 2 x 100 pixels by itself
    path = write_image(tmp_path / "a.png", (40, 30))
    with pytest.raises(DatasetError, match="above the limit of 1,000"):
        read_image(path, max_pixels=1000)
    assert read_image(path, max_pixels=1200).size == (40, 30)  # the user's limit wins over Pillow's
