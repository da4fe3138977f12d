"""`charmt serve`: the HTTP API with FastAPI's TestClient, request batching on a real uvicorn server, the page's
files, attention weights, and fuzzing of the API (arbitrary JSON bodies; schemathesis from the OpenAPI schema).

`running_server` and `serve_process` are also used by test_load.py and test_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charmt.cli import main
from charmt.config import ModelConfig
from charmt.decode import Translator, attention_weights
from charmt.errors import ConfigError
from charmt.model import Seq2Seq
from charmt.serve import MAX_BEAM, bind, create_app, url_of

from conftest import DEMO

try:
    import schemathesis
except ImportError:  # the schema-driven fuzz test is skipped with the remedy
    schemathesis = None

SENTENCES = ["Go.", "I am cold.", "Hi.", "He runs. She walks.", "Thank you!", "Who won?"]


# --- helpers shared with test_load.py and test_browser.py -----------------------------------------------


@contextmanager
def running_server(app):
    """Serve `app` with uvicorn in a thread on a free loopback port; yields its URL."""
    import uvicorn

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@contextmanager
def serve_process(model_dir: Path, *options: str, log_path: Path):
    """`charmt serve MODEL --port 0` in a subprocess; yields (URL, process) once it listens."""
    command = [sys.executable, "-m", "charmt", "-q", "serve", str(model_dir), "--port", "0", "--device", "cpu",
               *options]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 90
        while not (found := re.search(r" on (http://\S+) ", log_path.read_text(errors="replace"))):
            assert proc.poll() is None, f"charmt serve exited: {log_path.read_text(errors='replace')}"
            assert time.monotonic() < deadline, "charmt serve did not start listening within 90 s"
            time.sleep(0.05)
        yield found.group(1), proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class CountingTranslator:
    """A Translator that records each `translate` call (the batch the model saw)."""

    def __init__(self, translator: Translator):
        self._translator = translator
        self.calls: list[tuple[list[str], int]] = []
        self.before_call = None  # hook run in the model thread before each call

    def __getattr__(self, name):
        return getattr(self._translator, name)

    def translate(self, texts, *, beam=1, **options):
        if self.before_call is not None:
            self.before_call(list(texts))
        self.calls.append((list(texts), beam))
        return self._translator.translate(texts, beam=beam, **options)


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def translator(tiny_model_dir) -> Translator:
    return Translator.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def client(translator):
    with TestClient(create_app(translator, name="tiny", max_texts=10, max_chars=60)) as client:
        yield client


def untrained_translator(attention: str) -> Translator:
    """A random model with the demo corpus's vocabularies: cheap to build at import time, and it decodes to the
    length limit, the slowest case."""
    from charmt.checkpoint import ModelInfo
    from charmt.vocab import Vocab

    pairs = [line.split("\t") for line in DEMO.read_text(encoding="utf-8").splitlines()]
    source, target = Vocab.build(p[0] for p in pairs), Vocab.build(p[1] for p in pairs)
    torch.manual_seed(0)
    config = ModelConfig(src_vocab_size=len(source), tgt_vocab_size=len(target), hidden_size=16, embedding_size=8,
                         attention=attention)
    info = ModelInfo(config, source, target, max_source_length=max(len(p[0]) for p in pairs),
                     max_target_length=max(len(p[1]) for p in pairs))
    return Translator(Seq2Seq(config), info, torch.device("cpu"))


@pytest.fixture(scope="module")
def plain_translator() -> Translator:
    return untrained_translator(attention="none")


# --- /translate -------------------------------------------------------------------------------------------


def test_translations_in_order_as_the_translator_gives_them(client, translator):
    texts = SENTENCES + ["", "   ", "Go."]
    response = client.post("/translate", json={"texts": texts})
    assert response.status_code == 200
    body = response.json()
    assert body["translations"] == translator.translate(texts)
    assert body["translations"][6:8] == ["", ""]
    assert body["translations"][8] == body["translations"][0]
    assert (body["model"], body["device"], body["beam"], body["warnings"]) == ("tiny", "cpu", 1, [])


def test_beam_search_matches_the_translator(client, translator):
    response = client.post("/translate", json={"texts": SENTENCES[:3], "beam": 3})
    assert response.status_code == 200
    assert response.json()["translations"] == translator.translate(SENTENCES[:3], beam=3)


def test_no_texts_no_translations(client):
    response = client.post("/translate", json={"texts": []})
    assert response.status_code == 200
    assert response.json()["translations"] == []


def test_unknown_characters_are_translated_and_named_in_a_warning(client, translator):
    texts = ["Go Ω.", "Hi."]
    response = client.post("/translate", json={"texts": texts})
    assert response.status_code == 200
    body = response.json()
    assert body["translations"] == translator.translate(texts)
    assert body["warnings"] == ["1 unknown character(s) replaced by <unk> (not in the training data): 'Ω'"]


@pytest.mark.parametrize("body, status, message", [
    ({"texts": ["Hi."] * 11}, 413, "11 texts in one request; this server accepts at most 10 (--max-texts)"),
    ({"texts": ["Hi.", "x" * 61]}, 413, "text 1 has 61 characters; this server accepts at most 60 per text"),
    ({"texts": ["Hi."], "beam": 0}, 422, "beam: Input should be greater than or equal to 1"),
    ({"texts": ["Hi."], "beam": MAX_BEAM + 1}, 422, f"beam: Input should be less than or equal to {MAX_BEAM}"),
    ({"texts": "Hi."}, 422, "texts: Input should be a valid list"),
    ({"texts": ["Hi.", 3]}, 422, "texts.1: Input should be a valid string"),
    ({"text": ["Hi."]}, 422, "texts: Field required; text: Extra inputs are not permitted"),
    ([1, 2], 422, "Input should be a valid dictionary"),
])
def test_limits_and_invalid_bodies_are_clear_4xx(client, body, status, message):
    response = client.post("/translate", json=body)
    assert response.status_code == status
    assert message in response.json()["detail"]


def test_malformed_json_is_422(client):
    response = client.post("/translate", content=b'{"texts": ["Hi."]', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("invalid request: the body is not valid JSON")


def test_oversized_body_is_refused_before_parsing(client):
    response = client.post("/translate", content=b" " * 2_000_000, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "larger than this server accepts" in response.json()["detail"]


def test_library_errors_become_400_with_their_message(translator):
    class Failing(CountingTranslator):
        def translate(self, texts, **options):
            raise ConfigError("the model is unhappy; try again")

    with TestClient(create_app(Failing(translator))) as client:
        response = client.post("/translate", json={"texts": ["Hi."]})
    assert (response.status_code, response.json()) == (400, {"detail": "the model is unhappy; try again"})


def test_create_app_checks_its_limits(translator):
    with pytest.raises(ConfigError, match="--max-texts and --max-chars must be at least 1"):
        create_app(translator, max_texts=0)


# --- /health, OpenAPI, the page ---------------------------------------------------------------------------


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": "tiny", "device": "cpu", "attention": True, "max_texts": 10,
                               "max_chars": 60, "max_beam": MAX_BEAM}


def test_openapi_describes_the_api(client):
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/translate", "/attention", "/health"}
    assert set(schema["paths"]["/translate"]["post"]["responses"]) >= {"200", "413", "422"}


def test_page_and_its_files_are_served_with_no_outside_resources(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for needle in ('<textarea id="texts"', '<select id="beam"', '<button id="translate"', '<ol id="results"',
                   '<table id="heatmap"', 'src="static/app.js"', 'href="static/style.css"'):
        assert needle in page.text
    static = resources.files("charmt") / "static"
    for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css")]:
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        assert response.content == static.joinpath(name).read_bytes()
    for name in ("index.html", "app.js", "style.css"):
        text = static.joinpath(name).read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[\w.-]+\.\w+/|@import|url\(", text), f"{name} refers to outside resources"
    assert client.get("/static/../serve.py").status_code == 404
    assert client.get("/static/missing.js").status_code == 404


# --- attention --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sentence", ["Go.", "I am cold.", "He runs. She walks.", "Go  Ω\t!"])
def test_attention_weights_follow_the_greedy_translation(translator, sentence):
    source, output, weights = attention_weights(translator, sentence)
    assert "".join(source) == " ".join(sentence.split())
    assert "".join(output) == translator.translate([sentence], split=False)[0]
    assert len(weights) == len(output) and all(len(row) == len(source) for row in weights)
    assert all(abs(sum(row) - 1) < 1e-4 and min(row) >= 0 for row in weights)


def test_attention_weights_need_attention_and_a_sentence(translator, plain_translator):
    with pytest.raises(ConfigError, match="trained with --attention none"):
        attention_weights(plain_translator, "Go.")
    with pytest.raises(ConfigError, match="non-empty sentence"):
        attention_weights(translator, " \t ")


def test_attention_endpoint(client, translator):
    response = client.post("/attention", json={"text": "I am cold."})
    assert response.status_code == 200
    body = response.json()
    source, output, weights = attention_weights(translator, "I am cold.")
    assert (body["source"], body["output"], body["translation"]) == (source, output, "".join(output))
    assert body["weights"] == [[round(w, 4) for w in row] for row in weights]


@pytest.mark.parametrize("body, status, message", [
    ({"text": " "}, 422, "text is empty"),
    ({"text": "x" * 61}, 413, "text has 61 characters; this server accepts at most 60"),
    ({"texts": ["Go."]}, 422, "text: Field required"),
])
def test_attention_endpoint_errors(client, body, status, message):
    response = client.post("/attention", json=body)
    assert response.status_code == status
    assert message in response.json()["detail"]


def test_attention_endpoint_without_attention_is_409(plain_translator):
    with TestClient(create_app(plain_translator, name="plain")) as client:
        assert client.get("/health").json()["attention"] is False
        response = client.post("/attention", json={"text": "Go."})
        assert response.status_code == 409
        assert "model 'plain' has no attention weights to show" in response.json()["detail"]
        assert client.post("/translate", json={"texts": ["Go."]}).status_code == 200


# --- batching ---------------------------------------------------------------------------------------------


def test_batcher_groups_by_beam_and_keeps_each_requests_results(translator):
    from concurrent.futures import ThreadPoolExecutor

    from charmt.serve import _Batcher

    counting = CountingTranslator(translator)
    jobs = [(["Go.", "Hi."], 1), (["I am cold."], 2), ([], 1), (["Who won?"], 1), (["Thank you!", "Go."], 2)]

    async def run():
        batcher = _Batcher(counting, ThreadPoolExecutor(1))
        try:
            return await asyncio.gather(*(batcher.translate(texts, beam) for texts, beam in jobs))
        finally:
            await batcher.close()

    results = asyncio.run(run())
    assert results == [translator.translate(texts, beam=beam) for texts, beam in jobs]
    assert counting.calls == [(["Go.", "Hi.", "Who won?"], 1), (["I am cold.", "Thank you!", "Go."], 2)]


def test_concurrent_requests_are_batched_on_a_real_server(translator, demo_lines):
    n = 20
    texts = [line.split("\t")[0] for line in demo_lines[:n]]
    expected = translator.translate(texts)
    counting = CountingTranslator(translator)
    app = create_app(counting)

    def hold_the_first_call(batch: list[str]) -> None:
        # Keep the model busy until every other request waits, so the test does not depend on timing.
        deadline = time.monotonic() + 20
        while not counting.calls and len(batch) + app.state.batcher.queued_texts() < n:
            assert time.monotonic() < deadline, "the requests did not all arrive"
            time.sleep(0.005)

    counting.before_call = hold_the_first_call

    async def send_all(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            return await asyncio.gather(*(http.post("/translate", json={"texts": [t]}) for t in texts))

    with running_server(app) as url:
        responses = asyncio.run(send_all(url))
    assert [r.status_code for r in responses] == [200] * n
    assert [r.json()["translations"] for r in responses] == [[e] for e in expected]
    assert 1 <= len(counting.calls) <= 2 < n  # one call, or the held first call and one for all the others
    assert sorted(t for batch, _ in counting.calls for t in batch) == sorted(texts)


# --- the command (test_load.py runs it) -------------------------------------------------------------------


def test_serve_command_reports_a_busy_port(tiny_model_dir, capsys):
    busy = bind("127.0.0.1", 0)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        port = busy.getsockname()[1]
        assert main(["serve", str(tiny_model_dir), "--port", str(port), "--device", "cpu"]) == 1
    finally:
        busy.close()
        root.handlers[:], root.level = handlers, level  # main() logged onto the captured stderr
    assert f"charmt: error: cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port" \
        in capsys.readouterr().err


# --- fuzzing ----------------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
TEXT = st.text(st.characters(exclude_categories=()), max_size=70)  # lone surrogates too; a little over max_chars
BODY = (
    JSON
    | st.fixed_dictionaries({"texts": st.lists(TEXT, max_size=10)},
                            optional={"beam": st.integers(-3, MAX_BEAM + 3) | JSON})
    | st.fixed_dictionaries({"texts": JSON}, optional={"beam": st.integers(1, 3)})
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODY, path=st.sampled_from(["/translate", "/attention"]))
def test_fuzz_any_json_body_never_gives_a_server_error(client, translator, body, path):
    if path == "/attention" and isinstance(body, dict) and "texts" in body:
        body = {"text": body["texts"][0] if isinstance(body["texts"], list) and body["texts"] else body["texts"]}
    response = client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    assert isinstance(response.json(), dict)
    if response.status_code == 200 and path == "/translate":
        assert len(response.json()["translations"]) == len(body["texts"])
    elif response.status_code != 200:
        assert isinstance(response.json()["detail"], str)


def test_fuzz_raw_bytes_never_give_a_server_error(client):
    for raw in [b"", b"\xff\xfe", b'{"texts": ["\xff"]}', b'{"\\udfff": 1}', b"null", b"[" * 10_000,
                b'{"texts": [' + b'"a",' * 100_000 + b'"a"]}']:
        for path in ("/translate", "/attention"):
            response = client.post(path, content=raw, headers={"content-type": "application/json"})
            assert 400 <= response.status_code < 500, (raw[:40], response.status_code, response.text)
    for path, raw, escaped in [("/translate", b'{"texts": ["\\ud800"]}', "\\ud800"),
                               ("/attention", b'{"text": "\\udfff"}', "\\udfff")]:  # lone surrogates
        response = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 200
        assert f"replaced by <unk> (not in the training data): '{escaped}'" in response.json()["warnings"][0]


if schemathesis is None:

    @pytest.mark.skip(reason="pip install schemathesis to fuzz the API from its OpenAPI schema")
    def test_fuzz_api_from_its_openapi_schema():
        pass

else:
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    # Built at import time (schemathesis reads the schema then), so from an untrained attention model.
    api_schema = schemathesis.openapi.from_asgi(
        "/openapi.json", create_app(untrained_translator(attention="luong"), max_texts=8, max_chars=60))

    @api_schema.parametrize()
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    def test_fuzz_api_from_its_openapi_schema(case):
        case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                       response_schema_conformance])
