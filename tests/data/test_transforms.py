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
