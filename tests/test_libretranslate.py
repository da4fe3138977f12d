"""LibreTranslate's API (charmt/server/libretranslate.py) as LibreTranslate's own server answers it: fields as JSON,
as a form and in the query string; errors in its words and statuses; plain text and html; `source: auto`; alternatives;
disabled features; fuzzed form and query bodies. Then real clients against a live `charmt serve m-fr m-de`:
libretranslatepy (form-encoded POST), deep-translator's LibreTranslator (query string) and a request shaped like
Mastodon's (JSON, html, source auto, a list of texts).
"""

from __future__ import annotations

import html
import json
import urllib.error

import httpx
import pytest
import test_serve
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serve import (
    CountingTranslator,
    running_server,
    serve_process,
    served,
    untrained_translator,
    write_keys,
)

from charmt.decode import Translator
from charmt.markup import segments
from charmt.server import Limits, create_app
from charmt.server.libretranslate import MAX_ALTERNATIVES, detect_language

from conftest import DEMO

EN_FR = {"source": "en", "target": "fr"}
pair_models = test_serve.pair_models  # the fixture: m-fr and m-de, trained once a session


@pytest.fixture(scope="module")
def fr(pair_models) -> Translator:
    return Translator.load(pair_models["fr"], device="cpu")


@pytest.fixture(scope="module")
def de(pair_models) -> Translator:
    return Translator.load(pair_models["de"], device="cpu")


@pytest.fixture(scope="module")
def client(fr, de):
    with TestClient(create_app([served(fr, "en", "fr"), served(de, "en", "de")],
                               limits=Limits(max_texts=10, max_chars=200))) as c:
        yield c


@pytest.fixture(scope="module")
def both_ways():
    """Untrained en->fr and fr->en models, whose source vocabularies are the demo corpus's English and French."""
    pairs = [line.split("\t") for line in DEMO.read_text(encoding="utf-8").splitlines()]
    english, french = [p[0] for p in pairs], [p[1] for p in pairs]
    models = [served(untrained_translator(source_texts=english, target_texts=french), "en", "fr"),
              served(untrained_translator(source_texts=french, target_texts=english), "fr", "en")]
    with TestClient(create_app(models)) as client:
        yield client, models


# --- /translate -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["json", "form", "multipart", "query"])
def test_translate_reads_json_forms_and_the_query_string(client, fr, how):
    fields = {"q": "I am cold.", **EN_FR, "format": "text"}
    send = {"json": {"json": fields}, "form": {"data": fields}, "query": {"params": fields},
            "multipart": {"files": {name: (None, value) for name, value in fields.items()}}}[how]
    response = client.post("/translate", **send)
    assert (response.status_code, response.json()) == (200, {"translatedText": fr.translate(["I am cold."])[0]})


def test_a_list_gives_a_list_and_the_query_string_wins_over_the_form(client, fr, de):
    texts = ["I am cold.", "Hi.", ""]
    response = client.post("/translate", json={"q": texts, **EN_FR})
    assert response.json() == {"translatedText": fr.translate(texts)}
    response = client.post("/translate", params={"target": "de"}, data={"q": "Hi.", **EN_FR})
    assert response.json() == {"translatedText": de.translate(["Hi."])[0]}


def test_plain_text_is_translated_line_by_line(client, fr):
    response = client.post("/translate", data={"q": "I am cold.\r\n\r\n  Hi. Go.\n", **EN_FR})
    first, second = fr.translate(["I am cold.", "Hi. Go."])
    assert response.json() == {"translatedText": f"{first}\n\n  {second}"}  # a form's last line break is dropped


