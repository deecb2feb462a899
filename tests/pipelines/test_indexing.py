"""`lookalike index`, `search`, `dedup` and `export-index` end to end on the built-in data with a random-init
small CNN at 32 px (its weights are kept in the index folder), and `open_index`'s model checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lookalike.cli import main
from lookalike.data import example_dataset_root
from lookalike.index import ModelChangedError, SearchIndex
from lookalike.pipelines.indexing import open_index

DATA = Path(example_dataset_root())
MODEL = ["extractor={name: small_cnn, args: {channels: [16, 32, 64], embedding_dim: 32}}", "image_size=32",
         "accelerator=cpu", "progress_bar=false", "bs_val=256"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """An exact index of the whole built-in CSV (770 images)."""
    out = tmp_path_factory.mktemp("built")
    torch.manual_seed(0)
    assert main(["index", "default", *MODEL, f"index_dir={out / 'ix'}", f"output_dir={out}"]) == 0
    return out / "ix"


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    """12 different emojis (one style), a byte copy of the first and a resized copy of the fourth."""
    folder = tmp_path_factory.mktemp("planted")
    table = pd.read_csv(DATA / "df.csv")
    paths = table[table["style"] == "google"].drop_duplicates("label")["path"].tolist()[:12]
    for k, p in enumerate(paths):
        shutil.copy(DATA / p, folder / f"e{k:02d}.png")
    shutil.copy(folder / "e00.png", folder / "z_copy_of_e00.png")
    Image.open(folder / "e03.png").convert("RGB").resize((56, 56), Image.BILINEAR).save(folder / "z_small_e03.png")
    return folder


def test_index_writes_the_model_identity_and_manifest(built, capsys):
    info = json.loads((built / "index.json").read_text())
    model = info["model"]
    assert info["count"] == 770 and info["backend"] == "exact" and info["distance"] == "cosine" and info["created"]
    assert model["extractor"]["name"] == "small_cnn" and model["image_size"] == 32
    assert model["transforms"] == {"name": "val", "args": {}}
    weights = built / model["checkpoint"]  # an extractor used as built: its weights are kept in the index
    assert weights.is_file() and len(model["checkpoint_sha256"]) == 64
    index = SearchIndex.load(built)
    table = pd.read_csv(DATA / "df.csv")
    assert index.ids == table["path"].tolist()  # the ids are the paths as written in the CSV
    assert set(table.columns) <= set(index.manifest.columns)
    assert index.get("images/google/1f602.png")["unicode"] == "1F602"
    assert index.image_path("images/google/1f602.png") == (DATA / "images/google/1f602.png").resolve()


def test_search_from_the_command_line(built, capsys):
    query = DATA / "images/twitter/1f602.png"
    assert main(["search", str(built), str(query), "top_k=3", "format=json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 1 and len(results[0]["results"]) == 3
    first = results[0]["results"][0]
    assert first["id"] == "images/twitter/1f602.png" and first["distance"] < 1e-5 and first["label"] == 0
    # the same answer as searching the index with the embedder in Python
    index = open_index(built)
    hits = index.search([Image.open(query)], top_k=3)[0]
    assert [h.id for h in hits] == [r["id"] for r in results[0]["results"]]
    folder = DATA / "images/fluent"
    assert main(["search", str(built), str(folder), "top_k=2", "format=csv"]) == 0
    table = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert len(table) == 2 * len(list(folder.iterdir())) and list(table.columns[:5]) == ["query", "rank", "distance",
                                                                                         "id", "path"]
    assert (table[table["rank"] == 1]["query"].str[-12:] == table[table["rank"] == 1]["id"].str[-12:]).mean() > 0.95
    assert main(["search", str(built), str(query)]) == 0
    assert "query " in capsys.readouterr().out
    assert main(["search", str(built), str(query), "top_k=0"]) == 2
    assert "top_k must be a positive integer" in capsys.readouterr().err
    assert main(["search", str(built), "nowhere.png"]) == 2
    assert "neither an image file nor a folder" in capsys.readouterr().err


def test_a_changed_or_missing_model_file_is_refused(built, tmp_path, capsys):
    copy = tmp_path / "ix"
    shutil.copytree(built, copy)
    weights = copy / json.loads((copy / "index.json").read_text())["model"]["checkpoint"]
    with open(weights, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelChangedError, match="changed since the index was built"):
        open_index(copy)
    weights.unlink()
    assert main(["search", str(copy), str(DATA / "images/google/1f602.png")]) == 2
    assert "which no longer exist" in capsys.readouterr().err
    assert len(SearchIndex.load(copy)) == 770  # the embeddings themselves are still readable


def test_duplicate_ids_are_refused_with_their_rows(tmp_path, capsys):
    table = pd.read_csv(DATA / "df.csv").head(6)
    table["path"] = [str(DATA / p) for p in table["path"]]
    table["id"] = ["a", "b", "a", "c", "d", "c"]
    table.to_csv(tmp_path / "items.csv", index=False)
    assert main(["index", "default", *MODEL, f"source={tmp_path / 'items.csv'}", f"index_dir={tmp_path / 'ix'}"]) == 2
    err = capsys.readouterr().err
    assert "2 id(s) occur more than once ('a' in rows 0, 2; 'c' in rows 3, 5" in err
    assert not (tmp_path / "ix" / "index.json").exists()


def test_faiss_backend_from_the_command_line_reports_its_recall(tmp_path, capsys):
    torch.manual_seed(0)
    assert main(["index", "default", *MODEL, f"index_dir={tmp_path / 'ix'}", "backend=faiss_hnsw",
                 "backend_args={M: 16, efSearch: 64}"]) == 0
    out = capsys.readouterr().out
    info = json.loads((tmp_path / "ix/index.json").read_text())
    assert info["backend_args"] == {"M": 16, "efSearch": 64} and 0 < info["recall"]["recall"] <= 1
    assert f"faiss_hnsw recall@10 against exact search on 770 indexed items: {info['recall']['recall']:.4f}" in out
    assert (tmp_path / "ix/gen-000001/faiss.index").is_file()
    assert main(["index", "default", *MODEL, f"index_dir={tmp_path / 'iy'}", "backend=hnsw"]) == 2
    assert "unknown index backend 'hnsw'" in capsys.readouterr().err


def test_dedup_groups_planted_copies_with_their_originals(built, planted, tmp_path, capsys):
    index = open_index(built)
    embedded = index.embedder.embed_source(planted)
    names = [Path(p).name for p in image_source_paths(planted)]
    e = embedded.embeddings.astype(np.float64)  # the float64 distances the search reports (float32 is too coarse)
    x = e / np.linalg.norm(e, axis=1, keepdims=True)
    d = 1.0 - x @ x.T
    pairs = {(names.index("e00.png"), names.index("z_copy_of_e00.png")),
             (names.index("e03.png"), names.index("z_small_e03.png"))}
    planted_max = max(d[a, b] for a, b in pairs)
    others = [d[a, b] for a in range(len(names)) for b in range(a + 1, len(names)) if (a, b) not in pairs]
    assert planted_max < min(others)  # the model tells copies from different emojis on this set
    threshold = float(np.sqrt(max(planted_max, 1e-12) * min(others)))
    assert main(["dedup", str(built), f"source={planted}", f"threshold={threshold}", f"out={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert f"threshold {threshold:.6g}: given on the command line" in out
    table = pd.read_csv(tmp_path / "duplicates.csv")
    assert list(table.columns) == ["group", "id", "path", "distance"]
    groups = sorted(sorted(g["id"]) for _, g in table.groupby("group"))
    assert groups == [["e00.png", "z_copy_of_e00.png"], ["e03.png", "z_small_e03.png"]]
    assert table.groupby("group")["distance"].first().eq(0).all()  # the first item of each group: itself
    assert (tmp_path / "duplicates.png").stat().st_size > 1000
    # a threshold above every distance makes one group of all (transitively)
    assert main(["dedup", str(built), f"source={planted}", "threshold=2.5", f"out={tmp_path / 'all'}"]) == 0
    assert pd.read_csv(tmp_path / "all/duplicates.csv")["group"].eq(0).sum() == len(names)


def image_source_paths(folder: Path) -> list[str]:
    from lookalike.inference import image_source

    return image_source(folder).table["path"].tolist()


def test_dedup_threshold_from_a_false_match_rate(built, planted, tmp_path, capsys):
    """fmr=F: the threshold is the F-quantile of the validation split's negative-pair distances (brute force)."""
    assert main(["dedup", str(built), f"source={planted}", "fmr=0.01", f"out={tmp_path}"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("threshold"))
    assert "the cosine distance at which FMR = 0.01 on the validation split of" in line
    printed = float(line.split()[1].rstrip(":"))
    from lookalike.pipelines import loading

    table = loading.load_table({"dataset_root": None, "csv": "df.csv", "check_images": "none"})
    val = table[table["split"] == "validation"].reset_index(drop=True)
    from lookalike.inference import image_source

    emb = open_index(built).embedder.embed_source(image_source(val, root=DATA)).embeddings.astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    d = 1.0 - emb @ emb.T
    labels = val["label"].to_numpy()
    negative = (labels[:, None] != labels[None, :]) & val["is_query"].to_numpy()[:, None] & \
        val["is_gallery"].to_numpy()[None, :]
    assert printed == pytest.approx(float(np.quantile(d[negative], 0.01)), rel=1e-4, abs=1e-7)
    assert (tmp_path / "duplicates.csv").is_file()
    assert main(["dedup", str(built), f"source={planted}"]) == 2
    assert "give exactly one of threshold=D" in capsys.readouterr().err


def test_export_to_parquet_round_trip(built, tmp_path, capsys):
    import pyarrow.parquet as pq

    from lookalike.index.export import read_parquet

    copy = tmp_path / "ix"
    shutil.copytree(built, copy)
    index = SearchIndex.load(copy)
    index.add(["new"], np.ones((1, index.dim), np.float32), [{"path": "/elsewhere/new.png", "label": 999}])
    index.remove(["images/google/1f602.png"])
    assert main(["export-index", str(copy), f"out={tmp_path / 'items.parquet'}"]) == 0
    assert "770 items (dimension 32)" in capsys.readouterr().out
    schema = pq.read_schema(tmp_path / "items.parquet")
    kind = schema.field("embedding").type
    assert schema.names[:2] == ["id", "embedding"] and kind.list_size == 32 and str(kind.value_type) == "float"
    vectors, manifest, info = read_parquet(tmp_path / "items.parquet")
    again = SearchIndex.load(copy)
    np.testing.assert_array_equal(vectors, again.embeddings)
    assert manifest["id"].tolist() == again.ids and manifest["id"].iloc[-1] == "new"
    assert manifest["label"].iloc[-1] == 999 and manifest["style"].iloc[0] == again.manifest["style"].iloc[0]
    assert info["backend"] == "exact" and info["model"]["extractor"]["name"] == "small_cnn"
    assert main(["export-index", str(copy), "out=x.csv"]) == 2
    assert "should end in .parquet" in capsys.readouterr().err
