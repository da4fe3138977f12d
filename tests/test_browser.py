"""End to end in a real headless Chromium: the charmt server, type two sentences, click Translate, see exactly the
Translator's translations; click one and see its attention heatmap.

Needs Debian's Chromium (`apt-get install chromium`) and the `playwright` Python package, which drives it through
`executable_path` (never `playwright install`, which downloads a browser).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_serve import running_server

from charmt.decode import Translator, attention_weights
from charmt.serve import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SENTENCES = ["Go.", "I am cold."]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Chromium is not installed (apt-get install chromium)")


def test_page_translates_and_shows_attention(tiny_model_dir, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    translator = Translator.load(tiny_model_dir, device="cpu")
    expected = translator.translate(SENTENCES)
    source, output, _ = attention_weights(translator, SENTENCES[1])
    requests, problems = [], []
    app = create_app(translator, name=tiny_model_dir.name)  # as `charmt serve` does (test_load.py runs that)
    with running_server(app) as url, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS)  # a fresh profile
        try:
            page = browser.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda message: message.type == "error" and problems.append(message.text))
            page.on("pageerror", lambda err: problems.append(str(err)))
            page.goto(url)
            expect(page.locator("#model-info")).to_contain_text(f"Model {tiny_model_dir.name} on cpu")
            expect(page.locator("#translate")).to_be_enabled()

            page.locator("#texts").press_sequentially(SENTENCES[0])
            page.locator("#texts").press("Enter")
            page.locator("#texts").press_sequentially(SENTENCES[1])
            page.get_by_role("button", name="Translate").click()
            expect(page.locator("#results li")).to_have_count(2)
            assert page.locator("#results .source").all_text_contents() == SENTENCES
            assert page.locator("#results .translation").all_text_contents() == expected
            expect(page.locator("#status")).to_have_text("2 translated.")

            assert page.locator("#attention").is_hidden()
            page.locator("#results button.result").nth(1).click()
            expect(page.locator("#attention")).to_be_visible()
            heatmap = page.locator("#heatmap")
            expect(heatmap.locator("tr")).to_have_count(1 + len(output))
            assert heatmap.locator("td").count() == len(output) * len(source)
            assert heatmap.locator("th[scope=col]").all_text_contents() == [
                "␣" if ch == " " else ch for ch in source]
            expect(page.locator("#results button.result").nth(1)).to_have_attribute("aria-pressed", "true")
        finally:
            browser.close()
    assert problems == []
    assert requests and all(r.startswith(url + "/") for r in requests), requests