def test_html_keeps_the_tags_and_translates_the_text_between_them(client, fr):
    q = ('<p>I am cold.</p>\n<p class="h-card">Hi <a href="https://example.org/@paul" title="a > b">Paul</a>!</p>'
         '<pre>Go.</pre><script>let go = "Go.";</script> Tom &amp; Jerry')
    t = [html.escape(text, quote=False) for text in fr.translate(["I am cold.", "Hi", "Paul", "!", "Tom & Jerry"])]
    expected = (f'<p>{t[0]}</p>\n<p class="h-card">{t[1]} <a href="https://example.org/@paul" title="a > b">{t[2]}</a>'
                f'{t[3]}</p><pre>Go.</pre><script>let go = "Go.";</script> {t[4]}')
    response = client.post("/translate", json={"q": q, **EN_FR, "format": "html"})
    assert response.json() == {"translatedText": expected}


@pytest.mark.parametrize("text, is_html, translated", [
    ("Hi. Go.", False, ["Hi. Go."]),
    ("  Hi.\n\nGo. \n", False, ["Hi.", "Go."]),
    (" \n ", False, []),
    ("<p>Hi <b>you</b></p>", True, ["Hi", "you"]),
    ("a < b, c > d", True, ["a < b, c > d"]),  # not tags: '<' before a space
    ("<!-- Hi --><p>&nbsp;</p><br/>Go<code>x <i>y</i> z</code>.", True, ["Go", "."]),
    ("<unclosed Hi", True, ["<unclosed Hi"]),
])
def test_segments_cut_a_text_into_pieces_to_translate(text, is_html, translated):
    pieces = segments(text, is_html)
    assert "".join(piece for piece, _ in pieces) == text
    assert [piece for piece, keep in pieces if not keep] == translated


def test_alternatives_are_the_n_best_list(client, fr):
    response = client.post("/translate", json={"q": "I am cold.", **EN_FR, "alternatives": 2})
    hyps = fr.translate_n_best(["I am cold."], beam=3, n_best=3)[0]
    best = hyps[0].text
    alternatives = list(dict.fromkeys(h.text for h in hyps[1:] if h.text not in (best, "")))
    assert response.json() == {"translatedText": best, "alternatives": alternatives}
    assert alternatives
    response = client.post("/translate", data={"q": "I am cold.", **EN_FR, "alternatives": "2", "format": "html"})
    # None for html, as LibreTranslate gives none: the server's own beam (here greedy) translates it.
    assert response.json() == {"translatedText": fr.translate(["I am cold."])[0], "alternatives": []}
    response = client.post("/translate", json={"q": ["I am cold.", "Hi."], **EN_FR, "alternatives": 1})
    expected = fr.translate_n_best(["I am cold.", "Hi."], beam=2, n_best=2)  # alternatives + 1 beams
    assert response.json() == {"translatedText": [hyps[0].text for hyps in expected],
                               "alternatives": [[h.text for h in hyps[1:] if h.text != hyps[0].text]
                                                for hyps in expected]}


def test_source_auto_picks_the_source_language_and_says_so(client, de):
    response = client.post("/translate", json={"q": "I am cold.", "source": "auto", "target": "de"})
    assert response.json() == {"translatedText": de.translate(["I am cold."])[0],
                               "detectedLanguage": {"confidence": 100.0, "language": "en"}}
    response = client.post("/translate", json={"q": ["Hi.", "Go."], "source": "auto", "target": "de"})
    assert response.json()["detectedLanguage"] == [{"confidence": 100.0, "language": "en"}] * 2


def test_auto_detection_prefers_the_vocabulary_that_covers_the_text(both_ways):
    client, (en_fr, fr_en) = both_ways
    french = "Où est le café ?"
    chars = [ch for ch in french if not ch.isspace()]
    known = sum(ch in en_fr.translator.source_vocab.index for ch in chars)
    assert known < len(chars)  # the English side of the corpus has no accents
    expected = [{"confidence": 100.0, "language": "fr"},
                {"confidence": round(100 * known / len(chars), 1), "language": "en"}]
    assert detect_language([en_fr, fr_en], [french]) == expected
    assert client.post("/detect", data={"q": french}).json() == expected
    response = client.post("/translate", json={"q": french, "source": "auto", "target": "en"})
    assert response.json()["detectedLanguage"] == expected[0]
    assert client.post("/detect", json={"q": ["Go.", "Hi."]}).json()[0]["confidence"] == 100.0


