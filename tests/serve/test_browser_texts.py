"""The web page over an index of texts in a real browser (Debian's Chromium, Playwright): the text box replaces
the image drop zone, a typed text finds itself first, and clicking a result searches by that text.
Skipped only where Chromium is absent and the CI variable is not set, like test_browser.py."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest

from tests.serve.server import Server
from tests.serve.test_browser import browser  # noqa: F401  (the fixture)
from tests.texts_support import concept_rows, make_tiny_text_model, write_text_dataset

pytest.importorskip("transformers")


@pytest.fixture
def text_index(tmp_path) -> tuple[Path, str]:
    import torch

    from lookalike.pipelines.indexing import index

    model = make_tiny_text_model(tmp_path / "model")
    data = write_text_dataset(tmp_path / "data", concept_rows(per_label_train=2, per_label_val=2))
    torch.manual_seed(0)
    extractor = f"{{name: text_transformer, args: {{model_path: {model}, embedding_dim: 16, max_length: 16}}}}"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="checkpoint is null")
        folder = index("texts", [f"extractor={extractor}", f"dataset_root={data}", "accelerator=cpu",
                                 "progress_bar=false", f"index_dir={tmp_path / 'ix'}"])
    return folder, pd.read_csv(data / "df.csv")["text"].iloc[7]


def test_type_a_text_and_click_a_result(browser, text_index):  # noqa: F811
    folder, query = text_index
    with Server(folder) as server:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url + "/")
        page.wait_for_selector("#text-query", state="visible")
        assert not page.is_visible("#drop")

        page.fill("#text-query", query)
        page.click("#text-search")
        page.wait_for_selector("#results .result")
        cards = page.locator("#results .result")
        assert cards.count() == 10
        assert cards.first.get_attribute("data-id") == "7" and float(cards.first.get_attribute("data-distance")) < 1e-4
        assert query in cards.first.inner_text()

        second_id = cards.nth(1).get_attribute("data-id")
        second_text = cards.nth(1).locator(".item-text").inner_text()
        cards.nth(1).click()
        page.wait_for_function("t => document.querySelector('#query-label b')?.textContent === t", arg=second_text)
        page.wait_for_function("id => document.querySelector('#status').textContent.includes('results for ' + id)",
                               arg=second_id)
        assert not errors, errors
