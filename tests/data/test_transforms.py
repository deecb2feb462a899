"""Transform presets: output shapes and dtypes from every input kind, padding, normalisation, names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from lookalike.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TRANSFORM_PRESETS, denormalize, get_transforms
from lookalike.errors import LookalikeError


@pytest.fixture
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(12, 16, 3), dtype=np.uint8)  # H=12, W=16


def inputs(pixels):
    chw = torch.from_numpy(pixels).permute(2, 0, 1)
    return [Image.fromarray(pixels), pixels, chw, tv_tensors.Image(chw)]


@pytest.mark.parametrize("name", ["train", "val", "to_tensor"])
def test_presets_give_square_float_tensors(pixels, name):
    transform = get_transforms(name, image_size=24)
    for image in inputs(pixels):
        x = transform(image)
        assert type(x) is torch.Tensor and x.shape == (3, 24, 24) and x.dtype == torch.float32


def test_none_keeps_the_size_and_scales_to_unit_range(pixels):
    x = get_transforms("none")(Image.fromarray(pixels))
    assert x.shape == (3, 12, 16)
    assert torch.allclose(x, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)


def test_val_pads_with_white_to_keep_the_aspect_ratio(pixels):
    x = get_transforms("val", image_size=16)(Image.fromarray(pixels))  # 16x12 -> 16x16 with 2-row white bands
    white = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x[:, 0, :], white.view(3, 1).expand(3, 16), atol=1e-5)
    assert torch.allclose(x[:, -1, :], white.view(3, 1).expand(3, 16), atol=1e-5)
    inner = denormalize(x)[:, 2:14, :]
    assert torch.allclose(inner, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255, atol=1e-5)


def test_val_is_deterministic_train_is_random(pixels):
    image = Image.fromarray(pixels)
    val = get_transforms("val", image_size=16)
    assert torch.equal(val(image), val(image))
    torch.manual_seed(0)
    train = get_transforms("train", image_size=16)
    assert not torch.equal(train(image), train(image))


def test_preset_arguments_pass_through(pixels):
    x = get_transforms("train", image_size=8, scale=(1.0, 1.0), hflip=0.0, jitter=0.0)(Image.fromarray(pixels))
    assert x.shape == (3, 8, 8)


def test_train_without_hue_keeps_a_pure_colour_and_rotation_fills_white():
    red = np.zeros((16, 16, 3), dtype=np.uint8)
    red[..., 0] = 255
    torch.manual_seed(0)
    keep = get_transforms("train", image_size=16, scale=(1.0, 1.0), hflip=0.0, jitter=0.4, hue=0.0)
    for _ in range(5):
        x = denormalize(keep(Image.fromarray(red)))
        assert bool((x[0] >= x[1]).all() and (x[0] >= x[2]).all())  # brightness / contrast change, red stays red
    turned = get_transforms("train", image_size=16, scale=(1.0, 1.0), hflip=0.0, jitter=0.0, rotation=45.0)
    white = np.full((16, 16, 3), 255, dtype=np.uint8)
    assert torch.allclose(denormalize(turned(Image.fromarray(white))), torch.ones(3, 16, 16), atol=1e-5)


def test_denormalize_inverts_normalisation():
    x = torch.rand(2, 3, 4, 4)
    normalised = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(denormalize(normalised), x, atol=1e-6)


def test_unknown_preset_lists_names_and_suggests_the_close_one():
    with pytest.raises(LookalikeError, match="did you mean 'train'") as info:
        get_transforms("trian")
    assert all(name in str(info.value) for name in [*TRANSFORM_PRESETS, "none"])


def test_map_crops_with_full_area_and_square_ratio_are_the_identity():
    from lookalike.data.transforms import random_resized_crop_maps

    maps = torch.randn(3, 5, 8, 8)
    assert torch.allclose(random_resized_crop_maps(maps, scale=(1.0, 1.0), ratio=(1.0, 1.0)), maps, atol=1e-6)
    # scale 1 with other ratios: no crop fits, so torchvision keeps the whole image, and so do we
    assert torch.allclose(random_resized_crop_maps(maps, scale=(1.0, 1.0)), maps, atol=1e-6)


def test_map_crops_resample_a_ramp_at_the_drawn_zoom():
    """A horizontal ramp of slope 1 per pixel, cropped to a quarter of its area (half of each side) and resized back,
    has slope 1/2 per pixel (inside: a crop at the border reaches the last pixel's outer half, where the map's value
    is held) and stays inside the original values."""
    from lookalike.data.transforms import random_resized_crop_maps

    ramp = torch.arange(16.0).view(1, 1, 1, 16).expand(4, 2, 16, 16)
    out = random_resized_crop_maps(ramp, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    inner = out.diff(dim=-1)[..., 1:-1]
    assert torch.allclose(inner, torch.full_like(inner, 0.5), atol=1e-5)
    assert torch.allclose(out.diff(dim=-2), torch.zeros_like(out.diff(dim=-2)), atol=1e-5)
    assert out.min() >= 0 and out.max() <= 15


def test_map_crop_sizes_follow_torchvision_random_resized_crop():
    """Widths and the share of whole-image crops match v2.RandomResizedCrop.get_params on a square image."""
    from torchvision.transforms import v2

    from lookalike.data.transforms import CROP_RATIO, random_resized_crop_maps

    torch.manual_seed(0)
    n, side = 4000, 64
    params = [v2.RandomResizedCrop.get_params(torch.zeros(1, side, side), scale=[0.3, 1.0], ratio=list(CROP_RATIO))
              for _ in range(n)]
    tv_width = torch.tensor([p[3] / side for p in params])
    # our widths, read off a ramp whose value is the sampling coordinate (align_corners=False pixel centres)
    coords = (torch.arange(side) * 2 + 1) / side - 1
    ramp = coords.view(1, 1, 1, side).expand(n, 1, 2, side).contiguous()
    out = random_resized_crop_maps(ramp, scale=(0.3, 1.0))
    width = (out[:, 0, 0, -1] - out[:, 0, 0, 0]) / (coords[-1] - coords[0])
    assert abs(width.mean() - tv_width.mean()) < 0.01
    assert abs(width.std() - tv_width.std()) < 0.01
    assert abs((width > 0.999).float().mean() - (tv_width == 1).float().mean()) < 0.02
