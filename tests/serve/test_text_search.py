"""The service over an index of texts: POST /search with a JSON or form `text`, adds and deletes of text items,
the web page's text box, and every bad text answered with a 4xx JSON error (TestClient, in process)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.serve.conftest import image_bytes, noise_image
from tests.texts_support import concept_rows, make_tiny_text_model, write_text_dataset

pytest.importorskip("transformers")
pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def text_index_dir(tmp_path_factory) -> Path:
    import torch

    from lookalike.pipelines.indexing import index

    root = tmp_path_factory.mktemp("text_serve")
    model = make_tiny_text_model(root / "model")
    data = write_text_dataset(root / "data", concept_rows(per_label_train=2, per_label_val=2))
    torch.manual_seed(0)  # the tiny model as built is the model (checkpoint null): its weights go into the index
    extractor = f"{{name: text_transformer, args: {{model_path: {model}, embedding_dim: 16, max_length: 16}}}}"
    with pytest.warns(UserWarning, match="checkpoint is null"):
        return index("texts", [f"extractor={extractor}", f"dataset_root={data}", "accelerator=cpu",
                               "progress_bar=false", f"index_dir={root / 'ix'}"])


@pytest.fixture
def client(text_index_dir, tmp_path):
    from fastapi.testclient import TestClient

    from lookalike.pipelines.indexing import open_index
    from lookalike.serve import create_app

    folder = Path(shutil.copytree(text_index_dir, tmp_path / "ix"))
    with TestClient(create_app(open_index(folder), max_text_chars=100)) as client:
        yield client


def first_text(text_index_dir) -> str:
    return pd.read_csv(text_index_dir.parent / "data" / "df.csv")["text"].iloc[5]  # id "5": its row number


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]
    return body["error"]


def test_health_says_the_index_holds_texts(client):
    body = client.get("/health").json()
    assert body["holds_texts"] is True and body["items"] == 32
    assert body["limits"]["max_text_chars"] == 100


@pytest.mark.parametrize("how", ["json", "form", "multipart"])
def test_search_by_text_finds_the_indexed_text_first(client, text_index_dir, how):
    query = first_text(text_index_dir)
    if how == "json":
        response = client.post("/search", json={"text": query, "top_k": 3})
    elif how == "form":
        response = client.post("/search", data={"text": query, "top_k": "3"})
    else:
        response = client.post("/search", files={"text": (None, query), "top_k": (None, "3")})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3
    assert results[0]["text"] == query and results[0]["id"] == "5" and results[0]["image"] is None
    assert results[0]["distance"] == pytest.approx(0.0, abs=1e-5)
    assert [r["distance"] for r in results] == sorted(r["distance"] for r in results)


def test_bad_texts_are_4xx_with_a_message(client):
    assert "empty" in error_of(client.post("/search", json={"text": "   "}), 422)
    assert "missing" in error_of(client.post("/search", json={"top_k": 3}), 422)
    assert "string" in error_of(client.post("/search", json={"text": 7}), 422)
    assert "limit of 100" in error_of(client.post("/search", json={"text": "dog " * 30}), 413)
    assert "not valid JSON" in error_of(client.post("/search", content=b"{text",
                                                    headers={"content-type": "application/json"}), 400)
    assert "top_k" in error_of(client.post("/search", json={"text": "dog", "top_k": 0}), 422)
    image = image_bytes(noise_image())
    assert "holds texts" in error_of(client.post("/search", files={"file": ("q.png", image, "image/png")}), 415)


def test_add_search_and_delete_a_text_item(client):
    response = client.post("/items", json={"text": "hello world dog", "id": "greeting", "source": "test"})
    assert response.status_code == 201, response.text
    assert client.get("/items/greeting").json() == {"id": "greeting", "text": "hello world dog", "source": "test",
                                                    "image": None}
    hits = client.post("/search", json={"text": "hello world dog", "top_k": 1}).json()["results"]
    assert hits[0]["id"] == "greeting"
    assert "item 'greeting' has no image file" in error_of(client.get("/items/greeting/image"), 404)
    assert client.delete("/items/greeting").json()["deleted"] is True
    assert "empty" in error_of(client.post("/items", json={"text": ""}), 422)


def test_the_page_has_a_text_box_for_an_index_of_texts(client):
    page = client.get("/").text
    assert 'id="text-query"' in page and "useTextMode" in page and "h.holds_texts" in page


def test_an_image_index_refuses_a_text_search(make_client):
    client = make_client()
    assert "multipart/form-data" in error_of(client.post("/search", json={"text": "dog"}), 400)