@pytest.mark.parametrize("fields, message", [
    ({"source": "en", "target": "fr"}, "Invalid request: missing q parameter"),
    ({"q": "", **EN_FR}, "Invalid request: missing q parameter"),
    ({"q": [], **EN_FR}, "Invalid request: missing q parameter"),
    ({"texts": ["Hi."], **EN_FR},
     "Invalid request: missing q parameter (charmt's own API, which reads texts, is at /api/translate)"),
    ({"q": "Hi.", "target": "fr"}, "Invalid request: missing source parameter"),
    ({"q": "Hi.", "source": "en"}, "Invalid request: missing target parameter"),
    ({"q": "Hi.", "source": "en", "target": "zz"}, "zz is not supported"),
    ({"q": "Hi.", "source": "fr", "target": "de"}, "fr is not supported"),
    ({"q": "Hi.", "source": "auto", "target": "es"}, "es is not supported"),
    ({"q": "Hi.", **EN_FR, "format": "xml"}, "xml format is not supported"),
    ({"q": "Hi.", **EN_FR, "alternatives": "two"}, "Invalid request: alternatives parameter is not a number"),
    ({"q": "Hi.", **EN_FR, "alternatives": MAX_ALTERNATIVES + 1},
     f"Invalid request: alternatives parameter must be <= {MAX_ALTERNATIVES}"),
    ({"q": ["Hi."] * 11, **EN_FR}, "Invalid request: request (11) exceeds text limit (10)"),
    ({"q": "x" * 201, **EN_FR}, "Invalid request: request (201) exceeds text limit (200)"),
    ({"q": {"text": "Hi."}, **EN_FR}, "Invalid request: q must be a string or a list of strings"),
    ({"q": ["Hi.", 3], **EN_FR}, "Invalid request: q must be a string or a list of strings"),
])
def test_bad_requests_are_400_in_libretranslates_words(client, fields, message):
    response = client.post("/translate", json=fields)
    assert (response.status_code, response.json()) == (400, {"error": message})


def test_a_pair_no_model_serves_is_400(both_ways):
    client, _ = both_ways
    response = client.post("/translate", data={"q": "Hi.", "source": "fr", "target": "fr"})
    assert response.json() == {"error": "French (fr) is not available as a target language from French (fr)"}


@pytest.mark.parametrize("body", [b"[1, 2]", b'"Hi."', b'{"q": "Hi."', b"\xff"])
def test_a_body_that_is_not_a_json_object_is_400(client, body):
    response = client.post("/translate", content=body, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()) == (400, {"error": "Invalid JSON format"})


def test_a_failed_translation_is_500_naming_the_model_not_the_exception(fr, caplog):
    class Failing(CountingTranslator):
        def translate_prepared(self, prepared, **options):
            raise RuntimeError("out of memory at 0x7f3a")

    with TestClient(create_app([served(Failing(fr), "en", "fr")])) as client:
        response = client.post("/translate", json={"q": "Hi.", **EN_FR})
        charmt_api = client.post("/api/translate", json={"texts": ["Hi."]})
    message = "translation failed (model m-fr); the server's log says why"
    assert (response.status_code, response.json()) == (500, {"error": f"Cannot translate text: {message}"})
    assert (charmt_api.status_code, charmt_api.json()) == (500, {"detail": message})
    logged = [r for r in caplog.records if r.name == "charmt" and r.levelname == "ERROR"]
    assert len(logged) == 2 and "out of memory at 0x7f3a" in str(logged[0].exc_info[1])  # the server's log has it


# --- the other endpoints ----------------------------------------------------------------------------------


