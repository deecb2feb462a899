"""cache_frozen_trunk: training on cached feature maps of the frozen first stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lookalike.errors import ConfigError
from lookalike.pipelines import train

from tests.pipelines.conftest import TRIPLET, killed_in_second_epoch, tiny

NO_PIXEL_AUGMENTATION = "{name: train, args: {scale: [1.0, 1.0], hflip: 0.0, jitter: 0.0}}"


def _losses(run_dir: Path) -> list[float]:
    history = json.loads((Path(run_dir) / "history.json").read_text())
    return [history[e]["train"]["loss"] for e in sorted(history, key=int) if "train" in history[e]]


def test_cached_trunk_trains_as_the_full_network_does(dataset, tmp_path, monkeypatch):
    """With crops that keep the whole image, training on the cached maps is training the whole network: the same
    losses (exactly with fp32 maps; with the default fp16 maps, up to their rounding) and the same frozen weights;
    the checkpoint is the whole extractor."""
    from lookalike.pipelines.trunk_cache import FrozenTrunkCache

    arcface = {**TRIPLET, "sampler": None, "criterion": {"name": "arcface", "args": {}}}  # no mining: smooth in fp16
    common = dict(max_epochs=2, freeze_layers="[backbone.0]", transforms_train=NO_PIXEL_AUGMENTATION, bs_train=16)
    plain = train(arcface, tiny(dataset, tmp_path, run_name="plain", **common))
    cached = train(arcface, tiny(dataset, tmp_path, run_name="cached", cache_frozen_trunk="true", **common))
    assert _losses(cached["run_dir"]) == pytest.approx(_losses(plain["run_dir"]), rel=5e-3)
    monkeypatch.setattr(FrozenTrunkCache, "dtype", torch.float32)
    exact = train(arcface, tiny(dataset, tmp_path, run_name="fp32", cache_frozen_trunk="true", **common))
    assert _losses(exact["run_dir"]) == pytest.approx(_losses(plain["run_dir"]), rel=1e-5)
    assert cached["metrics_flat"]["OVERALL/cmc/1"] == pytest.approx(plain["metrics_flat"]["OVERALL/cmc/1"], abs=0.07)
    a = torch.load(plain["last_checkpoint"], weights_only=True)["state_dict"]
    b = torch.load(cached["last_checkpoint"], weights_only=True)["state_dict"]
    assert a.keys() == b.keys()  # nothing of the cache in the checkpoint
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("extractor.backbone.0."))


def test_cached_trunk_with_crops_learns_on_the_built_in_data(tmp_path):
    """The built-in emoji data, a small CNN whose (random) first stage is frozen and cached, crops on the maps: a few
    epochs clearly raise CMC@1 on the validation labels."""
    result = train(None, [
        "extractor={name: small_cnn, args: {channels: [16, 32, 64], embedding_dim: 64}}", "image_size=32",
        "sampler={name: balance, args: {n_labels: 16, n_instances: 4}}", "scheduler=null",
        "criterion={name: triplet_with_miner, args: {margin: 0.2, miner: hard_triplets}}",
        "freeze_layers=[backbone.0]", "cache_frozen_trunk=true",
        "transforms_train={name: train, args: {scale: [0.6, 1.0], hflip: 0.0, jitter: 0.0}}",
        "max_epochs=8", "valid_period=100", "optimizer.args.lr=3e-3", "progress_bar=false", "logger=null",
        "log_images=false", f"output_dir={tmp_path}", "accelerator=cpu",
    ])
    before = result["initial_metrics"]["OVERALL"]["cmc"][1]
    after = result["metrics"]["OVERALL"]["cmc"][1]
    assert after >= before + 0.1, (before, after)


@pytest.mark.parametrize("extra, message", [
    ({"freeze_layers": "[]"}, "freeze_layers is empty"),
    ({"freeze_layers": "[backbone.1]"}, r"not the first stages.*backbone\.0, backbone\.1"),
    ({"transforms_train": "{name: train, args: {jitter: 0.0}}"}, r"`train` preset with hflip 0\.5"),
    ({"transforms_train": "{name: train, args: {hflip: 0.0}}"}, r"jitter 0\.3, hue 0\.1"),
    ({"transforms_train": "{name: val, args: {}}"}, "the `val` transform"),
    ({"transforms_val": "{name: to_tensor, args: {}}"}, "transforms_val is 'to_tensor'"),
])
def test_cached_trunk_refuses_what_it_cannot_reproduce(dataset, tmp_path, extra, message):
    overrides = {"freeze_layers": "[backbone.0]", "transforms_train": NO_PIXEL_AUGMENTATION, **extra}
    with pytest.raises(ConfigError, match=message):
        train(TRIPLET, tiny(dataset, tmp_path, cache_frozen_trunk="true", **overrides))


def test_cached_trunk_refuses_maps_larger_than_the_memory_share_before_training(dataset, tmp_path, monkeypatch):
    from lookalike.pipelines import trunk_cache

    monkeypatch.setattr(trunk_cache, "MEMORY_SHARE", 1e-12)
    with pytest.raises(ConfigError, match=r"feature maps of 48 training images \(\(32, 16, 16\) each\) need"):
        train(TRIPLET, tiny(dataset, tmp_path, cache_frozen_trunk="true", freeze_layers="[backbone.0]",
                            transforms_train=NO_PIXEL_AUGMENTATION, run_name="big"))
    assert not (tmp_path / "big").exists()  # refused before a run folder was made


def test_killed_and_resumed_cached_run_equals_an_uninterrupted_one(dataset, tmp_path, monkeypatch):
    """The resumed run builds the cache again; its crops (global RNG, seeded per epoch) must not shift."""
    extra = dict(max_epochs=2, freeze_layers="[backbone.0]", cache_frozen_trunk="true",
                 transforms_train="{name: train, args: {scale: [0.5, 1.0], hflip: 0.0, jitter: 0.0}}")
    full = train(TRIPLET, tiny(dataset, tmp_path, run_name="full", **extra))
    killed_in_second_epoch(monkeypatch, lambda: train(TRIPLET, tiny(dataset, tmp_path, run_name="killed", **extra)))
    resumed = train(None, [], resume=tmp_path / "killed")
    a = torch.load(full["last_checkpoint"], weights_only=True)["state_dict"]
    b = torch.load(resumed["last_checkpoint"], weights_only=True)["state_dict"]
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_cached_trunk_under_embed_from_trains_the_projection_as_the_full_network_does(dataset, tmp_path, monkeypatch):
    """embed_from with a cached trunk (the shipped pretrained recipe's set-up): the cached steps compute what the
    loss sees through the projection, exactly as the uncached ones; an embedding that no training could change
    (every stage up to it frozen) is refused."""
    from lookalike.pipelines.trunk_cache import FrozenTrunkCache

    arcface = {**TRIPLET, "sampler": None, "criterion": {"name": "arcface", "args": {}}}
    common = dict(max_epochs=2, freeze_layers="[backbone.0]", transforms_train=NO_PIXEL_AUGMENTATION, bs_train=16,
                  extractor="{name: small_cnn, args: {embed_from: backbone.1}}")
    plain = train(arcface, tiny(dataset, tmp_path, run_name="plain", **common))
    monkeypatch.setattr(FrozenTrunkCache, "dtype", torch.float32)
    cached = train(arcface, tiny(dataset, tmp_path, run_name="cached", cache_frozen_trunk="true", **common))
    assert _losses(cached["run_dir"]) == pytest.approx(_losses(plain["run_dir"]), rel=1e-5)
    assert cached["metrics_flat"]["OVERALL/cmc/1"] == pytest.approx(plain["metrics_flat"]["OVERALL/cmc/1"], abs=1e-6)
    with pytest.raises(ConfigError, match="every stage up to 'backbone.0' is in freeze_layers"):
        train(arcface, tiny(dataset, tmp_path, run_name="bad", **{
            **common, "extractor": "{name: small_cnn, args: {embed_from: backbone.0}}"}))
