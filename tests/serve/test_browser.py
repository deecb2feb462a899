"""The web page in a real browser: Debian's Chromium driven by Playwright opens the page of a running
`lookalike serve` over the built-in data, uploads an image, sees it come back first at distance ~0, and clicks
a result to search by it. With LOOKALIKE_UPDATE_SCREENSHOT=1 it saves docs/images/serve.png (the README's).

Skipped only where Chromium is absent and the CI variable is not set; in CI a missing browser is a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.serve.server import ROOT, Server

CHROMIUM = Path(os.environ.get("LOOKALIKE_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOT = ROOT / "docs" / "images" / "serve.png"
QUERY = "images/twitter/1f339.png"  # a rose, in the built-in data
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI: scripts/setup.sh installs Debian's chromium (apt-get).")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); CI runs this test")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def test_upload_an_image_and_click_a_result(browser, index_dir, tmp_path):
    query_file = Path(ROOT / "lookalike" / "assets" / "emoji_mini" / QUERY)
    with Server(index_dir) as server:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
        page.goto(server.url + "/")
        page.wait_for_selector("#stats .chip >> text=items")
        assert "770" in page.inner_text("#stats")

        page.set_input_files("#file", str(query_file))
        page.wait_for_selector("#results .result")
        cards = page.locator("#results .result")
        assert cards.count() == 10  # the page's default top-k
        assert cards.first.get_attribute("data-id") == QUERY
        assert float(cards.first.get_attribute("data-distance")) < 1e-4
        assert "style" in cards.first.inner_text() and "twitter" in cards.first.inner_text()
        assert "results for the uploaded image" in page.inner_text("#status")
        page.wait_for_function("Array.from(document.querySelectorAll('#results img')).every(i => i.complete && "
                               "i.naturalWidth > 0)")
        shot = SCREENSHOT if os.environ.get("LOOKALIKE_UPDATE_SCREENSHOT") else tmp_path / "serve.png"
        page.screenshot(path=str(shot), full_page=False)
        assert shot.stat().st_size > 10_000

        second = cards.nth(1).get_attribute("data-id")
        cards.nth(1).click()
        page.wait_for_function("id => document.querySelector('#query-label b')?.textContent === id", arg=second)
        page.wait_for_function("id => document.querySelector('#status').textContent.includes('results for ' + id)",
                               arg=second)
        ids = [cards.nth(i).get_attribute("data-id") for i in range(cards.count())]
        assert second not in ids and len(ids) == 10  # similar items of the clicked one, itself left out

        page.select_option("#top-k", "5")
        page.wait_for_function("document.querySelectorAll('#results .result').length === 5")
        assert not errors, errors
