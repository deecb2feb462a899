"""train-pairwise on a tiny run (a small CNN on the built-in data): outputs, resume, and clear config errors."""

from __future__ import annotations

import json

import pytest
import torch

from lookalike.errors import CheckpointError, ConfigError
from lookalike.models import SmallCNNExtractor, save_weights
from lookalike.models.pairwise import load_pairwise_model
from lookalike.pipelines.config import load_config
from lookalike.pipelines.pairwise import embed_splits, load_pairwise_config, mine_pairs, mining_split, \
    train_pairwise
from lookalike.pipelines.runs import save_config


@pytest.fixture(scope="module")
def extractor_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg, _ = load_config("default", ["image_size=32", "precision=32", "progress_bar=false",
                                     "extractor={name: small_cnn, args: {channels: [8, 16], embedding_dim: 16}}"],
                         pipeline="validate")
    torch.manual_seed(0)
    save_weights(SmallCNNExtractor((8, 16), embedding_dim=16), run / "checkpoints" / "best.ckpt")
    save_config(cfg, run / "config.yaml")
    return run


def test_mining_keeps_top_n_positives_and_the_hardest_negatives():
    # 1-D points: labels 0 0 1 1; item 0 at 0.0: neighbours 2 (0.1, label 1), 1 (0.5, label 0), 3 (0.9)
    x = torch.tensor([[1.0, 0.0], [1.0, 0.5], [1.0, 0.1], [1.0, 0.9]]).numpy()
    a, b, y = mine_pairs(x, torch.tensor([0, 0, 1, 1]).numpy(), top_n=3, n_negatives=1, distance="euclidean")
    pairs = {(int(i), int(j), int(s)) for i, j, s in zip(a, b, y)}
    assert (0, 1, 1) in pairs and (0, 2, 0) in pairs and (0, 3, 0) not in pairs  # 3 is a softer negative
    assert all(sum(1 for p in pairs if p[0] == i and p[2] == 0) == 1 for i in range(4))


def test_trains_checkpoints_resumes_and_validates_inside_the_metrics(extractor_run, tmp_path):
    config = tmp_path / "pairwise.yaml"
    config.write_text(f"extractor_run: {extractor_run}\nmax_epochs: 2\nvalid_period: 1\naccelerator: cpu\n"
                      "pairwise_model: {name: embedding_mlp, args: {hidden_dims: [16]}}\nlogger: csv\n")
    out = train_pairwise(config, [f"output_dir={tmp_path}/out", "run_name=p"])
    run = out["run_dir"]
    history = json.loads((run / "history.json").read_text())
    assert sorted(history) == ["0", "1"] and "OVERALL/cmc/1" in history["1"]["val"]
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["pairs"]["positive"] > 0 and saved["reranked"]["OVERALL"]["n_queries"] > 0
    model = load_pairwise_model(out["best_checkpoint"])
    assert model.in_features == 16
    assert out["best_score"] == max(h["val"]["OVERALL/cmc/1"] for h in history.values())
    again = train_pairwise(config, [f"output_dir={tmp_path}/out", "run_name=p", "max_epochs=3"], resume=True)
    history = json.loads((run / "history.json").read_text())
    assert sorted(history) == ["0", "1", "2"] and again["train_seconds"] >= out["train_seconds"]
    with pytest.raises(ConfigError, match="already holds a run"):
        train_pairwise(config, [f"output_dir={tmp_path}/out", "run_name=p"])


def test_config_errors_name_the_key(extractor_run, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(f"extractor_run: {tmp_path}\ntop_m: 5\nblend: 3\n")
    with pytest.raises(ConfigError) as info:
        load_pairwise_config(config)
    text = str(info.value)
    assert "top_m: unknown key (did you mean 'top_n'" in text and "blend" in text and "not a run folder" in text
    config.write_text(f"extractor_run: {extractor_run}\n"
                      "pairwise_model: {name: image_siamese, args: {freeze_trunk: false}}\n")
    with pytest.raises(ConfigError, match="frozen trunk"):
        load_pairwise_config(config)
    config.write_text(f"extractor_run: {extractor_run}\npairwise_model: image_siames\n")
    with pytest.raises(ConfigError, match="did you mean 'image_siamese'"):
        load_pairwise_config(config)
    config.write_text(f"extractor_run: {extractor_run}\n")
    with pytest.raises(CheckpointError, match="resume"):
        train_pairwise(config, [f"output_dir={tmp_path}/o2", "run_name=q"], resume=True)


def test_pairs_come_from_the_labels_the_extractor_run_held_out(extractor_run, tmp_path):
    from lookalike.pipelines.pairwise import _extractor_config

    config = tmp_path / "pairwise.yaml"
    config.write_text(f"extractor_run: {extractor_run}\naccelerator: cpu\n")
    base = _extractor_config(load_pairwise_config(config)[0])
    assert mining_split(base, "auto") == "train"  # the run held nothing out
    trained = set(embed_splits(base, 64)["train"]["labels"].tolist())
    base["holdout_labels"] = 0.3
    assert mining_split(base, "auto") == "holdout" and mining_split(base, "train") == "train"
    mined = set(embed_splits(base, 64, "auto")["train"]["labels"].tolist())
    assert mined and mined < trained and len(mined) == round(0.3 * len(trained))
    with pytest.raises(ConfigError, match="differ from the ones the extractor run recorded"):
        embed_splits(base, 64, "auto", recorded=sorted(mined)[1:] + [10_000])
    assert set(embed_splits(base, 64, "auto", recorded=sorted(mined))["train"]["labels"].tolist()) == mined
    with pytest.raises(ConfigError, match="mine_from"):
        load_pairwise_config(config, ["mine_from=test"])


def test_image_pairs_train_on_cached_trunk_maps_and_rerank_from_the_images(extractor_run, tmp_path):
    from lookalike.models import SmallCNNExtractor as Net
    from lookalike.models.pairwise import ImagePairClassifier

    config = tmp_path / "pairwise.yaml"
    config.write_text(f"extractor_run: {extractor_run}\nmax_epochs: 2\nvalid_period: 2\naccelerator: cpu\n"
                      "pairwise_model: {name: image_siamese, args: {channels: 8, hidden_dims: [16]}}\n"
                      "top_n: 5\nlogger: null\n")
    out = train_pairwise(config, [f"output_dir={tmp_path}/out", "run_name=img"])
    saved = json.loads((out["run_dir"] / "metrics.json").read_text())
    assert saved["pairs"]["positive"] > 0 and saved["reranked"]["OVERALL"]["n_queries"] > 0
    model = load_pairwise_model(out["best_checkpoint"], extractor=Net((8, 16), embedding_dim=16))
    assert isinstance(model, ImagePairClassifier)
    # the trunk was frozen: the saved trunk equals the extractor run's weights
    trained = torch.load(extractor_run / "checkpoints" / "best.ckpt", weights_only=True)
    first = next(k for k in trained if k.endswith("weight"))
    assert torch.equal(model.trunk.state_dict()[first.split(".", 1)[1]], trained[first])
