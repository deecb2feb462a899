"""`lookalike export <run folder>` and `lookalike predict ... runtime=onnx` on a run folder made by hand (the
resolved config and a Lightning-style checkpoint of a tiny CNN, on the built-in example data)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from lookalike.cli import main
from lookalike.models import SmallCNNExtractor
from lookalike.pipelines import predict
from lookalike.pipelines.config import resolve_config
from lookalike.pipelines.runs import save_config
from lookalike.store import EmbeddingsStore

EXTRACTOR = {"name": "small_cnn", "args": {"channels": [8, 16], "embedding_dim": 8}}


def make_run(folder, checkpoint: bool = True):
    cfg = resolve_config({"extractor": EXTRACTOR, "image_size": 32, "accelerator": "cpu", "progress_bar": False,
                          "output_dir": str(folder.parent)})
    folder.mkdir(parents=True)
    save_config(cfg, folder / "config.yaml")
    if checkpoint:
        torch.manual_seed(3)
        state = SmallCNNExtractor((8, 16), embedding_dim=8).state_dict()
        (folder / "checkpoints").mkdir()
        torch.save({"state_dict": {f"extractor.{k}": v for k, v in state.items()}}, folder / "checkpoints" / "best.ckpt")
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = make_run(tmp_path_factory.mktemp("runs") / "r1")
    assert main(["export", str(folder), "samples=16"]) == 0
    return folder


def test_export_a_run_folder_writes_beside_the_run(run, capsys):
    files = sorted(p.name for p in (run / "export").iterdir())
    assert files == ["model.json", "model.onnx", "model.parity.json"]
    meta = json.loads((run / "export" / "model.json").read_text())
    assert meta["image_size"] == 32 and meta["source"]["checkpoint"].endswith("best.ckpt")
    assert meta["source"]["checkpoint_sha256"] and meta["source"]["extractor"]["name"] == "small_cnn"
    report = json.loads((run / "export" / "model.parity.json").read_text())
    assert report["passed"] and report["n_images"] == 16 and "validation" in report["source"]


def test_predict_with_the_onnx_runtime_matches_torch(run, tmp_path):
    source = ["predict_source=" + str(tmp_path / "imgs")]
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    by_torch = EmbeddingsStore.load(predict(run, [*source, "output_dir=" + str(tmp_path / "t"), "run_name=t"]))
    by_onnx = EmbeddingsStore.load(predict(run, [*source, "runtime=onnx", "output_dir=" + str(tmp_path / "o"),
                                                 "run_name=o"]))
    np.testing.assert_allclose(by_onnx.embeddings, by_torch.embeddings, atol=1e-5)
    identity = by_onnx.header["extractor"]
    assert identity["runtime"] == "onnx" and len(identity["onnx_sha256"]) == 64
    assert identity["checkpoint_sha256"] == by_torch.header["extractor"]["checkpoint_sha256"]


def test_an_index_built_and_opened_with_the_onnx_runtime_searches_like_torch(run, tmp_path):
    from PIL import Image

    from lookalike.pipelines.indexing import index, open_index

    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    src = f"source={tmp_path / 'imgs'}"
    by_torch = open_index(index(run, [src, f"index_dir={tmp_path / 't'}"]))
    folder = index(run, [src, "runtime=onnx", f"index_dir={tmp_path / 'o'}"])
    info = json.loads((folder / "index.json").read_text())
    assert info["model"]["runtime"] == "onnx" and len(info["model"]["onnx_sha256"]) == 64
    by_onnx = open_index(folder)
    query = [Image.open(tmp_path / "imgs" / "3.png")]
    assert [h.id for h in by_onnx.search(query, top_k=3)[0]] == [h.id for h in by_torch.search(query, top_k=3)[0]]
    np.testing.assert_allclose(by_onnx.embeddings, by_torch.embeddings, atol=1e-5)


def _error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_bad_inputs_give_one_clear_message(run, tmp_path, capsys):
    bare = make_run(tmp_path / "bare", checkpoint=False)
    assert "has no checkpoints/best.ckpt" in _error(capsys, "export", str(bare))
    (tmp_path / "file").write_text("x")
    assert "cannot create the folder" in _error(capsys, "export", str(run), f"out={tmp_path / 'file' / 'm.onnx'}")
    assert "unknown export format 'tensorrt'" in _error(capsys, "export", str(run), "format=tensorrt")
    assert "opset='x': expected an integer" in _error(capsys, "export", str(run), "opset=x")
    assert "onnx_model:" in _error(capsys, "predict", str(bare), "runtime=onnx")
    assert not (bare / "export").exists()


def test_missing_onnxruntime_is_one_line(run, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    err = _error(capsys, "export", str(run), "out=" + str(run / "again.onnx"))
    assert err == 'error: ONNX export needs \'onnxruntime\', which is not installed: pip install "lookalike[onnx]"\n'