def test_languages_lists_every_language_with_its_targets(client):
    expected = [{"code": "en", "name": "English", "targets": ["de", "fr"]},
                {"code": "fr", "name": "French", "targets": []}, {"code": "de", "name": "German", "targets": []}]
    assert client.get("/languages").json() == expected
    assert client.post("/languages", data={"api_key": "x"}).json() == expected


def test_detect_and_settings(client):
    assert client.post("/detect", data={"q": "I am cold."}).json() == [{"confidence": 100.0, "language": "en"}]
    response = client.post("/detect", data={})
    assert (response.status_code, response.json()) == (400, {"error": "Invalid request: missing q parameter"})
    assert client.get("/frontend/settings").json() == {
        "charLimit": 200, "frontendTimeout": 500, "apiKeys": False, "keyRequired": False, "suggestions": False,
        "filesTranslation": False, "supportedFilesFormat": [],
        "language": {"source": {"code": "en", "name": "English"}, "target": {"code": "fr", "name": "French"}}}
    assert client.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("path, message", [
    ("/translate_file", "Files translation are disabled on this server."),
    ("/suggest", "Suggestions are disabled on this server."),
])
def test_features_charmt_does_not_offer_are_403_as_libretranslate_disables_them(client, path, message):
    response = client.post(path, data={"q": "Hi.", "s": "Salut.", **EN_FR})
    assert (response.status_code, response.json()) == (403, {"error": message})


# --- fuzzing: arbitrary fields as a form, a query string or JSON ------------------------------------------

FIELD_VALUE = st.text(st.characters(exclude_categories=("Cs",)), max_size=70) | st.sampled_from(
    ["en", "fr", "de", "auto", "html", "text", "0", "1", "9", "-1", "<p>Hi</p>"])
FIELDS = st.dictionaries(st.sampled_from(["q", "source", "target", "format", "alternatives", "api_key", "x"]),
                         FIELD_VALUE, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=FIELDS, how=st.sampled_from(["form", "query", "json", "multipart"]),
       path=st.sampled_from(["/translate", "/detect"]))
def test_fuzz_forms_and_query_strings_never_give_a_server_error(client, fields, how, path):
    send = {"json": {"content": json.dumps(fields), "headers": {"content-type": "application/json"}},
            "form": {"data": fields}, "query": {"params": fields},
            "multipart": {"files": {name: (None, value) for name, value in fields.items()} or {"x": (None, "")}}}[how]
    response = client.post(path, **send)
    assert response.status_code < 500, response.text
    body = response.json()
    if response.status_code != 200:
        assert isinstance(body["error"], str)
    elif path == "/translate":
        assert isinstance(body["translatedText"], str)


# --- real clients against `charmt serve m-fr m-de` --------------------------------------------------------


@pytest.fixture(scope="module")
def live(pair_models, tmp_path_factory):
    log = tmp_path_factory.mktemp("live") / "serve.log"
    with serve_process([pair_models["fr"], pair_models["de"]], log_path=log) as (url, _):
        yield url


@pytest.mark.parametrize("target", ["fr", "de"])
def test_libretranslatepy_translates_with_charmt_serve(live, fr, de, target):
    from libretranslatepy import LibreTranslateAPI

    lt = LibreTranslateAPI(live + "/")
    assert lt.translate("I am cold.", "en", target) == {"fr": fr, "de": de}[target].translate(["I am cold."])[0]


def test_libretranslatepy_lists_languages_detects_and_gets_errors(live):
    from libretranslatepy import LibreTranslateAPI

    lt = LibreTranslateAPI(live)
    assert lt.languages() == [{"code": "en", "name": "English", "targets": ["de", "fr"]},
                              {"code": "fr", "name": "French", "targets": []},
                              {"code": "de", "name": "German", "targets": []}]
    assert lt.detect("I am cold.") == [{"confidence": 100.0, "language": "en"}]
    with pytest.raises(urllib.error.HTTPError) as raised:
        lt.translate("I am cold.", "en", "es")
    assert raised.value.code == 400 and json.loads(raised.value.read()) == {"error": "es is not supported"}


