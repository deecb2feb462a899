"""The service's endpoints against the index they serve, and every error they answer (TestClient, in process)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import image_bytes, noise_image

ITEM = "images/google/1f602.png"  # an id of the built-in data (ids are the paths as the CSV writes them)
N_ITEMS = 770  # rows of lookalike/assets/emoji_mini/df.csv


def indexed_file(index, item_id: str = ITEM) -> bytes:
    return Path(index.image_path(item_id)).read_bytes()


def search(client, data: bytes, name: str = "query.png", content_type: str = "image/png", **fields):
    return client.post("/search", files={"file": (name, data, content_type)},
                       data={k: str(v) for k, v in fields.items()})


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"], body
    assert "Traceback" not in body["error"]
    return body["error"]


def test_health_reports_the_index(client, index):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["items"] == len(index) == N_ITEMS
    assert body["dim"] == index.dim == 32
    model = body["model"]
    assert model["extractor"]["name"] == "small_cnn" and model["image_size"] == 32 and model["distance"] == "cosine"
    assert model["checkpoint_sha256"] == index.info["model"]["checkpoint_sha256"] and model["backend"] == "exact"
    assert "config" not in model  # the summary, not the whole config
    assert body["writes_need_token"] is False
    assert body["limits"]["max_upload_mb"] == 10


def test_search_by_an_indexed_image_finds_it_first_and_equals_the_index(client, index):
    response = search(client, indexed_file(index), top_k=7)
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert len(results) == 7 and body["took_ms"] > 0
    assert results[0]["id"] == ITEM and abs(results[0]["distance"]) < 1e-5
    reference = index.search([Image.open(index.image_path(ITEM))], top_k=7)[0]
    assert [r["id"] for r in results] == [h.id for h in reference]
    np.testing.assert_allclose([r["distance"] for r in results], [h.distance for h in reference], atol=1e-6)
    first = results[0]
    row = index.get(ITEM)
    assert first["path"] == row["path"] and first["label"] == row["label"] == 0
    assert first["style"] == "google" and first["category"] == "Smileys & Emotion"
    assert first["image"] == f"/items/{ITEM}/image"
    assert len(search(client, indexed_file(index)).json()["results"]) == 5  # the default top_k


def test_search_trusts_the_bytes_not_the_name_or_content_type(client, index):
    data = image_bytes(Image.open(index.image_path(ITEM)).convert("RGB"), "JPEG")
    response = search(client, data, name="notes.txt", content_type="text/plain")
    assert response.status_code == 200 and response.json()["results"][0]["id"] == ITEM


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP"])
def test_every_allowed_format_is_searchable(client, fmt):
    response = search(client, image_bytes(noise_image(), fmt), name=f"q.{fmt.lower()}")
    assert response.status_code == 200, response.text


def test_bad_uploads_are_4xx_with_a_message(client, index):
    assert "empty" in error_of(search(client, b""), 400)
    assert "not an image" in error_of(search(client, b"hello, I am text", name="x.png"), 415)
    ppm = image_bytes(noise_image(), "PPM")  # Pillow reads it, the server does not allow it
    assert "PNG, JPEG, WEBP, GIF, BMP or TIFF" in error_of(search(client, ppm, name="x.png"), 415)
    png = indexed_file(index)
    assert "truncated or damaged" in error_of(search(client, png[: len(png) // 2]), 400)
    assert "'file'" in error_of(client.post("/search", data={"top_k": "3"}), 400)
    assert "file is missing" in error_of(client.post("/search", files={"other": ("a.png", png)}), 422)
    assert "must be a file" in error_of(client.post("/search", files={"file": (None, "text")}), 422)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height in its header and holds no pixel data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_images_over_the_pixel_limit_are_refused_from_their_header(make_client):
    client = make_client(max_pixels=10_000)
    # 100 x 200 declared, no pixels behind it: a decoder would fail (400); 413 shows the header was checked first
    assert "100 x 200 = 20,000 pixels" in error_of(search(client, _png_header(100, 200)), 413)
    # refused from the header either by Pillow's own bomb check or by ours (Pillow's limit is process-wide and
    # may have been raised by a dataset with a larger max_pixels)
    bomb = error_of(search(client, _png_header(100_000, 100_000)), 413)
    assert "decompression-bomb" in bomb or "100000 x 100000" in bomb
    assert search(client, image_bytes(noise_image((100, 100)))).status_code == 200  # 10,000 is allowed


def _multipart(data: bytes, boundary: str = "b0undary") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()


def test_uploads_over_the_size_limit_are_refused_while_reading(make_client):
    client = make_client(max_upload_mb=0.05)  # 52,428 bytes
    big = image_bytes(noise_image((200, 200)))  # about 120 kB of noise
    assert len(big) > 0.05 * 2**20
    assert "0.05 MB" in error_of(search(client, big), 413)  # declared Content-Length
    received = []

    def chunks():  # no Content-Length: the body is counted as it streams in
        body = _multipart(big)
        for i in range(0, len(body), 8192):
            received.append(i)
            yield body[i:i + 8192]

    response = client.post("/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b0undary"})
    assert "0.05 MB" in error_of(response, 413)
    medium = image_bytes(noise_image((140, 140)))  # over the file limit, under the body limit + form slack
    assert 0.05 * 2**20 < len(medium) < 0.05 * 2**20 + 64 * 1024
    assert "uploaded file is larger" in error_of(search(client, medium), 413)
    small = image_bytes(noise_image((60, 60)))
    assert search(client, small).status_code == 200


@pytest.mark.parametrize("top_k", ["0", "-1", "1001", "five", "2.5"])
def test_bad_top_k_is_422(client, index, top_k):
    assert "top_k must be a whole number from 1 to 1000" in error_of(search(client, indexed_file(index), top_k=top_k), 422)
    assert "top_k must be a whole number from 1 to 1000" in error_of(
        client.get(f"/items/{ITEM}/similar", params={"top_k": top_k}), 422)


def test_item_row_image_and_similar(client, index):
    body = client.get(f"/items/{ITEM}").json()
    row = index.get(ITEM)
    assert body == {**row, "image": f"/items/{ITEM}/image"}
    image = client.get(f"/items/{ITEM}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == indexed_file(index)
    similar = client.get(f"/items/{ITEM}/similar", params={"top_k": 4}).json()["results"]
    assert [r["id"] for r in similar] == [h.id for h in index.similar(ITEM, top_k=4)]
    assert ITEM not in [r["id"] for r in similar] and len(similar) == 4


def test_unknown_ids_and_routes_are_404(client):
    for response in (client.get("/items/nope.png"), client.get("/items/nope.png/image"),
                     client.get("/items/nope.png/similar"), client.delete("/items/nope.png")):
        assert "nope.png" in error_of(response, 404)
    assert "the endpoints are" in error_of(client.get("/nowhere"), 404)
    assert "not allowed" in error_of(client.put("/search"), 405)


def test_an_item_whose_file_vanished_is_404_not_500(client, index):
    added = client.post("/items", files={"file": ("a.png", image_bytes(noise_image(seed=5)))}).json()["id"]
    Path(index.image_path(added)).unlink()
    assert "missing on the server" in error_of(client.get(f"/items/{added}/image"), 404)


def test_add_stores_the_upload_under_a_generated_name_and_search_finds_it(client, index, index_dir, tmp_path):
    new = noise_image((50, 50), seed=3)
    response = client.post("/items", files={"file": ("../../evil.png", image_bytes(new), "image/png")},
                           data={"label": "999", "style": "mine"})
    assert response.status_code == 201, response.text
    new_id = response.json()["id"]
    assert new_id.startswith("upload-") and response.headers["location"] == f"/items/{new_id}"
    assert not (tmp_path / "evil.png").exists() and not (index_dir.parent / "evil.png").exists()
    stored = Path(index.image_path(new_id))
    assert stored.parent == index_dir / "uploads" and stored.suffix == ".png" and "evil" not in stored.name
    assert stored.read_bytes() == image_bytes(new)
    row = client.get(f"/items/{new_id}").json()
    assert row["label"] == "999" and row["style"] == "mine" and row["path"] == f"uploads/{stored.name}"
    assert client.get("/health").json()["items"] == N_ITEMS + 1
    first = search(client, image_bytes(new)).json()["results"][0]
    assert first["id"] == new_id and abs(first["distance"]) < 1e-5
    assert client.get(f"/items/{new_id}/image").content == image_bytes(new)


def test_add_with_an_id_refuses_duplicates_and_reserved_fields(client):
    data = image_bytes(noise_image(seed=4))
    assert client.post("/items", files={"file": ("a.png", data)}, data={"id": "mine-1"}).json() == {"id": "mine-1"}
    assert "exists already" in error_of(client.post("/items", files={"file": ("a.png", data)}, data={"id": "mine-1"}), 409)
    assert "exists already" in error_of(client.post("/items", files={"file": ("a.png", data)}, data={"id": ITEM}), 409)
    assert "'path' cannot be set" in error_of(
        client.post("/items", files={"file": ("a.png", data)}, data={"path": "/etc/passwd"}), 422)
    assert "not an image" in error_of(client.post("/items", files={"file": ("a.png", b"%PDF-1.4")}), 415)


def test_delete_removes_the_item_and_its_uploaded_file(client, index):
    new_id = client.post("/items", files={"file": ("a.png", image_bytes(noise_image(seed=6)))}).json()["id"]
    stored = Path(index.image_path(new_id))
    assert client.delete(f"/items/{new_id}").json() == {"id": new_id, "deleted": True, "items": N_ITEMS}
    assert not stored.exists()
    error_of(client.get(f"/items/{new_id}"), 404)
    original = Path(index.image_path(ITEM))
    assert client.delete(f"/items/{ITEM}").status_code == 200
    assert original.exists()  # files the index was built from are never deleted
    assert ITEM not in [r["id"] for r in search(client, original.read_bytes(), top_k=10).json()["results"]]


def test_changes_are_in_the_folder_when_acknowledged(client, index_dir, built_index):
    from lookalike.index import SearchIndex

    new_id = client.post("/items", files={"file": ("a.png", image_bytes(noise_image(seed=7)))},
                         data={"style": "added"}).json()["id"]
    assert client.delete(f"/items/{ITEM}").status_code == 200
    reopened = SearchIndex.load(index_dir)  # what a restarted server would see
    assert reopened.get(new_id)["style"] == "added" and ITEM not in reopened and len(reopened) == N_ITEMS


def test_a_token_guards_the_writes_only(make_client, index):
    client = make_client(token="s3cret")
    assert client.get("/health").json()["writes_need_token"] is True
    data = image_bytes(noise_image(seed=8))
    assert "Authorization: Bearer" in error_of(client.post("/items", files={"file": ("a.png", data)}), 401)
    assert error_of(client.post("/items", files={"file": ("a.png", data)},
                                headers={"Authorization": "Bearer wrong"}), 401)
    assert error_of(client.delete(f"/items/{ITEM}"), 401)
    assert ITEM in index and len(index) == N_ITEMS
    ok = client.post("/items", files={"file": ("a.png", data)}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 201
    assert client.delete(f"/items/{ITEM}", headers={"authorization": "bearer s3cret"}).status_code == 200
    assert search(client, indexed_file(index, "images/twitter/1f602.png")).status_code == 200  # reads stay open


def test_an_unexpected_failure_is_a_json_500_without_traceback(make_client, index, monkeypatch):
    client = make_client(raise_server_exceptions=False)

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(index, "similar", broken)
    message = error_of(client.get(f"/items/{ITEM}/similar"), 500)
    assert "RuntimeError" in message and "disk on fire" not in message and "server log" in message


def test_the_page_is_self_contained(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "<script>" in html and "<style>" in html and "/search" in html
    for external in ("src=\"http", "href=\"http", "src=\"//", "href=\"//", "@import", "cdn"):
        assert external not in html.lower()
