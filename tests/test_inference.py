"""The inference layer: sources of every kind, the datasets' decoding rules, failures reported, order kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lookalike.data.datasets import ImageDataset
from lookalike.errors import ConfigError, DatasetError
from lookalike.inference import Embedder, image_source


class MeanColour(torch.nn.Module):
    """A 'model' whose embedding is the mean of each channel and the image height: easy to check by hand."""

    feat_dim = 4

    def forward(self, x):
        return torch.cat([x.mean(dim=(2, 3)), torch.full((len(x), 1), float(x.shape[2]))], dim=1)


@pytest.fixture
def pictures(tmp_path):
    colours = {"red.png": (255, 0, 0), "green.png": (0, 255, 0), "sub/blue.png": (0, 0, 255)}
    for name, colour in colours.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 6), colour).save(tmp_path / name)
    return tmp_path


def test_a_folder_is_embedded_in_sorted_order_with_relative_ids(pictures):
    (pictures / "broken.png").write_bytes(b"not an image")
    source = image_source(pictures)
    assert source.ids == ["broken.png", "green.png", "red.png", "sub/blue.png"]
    result = Embedder(MeanColour()).embed_source(source)
    assert result.rows.tolist() == [1, 2, 3]
    assert [row for row, _ in result.failed] == [0]
    assert "cannot decode image" in result.failed[0][1]
    np.testing.assert_allclose(result.embeddings, [[0, 1, 0, 6], [1, 0, 0, 6], [0, 0, 1, 6]], atol=1e-6)


def test_a_csv_resolves_relative_paths_keeps_its_ids_and_crops_by_bbox(pictures):
    table = pd.DataFrame({"id": ["x", "y"], "path": ["red.png", str(pictures / "green.png")],
                          "x_1": [0, None], "x_2": [4, None], "y_1": [0, None], "y_2": [2, None]})
    table.to_csv(pictures / "items.csv", index=False)
    source = image_source(pictures / "items.csv")
    assert source.ids == ["x", "y"]
    assert source.table["path"].tolist() == [str(pictures / "red.png"), str(pictures / "green.png")]
    result = Embedder(MeanColour(), batch_size=1).embed_source(source)  # two sizes: no transform resizes them
    assert result.embeddings[:, 3].tolist() == [2.0, 6.0]  # the first is cropped to its 4 x 2 box


def test_images_in_memory_follow_the_dataset_rules(pictures):
    """A transparent RGBA image is composited over white, as the datasets do, and gives the dataset's input."""
    rgba = Image.new("RGBA", (8, 6), (255, 0, 0, 0))
    rgba.save(pictures / "clear.png")
    embedder = Embedder(MeanColour(), batch_size=2)
    from_memory = embedder.embed_images([rgba, Image.open(pictures / "red.png"), np.zeros((6, 8, 3), np.uint8)])
    np.testing.assert_allclose(from_memory[0], [1, 1, 1, 6], atol=1e-6)
    dataset = ImageDataset(pd.DataFrame({"path": [str(pictures / "clear.png")], "label": [0]}))
    np.testing.assert_allclose(from_memory[0][:3], dataset[0]["input"].mean(dim=(1, 2)).numpy(), atol=1e-6)
    np.testing.assert_allclose(from_memory[2], [0, 0, 0, 6])


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="holds no images"):
        image_source(tmp_path)
    (tmp_path / "t.csv").write_text("file\na.png\n")
    with pytest.raises(DatasetError, match="has no 'path' column"):
        image_source(tmp_path / "t.csv")
    with pytest.raises(ConfigError, match="neither a CSV file nor a folder"):
        image_source(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="not available on this machine|not one of"):
        Embedder(MeanColour(), device="tpu")


def test_bf16_autocast_changes_precision_not_results(pictures):
    plain = Embedder(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
                                         torch.nn.Flatten()), device="cpu")
    fast = Embedder(plain.model, device="cpu", precision="bf16-mixed")
    from lookalike.retrieval.bounds import native_bf16_matmul

    if not native_bf16_matmul():  # emulated bf16 would only be slower: inference runs fp32 there
        assert fast.precision == "32"
    a, b = plain.embed_source(pictures).embeddings, fast.embed_source(pictures).embeddings
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=2e-2)


def test_a_missing_text_in_a_list_is_an_empty_text_not_the_word_none():
    from lookalike.inference import text_problem, text_source

    texts = text_source(["red heart", None]).table["text"].tolist()
    assert texts == ["red heart", ""] and text_problem(texts[1]) == "empty text"


def test_a_source_of_the_other_modality_is_refused_with_one_message():
    import pandas as pd
    import pytest
    import torch

    from lookalike.errors import DatasetError
    from lookalike.inference import Embedder, ImageSource, TextSource

    class TextModel(torch.nn.Module):
        modality = "text"

        def forward(self, batch):
            return batch["input_ids"].float()

    images = ImageSource(pd.DataFrame({"path": ["/nowhere/a.png"]}), ["a"], "a table")
    with pytest.raises(DatasetError, match="this model takes texts, not images"):
        Embedder(TextModel(), device="cpu").embed_source(images)
    texts = TextSource(pd.DataFrame({"text": ["red heart"]}), ["0"], "a table")
    with pytest.raises(DatasetError, match="this model takes images, not texts"):
        Embedder(torch.nn.Identity(), device="cpu").embed_source(texts)