def test_deep_translator_translates_with_charmt_serve(live, fr, de):
    from deep_translator import LibreTranslator
    from deep_translator.exceptions import ServerException

    # deep-translator always sends a key; a server without --api-keys ignores it, as LibreTranslate does.
    german = LibreTranslator(source="en", target="de", api_key="any", custom_url=live + "/")
    assert german.translate("I am cold.") == de.translate(["I am cold."])[0]
    assert german.translate_batch(["Hi.", "Go."]) == de.translate(["Hi.", "Go."])
    french = LibreTranslator(source="English", target="French", api_key="any", custom_url=live + "/")
    assert french.translate("I am cold.") == fr.translate(["I am cold."])[0]
    with pytest.raises(ServerException, match="ERR_BAD_REQUEST"):
        LibreTranslator(source="en", target="es", api_key="any", custom_url=live + "/").translate("I am cold.")


def test_a_request_shaped_like_mastodons_works(live, fr):
    # Mastodon's TranslationService::LibreTranslate: JSON, a list of html texts, source auto, api_key possibly null.
    headers = {"content-type": "application/json"}
    body = {"q": ["<p>I am cold.</p>", "<p>Hi <span>Paul</span></p>"], "source": "auto", "target": "fr",
            "format": "html", "api_key": None}
    response = httpx.post(f"{live}/translate", content=json.dumps(body), headers=headers)
    assert response.status_code == 200
    t = [html.escape(text, quote=False) for text in fr.translate(["I am cold.", "Hi", "Paul"])]
    assert response.json() == {"translatedText": [f"<p>{t[0]}</p>", f"<p>{t[1]} <span>{t[2]}</span></p>"],
                               "detectedLanguage": [{"confidence": 100.0, "language": "en"}] * 2}
    languages = httpx.get(f"{live}/languages", headers=headers).json()
    assert {lang["code"]: [t for t in lang["targets"] if t != lang["code"]] for lang in languages} == {
        "en": ["de", "fr"], "fr": [], "de": []}


def test_clients_see_key_errors_and_rate_limits_as_from_libretranslate(fr, tmp_path):
    from deep_translator import LibreTranslator
    from deep_translator.exceptions import AuthorizationException, ServerException
    from libretranslatepy import LibreTranslateAPI

    keys = write_keys(tmp_path / "keys", "good\nonce 1\n")
    with running_server(create_app([served(fr, "en", "fr")], api_keys=keys)) as url:
        assert LibreTranslateAPI(url, api_key="good").translate("Hi.", "en", "fr") == fr.translate(["Hi."])[0]
        for key, status, message in [(None, 400, "Please contact the server operator to get an API key"),
                                     ("bad", 403, "Invalid API key")]:
            with pytest.raises(urllib.error.HTTPError) as raised:
                LibreTranslateAPI(url, api_key=key).translate("Hi.", "en", "fr")
            assert (raised.value.code, json.loads(raised.value.read())) == (status, {"error": message})
        with pytest.raises(AuthorizationException):
            LibreTranslator(source="en", target="fr", api_key="bad", custom_url=url + "/").translate("Hi.")
        once = LibreTranslator(source="en", target="fr", api_key="once", custom_url=url + "/")
        assert once.translate("Hi.") == fr.translate(["Hi."])[0]
        with pytest.raises(ServerException, match="ERR_TOO_MANY_REQUESTS"):
            once.translate("Hi.")
        with pytest.raises(urllib.error.HTTPError) as raised:
            LibreTranslateAPI(url, api_key="once").translate("Hi.", "en", "fr")
        assert (raised.value.code, json.loads(raised.value.read())) == (429, {"error": "Slowdown: 1 per 1 minute"})
        assert LibreTranslateAPI(url, api_key="good").translate("Go.", "en", "fr") == fr.translate(["Go."])[0]
