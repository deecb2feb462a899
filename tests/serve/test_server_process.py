"""`lookalike serve` as a real process: acknowledged changes survive SIGKILL, options are checked, the token
comes from the environment."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from lookalike.cli import main
from tests.serve.conftest import image_bytes, noise_image
from tests.serve.server import Server

ITEM = "images/google/1f602.png"


def test_a_killed_server_loses_no_acknowledged_change(index_dir):
    new = image_bytes(noise_image((48, 48), seed=42))
    server = Server(index_dir)
    try:
        added = httpx.post(server.url + "/items", files={"file": ("n.png", new)}, data={"style": "kept"}, timeout=30)
        assert added.status_code == 201, added.text
        new_id = added.json()["id"]
        assert httpx.delete(f"{server.url}/items/{ITEM}", timeout=30).status_code == 200
    finally:
        server.kill()  # SIGKILL right after the answers: no shutdown hook runs
    with Server(index_dir) as restarted:
        row = httpx.get(f"{restarted.url}/items/{new_id}", timeout=30)
        assert row.status_code == 200 and row.json()["style"] == "kept"
        assert httpx.get(f"{restarted.url}/items/{ITEM}", timeout=30).status_code == 404
        first = httpx.post(restarted.url + "/search", files={"file": ("q.png", new)}, timeout=30).json()["results"][0]
        assert first["id"] == new_id and first["distance"] < 1e-5
        assert httpx.get(f"{restarted.url}/items/{new_id}/image", timeout=30).content == new


def test_the_token_comes_from_the_environment(index_dir):
    with Server(index_dir, env={"LOOKALIKE_TOKEN": "s3cret"}) as server:
        assert httpx.get(server.url + "/health").json()["writes_need_token"] is True
        data = {"file": ("n.png", image_bytes(noise_image(seed=1)))}
        assert httpx.post(server.url + "/items", files=data, timeout=30).status_code == 401
        ok = httpx.post(server.url + "/items", files=data, headers={"Authorization": "Bearer s3cret"}, timeout=30)
        assert ok.status_code == 201
        assert "writes need the token" in server.output()


@pytest.mark.parametrize("option, message", [
    ("prot=9000", "unknown option 'prot' (did you mean 'port'?)"),
    ("port=many", "port='many' is not an integer"),
    ("max_upload_mb=0", "max_upload_mb must be positive"),
    ("9000", "expected key=value options"),
    ("threads=-1", "threads must be >= 0"),
])
def test_bad_options_are_one_message_and_exit_2(option, message, index_dir, capsys):
    assert main(["serve", str(index_dir), option]) == 2
    assert message in capsys.readouterr().err


def test_a_folder_that_is_not_an_index_is_one_message(tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
