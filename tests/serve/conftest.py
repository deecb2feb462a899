"""Fixtures of the service tests: an index of the built-in data (lookalike/assets/emoji_mini, 770 images) with a
tiny random-init CNN at 32 px, built once per session; each test gets its own copy of the folder (the tests
change it), opened as the server opens it, and a TestClient on the app."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
BUILT_IN = ROOT / "lookalike" / "assets" / "emoji_mini"


#: `lookalike index` overrides of the test index: a random-init small CNN at 32 px over the built-in data
TINY_INDEX = ["extractor={name: small_cnn, args: {channels: [8, 16, 32], embedding_dim: 32}}", "image_size=32",
              "accelerator=cpu", "progress_bar=false", f"source={BUILT_IN / 'df.csv'}"]


def build_index(folder: Path) -> Path:
    """An index folder over the built-in data, built by the index pipeline (as `lookalike index` builds one)."""
    import warnings

    import torch

    from lookalike.pipelines.indexing import index

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="checkpoint is null")
        return index("default", [*TINY_INDEX, f"index_dir={folder}"])


@pytest.fixture(scope="session")
def built_index(tmp_path_factory) -> Path:
    return build_index(tmp_path_factory.mktemp("serve") / "index")


@pytest.fixture
def index_dir(built_index: Path, tmp_path: Path) -> Path:
    """A private copy of the built index folder."""
    return Path(shutil.copytree(built_index, tmp_path / "index"))


@pytest.fixture
def index(index_dir: Path):
    from lookalike.pipelines.indexing import open_index

    return open_index(index_dir)


@pytest.fixture
def make_client(index):
    """``make_client(**create_app options)`` -> a started TestClient (closed at the end of the test)."""
    from fastapi.testclient import TestClient

    from lookalike.serve import create_app

    clients = []

    def make(raise_server_exceptions: bool = True, **options):
        client = TestClient(create_app(index, **options), raise_server_exceptions=raise_server_exceptions)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()


def image_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def noise_image(size=(40, 30), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
