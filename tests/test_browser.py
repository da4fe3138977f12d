"""End to end in a real headless Chromium, with two models loaded: choose the language pair, type two sentences,
click Translate, see exactly that model's translations; click one and see its attention heatmap; ask for
alternatives and see the n-best list; a right-to-left target language is laid out right to left.

Needs Debian's Chromium (`apt-get install chromium`) and the `playwright` Python package, which drives it through
`executable_path` (never `playwright install`, which downloads a browser).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import test_serve
from test_serve import running_server, served

from charmt.decode import Translator, attention_weights
from charmt.server import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SENTENCES = ["Go.", "I am cold."]
# Where the text of an element sits: its gaps to the element's left and right edges, in CSS pixels.
TEXT_GAPS = """e => { const r = document.createRange(); r.selectNodeContents(e);
  const t = r.getBoundingClientRect(), b = e.getBoundingClientRect(); return [t.left - b.left, b.right - t.right]; }"""

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Chromium is not installed (apt-get install chromium)")
pair_models = test_serve.pair_models  # the fixture: m-fr and m-de, trained once a session


def test_page_translates_with_the_chosen_pair_with_alternatives_and_attention(pair_models, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    fr, de = (Translator.load(pair_models[lang], device="cpu") for lang in ("fr", "de"))
    source, output, _ = attention_weights(fr, SENTENCES[1])
    n_best = de.translate_n_best(SENTENCES, beam=3, n_best=3)
    # The German model stands in for one into Arabic: the page must lay that out right to left.
    app = create_app([served(fr, "en", "fr"), served(de, "en", "ar", name="m-ar")])
    requests, problems = [], []
    with running_server(app) as url, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS)  # a fresh profile
        try:
            page = browser.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda message: message.type == "error" and problems.append(message.text))
            page.on("pageerror", lambda err: problems.append(str(err)))
            page.goto(url)
            expect(page.locator("#model-info")).to_contain_text("Model m-fr (English → French) on cpu")
            expect(page.locator("#translate")).to_be_enabled()
            assert page.locator("#pair option").all_text_contents() == ["English → French", "English → Arabic"]
            assert page.locator("#key-field").is_hidden()

            page.locator("#texts").press_sequentially(SENTENCES[0])
            page.locator("#texts").press("Enter")
            page.locator("#texts").press_sequentially(SENTENCES[1])
            page.get_by_role("button", name="Translate").click()
            expect(page.locator("#results > li")).to_have_count(2)
            assert page.locator("#results .source").all_text_contents() == SENTENCES
            assert page.locator("#results .translation").all_text_contents() == fr.translate(SENTENCES)
            expect(page.locator("#status")).to_have_text("2 translated.")
            assert page.locator("#results .alternatives").count() == 0

            assert page.locator("#attention").is_hidden()
            page.locator("#results button.result").nth(1).click()
            expect(page.locator("#attention")).to_be_visible()
            heatmap = page.locator("#heatmap")
            expect(heatmap.locator("tr")).to_have_count(1 + len(output))
            assert heatmap.locator("td").count() == len(output) * len(source)
            assert heatmap.locator("th[scope=col]").all_text_contents() == [
                "␣" if ch == " " else ch for ch in source]
            expect(page.locator("#results button.result").nth(1)).to_have_attribute("aria-pressed", "true")

            page.locator("#pair").select_option("en:ar")
            expect(page.locator("#model-info")).to_contain_text("Model m-ar (English → Arabic) on cpu")
            page.locator("#n-best").select_option(label="2")  # two alternatives: beam 3, n-best 3
            page.get_by_role("button", name="Translate").click()
            expect(page.locator("#results > li")).to_have_count(2)
            translations = page.locator("#results .translation")
            assert translations.all_text_contents() == [hyps[0].text for hyps in n_best]
            for i, hyps in enumerate(n_best):
                assert page.locator("#results > li").nth(i).locator(".alternatives li").all_text_contents() == [
                    h.text for h in hyps[1:]]
            first = translations.first
            assert (first.get_attribute("lang"), first.get_attribute("dir")) == ("ar", "rtl")
            assert first.evaluate("e => getComputedStyle(e).direction") == "rtl"
            left_gap, right_gap = first.evaluate(TEXT_GAPS)
            assert right_gap < 1 < left_gap  # the text sits against the right edge of its cell
            assert page.locator("#results .source").first.evaluate("e => getComputedStyle(e).direction") == "ltr"
        finally:
            browser.close()
    assert problems == []
    assert requests and all(r.startswith(url + "/") for r in requests), requests
