"""Texts through the same pipelines: train (with the worst-query picture drawn as text), validate, predict,
index, search (Python and CLI), and the image-only commands refusing a text run with one message."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.texts_support import concept_rows, make_tiny_text_model, write_text_dataset

pytest.importorskip("transformers")

from lookalike.cli import main  # noqa: E402
from lookalike.errors import ConfigError  # noqa: E402
from lookalike.pipelines import predict, train, validate  # noqa: E402


def text_overrides(model: Path, data: Path, out: Path, **extra) -> list[str]:
    values = {
        "dataset_root": str(data), "output_dir": str(out),
        "extractor": f"{{name: text_transformer, args: {{model_path: {model}, embedding_dim: 16, max_length: 16}}}}",
        "sampler": "{name: balance, args: {n_labels: 8, n_instances: 8}}",
        "optimizer": "{name: adamw, args: {lr: 1.0e-3}}", "scheduler": "null",
        "max_epochs": 2, "max_minutes": "null", "valid_period": 1, "progress_bar": "false", "logger": "null",
        "accelerator": "cpu", "precision": 32, "bs_val": 64,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("texts")
    model = make_tiny_text_model(root / "model")
    data = write_text_dataset(root / "data", concept_rows())
    result = train("texts", text_overrides(model, data, root / "runs", run_name="t"))
    return {"root": root, "model": model, "data": data, "result": result}


def test_train_texts_config_runs_and_draws_texts(text_run):
    result = text_run["result"]
    run = Path(result["run_dir"])
    assert result["initial_metrics"] is not None and result["best_checkpoint"].is_file()
    assert 0.0 <= result["metrics_flat"]["OVERALL/cmc/1"] <= 1.0
    assert result["metrics_flat"]["OVERALL/n_queries"] == 48
    assert (run / "images" / "epoch_002.png").stat().st_size > 1000  # the worst queries, drawn as texts
    assert "text_transformer" in (run / "config.yaml").read_text()


def test_validate_a_text_run_equals_its_last_validation(text_run):
    run = Path(text_run["result"]["run_dir"])
    best = validate(run, ["progress_bar=false", f"checkpoint={text_run['result']['best_checkpoint']}"])
    assert best["metrics_flat"]["OVERALL/cmc/1"] == pytest.approx(text_run["result"]["best_score"], abs=1e-6)


def test_predict_index_and_search_texts(text_run, tmp_path, capsys):
    run = Path(text_run["result"]["run_dir"])
    queries = tmp_path / "queries.csv"
    pd.DataFrame({"id": ["q1", "q2", "q3"], "text": ["w0x0 f1", "w3x1 f2 f3", " "]}).to_csv(queries, index=False)
    with pytest.warns(UserWarning, match=r"1 of 3 text\(s\) could not be read"):
        out = predict(run, [f"predict_source={queries}", "progress_bar=false"])
    manifest = pd.read_csv(out / "manifest.csv")
    assert manifest["text"].tolist() == ["w0x0 f1", "w3x1 f2 f3"] and manifest["id"].tolist() == ["q1", "q2"]
    assert "empty text" in (out / "failed.csv").read_text()

    from lookalike.pipelines.indexing import open_index

    assert main(["index", str(run), f"index_dir={tmp_path / 'ix'}", "progress_bar=false"]) == 0
    index = open_index(tmp_path / "ix")
    assert index.holds_texts and len(index) == 144
    row = pd.read_csv(text_run["data"] / "df.csv").iloc[100]
    hits = index.search([row["text"]], top_k=3)[0]
    assert hits[0].distance == pytest.approx(0.0, abs=1e-5) and hits[0].row["text"] == row["text"]
    assert hits[0].id == "100"  # ids of a CSV without an id column: the row numbers
    with pytest.raises(Exception, match="holds texts"):
        from PIL import Image

        index.search([Image.new("RGB", (8, 8))])

    capsys.readouterr()
    assert main(["search", str(tmp_path / "ix"), row["text"], "top_k=2", "format=json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found[0]["query"] == row["text"] and found[0]["results"][0]["text"] == row["text"]


def test_the_default_dataset_of_a_text_extractor_is_the_emoji_texts():
    from lookalike.pipelines.config import load_config
    from lookalike.pipelines.loading import dataset_root

    cfg, _ = load_config("texts", [], pipeline="train")
    assert dataset_root(cfg).name == "emoji_texts" and (dataset_root(cfg) / "df.csv").is_file()


@pytest.mark.parametrize("command", [["export"], ["train-pairwise"]])
def test_image_only_commands_refuse_a_text_run(text_run, command, tmp_path, capsys):
    run = Path(text_run["result"]["run_dir"])
    if command == ["train-pairwise"]:
        cfg = tmp_path / "p.yaml"
        cfg.write_text(f"extractor_run: {run}\n")
        args = ["train-pairwise", str(cfg), f"output_dir={tmp_path}"]
    else:
        args = ["export", str(run)]
    assert main(args) == 2
    assert "works on images only" in capsys.readouterr().err


def test_a_text_run_rejects_an_image_csv(text_run, tmp_path):
    from tests.conftest import good_rows, write_dataset

    data = write_dataset(tmp_path / "images", good_rows())
    with pytest.raises(Exception, match="lacks the required column.s. text"):
        train("texts", text_overrides(text_run["model"], data, tmp_path / "runs"))


def test_the_shipped_texts_config_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="max_lenght"):
        train("texts", ["extractor.args.max_lenght=8", f"output_dir={tmp_path}"])


def test_the_items_of_a_text_source_are_its_texts_even_beside_a_path_column():
    # texts that describe pictures may come with their paths: the text is still the item (manifest, failed.csv)
    import pandas as pd

    from lookalike.inference import image_source, text_source
    from lookalike.pipelines.prediction import content_column, manifest_of

    table = pd.DataFrame({"text": ["red heart", "dog face"], "path": ["heart.png", "dog.png"]})
    texts = text_source(table)
    assert content_column(texts) == "text"
    manifest = manifest_of(texts, [1])
    assert list(manifest.columns) == ["id", "text", "path"] and manifest["text"].tolist() == ["dog face"]
    assert content_column(image_source(table, root=".")) == "path"
