"""`charmt serve`: the model set (pairs, directories, refusals), charmt's own API (/api/translate, /api/attention,
/health) with FastAPI's TestClient, API keys and their limits, request batching on a real uvicorn server, the page's
files, and fuzzing (arbitrary JSON bodies; schemathesis over the whole OpenAPI schema, both APIs).

Shared with test_libretranslate.py, test_load.py and test_browser.py: `pair_models` (two small models, en->fr and
en->de, trained once a session), `running_server`, `serve_process`, `served`, `untrained_translator`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from importlib import resources
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charmt.checkpoint import ModelInfo
from charmt.cli import main
from charmt.config import MAX_BEAM, ModelConfig
from charmt.decode import Translator, attention_weights
from charmt.errors import ConfigError, ModelFormatError
from charmt.families.lstm import Seq2Seq
from charmt.server import Limits, ServedModel, bind, create_app, exposure_warning, find_models, load_models, url_of
from charmt.server.keys import ApiKeys, KeyLimits
from charmt.training import train
from charmt.vocab import Vocab

from conftest import DEMO, TINY_MODEL, TINY_SELECTION, TINY_TRAIN, write_pairs

try:
    import schemathesis
except ImportError:  # the schema-driven fuzz test is skipped with the remedy
    schemathesis = None

SENTENCES = ["Go.", "I am cold.", "Hi.", "He runs. She walks.", "Thank you!", "Who won?"]
# A small English-German corpus for the second test model, written for these tests.
GERMAN = """I am cold.\tMir ist kalt.
I am hot.\tMir ist heiß.
Go.\tGeh.
Hi.\tHallo.
Thank you!\tDanke!
Who won?\tWer hat gewonnen?
He runs.\tEr läuft.
She walks.\tSie geht.
She eats the bread.\tSie isst das Brot.
He sees the dog.\tEr sieht den Hund.
We have a big book.\tWir haben ein großes Buch.
Where is the key?\tWo ist der Schlüssel?
The cat is black.\tDie Katze ist schwarz.
I like cheese.\tIch mag Käse.
You want a small bird.\tDu willst einen kleinen Vogel.
It is snowing.\tEs schneit.
Good evening!\tGuten Abend!
My brother is cold.\tMein Bruder friert.
They eat the cake.\tSie essen den Kuchen.
I go to the bank.\tIch gehe zur Bank.
Is the key small?\tIst der Schlüssel klein?
Paul takes the bag.\tPaul nimmt die Tasche.
Where is the bird?\tWo ist der Vogel?
We do not drink coffee.\tWir trinken keinen Kaffee.
I do not have a car.\tIch habe kein Auto.
What time is it?\tWie spät ist es?
Marie sees the cat.\tMarie sieht die Katze.
The window is white.\tDas Fenster ist weiß.
Are the cars new?\tSind die Autos neu?
My sister buys a hat.\tMeine Schwester kauft einen Hut.""".splitlines()


# --- helpers shared with the other server tests -----------------------------------------------------------


@functools.cache
def _train_pair_models(root: Path) -> dict[str, Path]:
    # Cached by path, so each test module that imports the fixture below shares one training.
    corpora = {"fr": DEMO.read_text(encoding="utf-8").splitlines()[:150], "de": GERMAN}
    models = {}
    for target, lines in corpora.items():
        data = write_pairs(root / f"eng-{target}.txt", lines)
        torch.manual_seed(0)
        train(data, root / f"m-{target}", model_config=TINY_MODEL, train_config=TINY_TRAIN, preset="tiny",
              selection=replace(TINY_SELECTION, source_lang="en", target_lang=target))
        models[target] = root / f"m-{target}"
    return models


@pytest.fixture(scope="session")
def pair_models(tmp_path_factory) -> dict[str, Path]:
    """{"fr": m-fr, "de": m-de}: tiny attention models whose config.json says en->fr and en->de. Read-only."""
    root = tmp_path_factory.getbasetemp() / "pair-models"
    root.mkdir(exist_ok=True)
    return _train_pair_models(root)


def served(translator: Translator, source: str, target: str, name: str | None = None) -> ServedModel:
    return ServedModel(translator, name or f"m-{target}", source, target)


def untrained_translator(attention: str = "luong", *, source_texts=None, target_texts=None) -> Translator:
    """A random model with the demo corpus's vocabularies (or those of the texts given): cheap to build, and it
    decodes to the length limit, the slowest case."""
    pairs = [line.split("\t") for line in DEMO.read_text(encoding="utf-8").splitlines()]
    source = Vocab.build(source_texts or [p[0] for p in pairs])
    target = Vocab.build(target_texts or [p[1] for p in pairs])
    torch.manual_seed(0)
    config = ModelConfig(src_vocab_size=len(source), tgt_vocab_size=len(target), hidden_size=16, embedding_size=8,
                         attention=attention)
    info = ModelInfo(config, source, target, max_source_length=60, max_target_length=20)
    return Translator(Seq2Seq(config), info, torch.device("cpu"))


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
def serve_process(models: list, *options: str, log_path: Path, quiet: bool = True):
    """`charmt [-q] serve MODEL... --port 0` in a subprocess; yields (URL, process) once it listens."""
    command = [sys.executable, "-m", "charmt", *(["-q"] if quiet else []), "serve", *map(str, models), "--port", "0",
               "--device", "cpu", *options]
    # This checkout's charmt, whatever the virtual environment has installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env)
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
    """A Translator that records each model call (the batch the model saw)."""

    def __init__(self, translator: Translator):
        self._translator = translator
        self.calls: list[tuple[list[str], int, int]] = []
        self.before_call = None  # hook run in the model thread before each call

    def __getattr__(self, name):
        return getattr(self._translator, name)

    def translate_prepared(self, prepared, *, beam=1, n_best=1, **options):
        batch = [sentence for _, sentence in prepared.sentences]  # the server's one way into the model
        if self.before_call is not None:
            self.before_call(batch)
        self.calls.append((batch, beam, n_best))
        return self._translator.translate_prepared(prepared, beam=beam, n_best=n_best, **options)


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fr(pair_models) -> Translator:
    return Translator.load(pair_models["fr"], device="cpu")


@pytest.fixture(scope="module")
def de(pair_models) -> Translator:
    return Translator.load(pair_models["de"], device="cpu")


@pytest.fixture(scope="module")
def client(fr, de):
    """Two models, en->fr and en->de, with small limits."""
    with TestClient(create_app([served(fr, "en", "fr"), served(de, "en", "de")],
                               limits=Limits(max_texts=10, max_chars=60))) as c:
        yield c


@pytest.fixture(scope="module")
def plain_translator() -> Translator:
    return untrained_translator(attention="none")


def write_keys(path: Path, text: str) -> ApiKeys:
    path.write_text(text, encoding="utf-8")
    return ApiKeys.read(path)


# --- the models a server serves ---------------------------------------------------------------------------


def test_models_are_found_by_directory_with_their_pairs(pair_models, tiny_model_dir):
    fr, de = pair_models["fr"], pair_models["de"]
    assert find_models([str(fr), str(de)]) == [(fr, ("en", "fr")), (de, ("en", "de"))]
    assert find_models([str(fr.parent)]) == [(de, ("en", "de")), (fr, ("en", "fr"))]  # a directory of models
    assert find_models([f"{tiny_model_dir}=en:es", str(fr)]) == [(tiny_model_dir, ("en", "es")), (fr, ("en", "fr"))]
    assert find_models([f"{fr}=fr:en"]) == [(fr, ("fr", "en"))]  # the command line names the pair


@pytest.mark.parametrize("specs, error, message", [
    (["{fr}", "{fr}"], ConfigError, "{fr} and {fr} both translate en to fr; serve one model per language pair"),
    (["{fr}", "{tiny}=en:fr"], ConfigError, "{fr} and {tiny} both translate en to fr"),
    (["{tiny}"], ConfigError, "{tiny} does not say which languages it translates (its training file's name did not "
                              "say them): serve it as DIR=SOURCE:TARGET, e.g. {tiny}=en:fr, or train it with "
                              "--source-lang and --target-lang"),
    (["{fr}=EN:fr"], ConfigError, "'EN' is not a language code"),
    (["{parent}=en:fr"], ConfigError, "=SOURCE:TARGET names the pair of one model; put it after a model directory"),
    (["{empty}"], ModelFormatError, "{empty} is neither a model directory nor a directory of model directories"),
    (["{empty}/nothing"], ModelFormatError, "{empty}/nothing is not a model directory (no such directory)"),
])
def test_model_sets_that_are_refused_at_start(pair_models, tiny_model_dir, tmp_path, specs, error, message):
    paths = {"fr": pair_models["fr"], "tiny": tiny_model_dir, "parent": pair_models["fr"].parent, "empty": tmp_path}
    with pytest.raises(error) as raised:
        find_models([spec.format(**paths) for spec in specs])
    assert message.format(**paths) in str(raised.value)


def test_a_directory_of_models_skips_unfinished_ones_and_serves_an_export_or_its_source(pair_models, tmp_path,
                                                                                      caplog):
    import shutil

    root = tmp_path / "models"
    shutil.copytree(pair_models["fr"], root / "m-fr")
    fr_config, de_config = (json.loads((pair_models[lang] / "config.json").read_text()) for lang in ("fr", "de"))
    folders = {"training": de_config,  # a training run that has not saved its weights yet
               "m-fr-onnx": {**fr_config, "export": {"engine": "onnx", "from": "m-fr", "int8": True}},
               "half-onnx": {**de_config, "export": {"engine": "onnx", "from": "m-de"}}}
    for name, config in folders.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))
    for name in ("encoder.onnx", "decoder_step.onnx"):
        (root / "m-fr-onnx" / name).write_bytes(b"graph")
    (root / "half-onnx" / "encoder.onnx").write_bytes(b"graph")
    with caplog.at_level(logging.WARNING, logger="charmt"):
        assert find_models([str(root)]) == [(root / "m-fr-onnx", ("en", "fr"))]
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping {root / 'half-onnx'}: an incomplete ONNX export (no decoder_step.onnx)",
        f"skipping {root / 'training'}: config.json but no model.safetensors (a training run that has not saved "
        "yet?)",
        f"{root / 'm-fr-onnx'} is an export of {root / 'm-fr'} (both en->fr): serving {root / 'm-fr-onnx'}; "
        "name one of them to choose"]
    # Both named: still one model in two forms (--device cuda serves the source); one named: that one.
    both = [str(root / "m-fr"), str(root / "m-fr-onnx")]
    assert find_models(both) == [(root / "m-fr-onnx", ("en", "fr"))]
    assert find_models(both, prefer_export=False) == [(root / "m-fr", ("en", "fr"))]
    assert find_models([str(root / "m-fr")]) == [(root / "m-fr", ("en", "fr"))]
    with pytest.raises(ConfigError, match="both translate en to fr; serve one model per language pair"):
        find_models([str(root / "m-fr-onnx"), f"{pair_models['de']}=en:fr"])  # two different models


def test_create_app_checks_its_options(fr, de):
    with pytest.raises(ConfigError, match="--max-texts must be at least 1, got 0"):
        Limits(max_texts=0)
    with pytest.raises(ConfigError, match="--max-queue must be at least 1, got -1"):
        Limits(max_queue=-1)
    with pytest.raises(ConfigError, match="--timeout must be more than 0 seconds, got 0"):
        Limits(timeout_s=0)
    with pytest.raises(ConfigError, match=f"--beam must be between 1 and {MAX_BEAM}, got 0"):
        Limits(beam=0)
    with pytest.raises(ConfigError, match="two models translate the same language pair"):
        create_app([served(fr, "en", "fr"), served(de, "en", "fr")])


# --- /api/translate ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["fr", "de"])
def test_each_pair_is_translated_by_its_model(client, fr, de, target):
    translator = {"fr": fr, "de": de}[target]
    texts = SENTENCES + ["", "   "]
    response = client.post("/api/translate", json={"texts": texts, "source": "en", "target": target})
    assert response.status_code == 200
    body = response.json()
    assert body["translations"] == translator.translate(texts)
    assert body["translations"][-2:] == ["", ""]
    assert (body["model"], body["source"], body["target"], body["device"], body["beam"], body["warnings"],
            body["n_best"]) == (f"m-{target}", "en", target, "cpu", 1, [], None)


def test_the_two_models_translate_differently(fr, de):
    assert fr.translate(SENTENCES) != de.translate(SENTENCES)  # else the test above could not tell them apart


def test_beam_and_n_best_match_the_translator(client, de):
    response = client.post("/api/translate", json={"texts": ["I am cold.", "Go."], "source": "en", "target": "de",
                                                   "beam": 3, "n_best": 2})
    assert response.status_code == 200
    body = response.json()
    expected = de.translate_n_best(["I am cold.", "Go."], beam=3, n_best=2)
    assert body["translations"] == [hyps[0].text for hyps in expected]
    assert body["n_best"] == [[{"text": h.text, "score": pytest.approx(h.score)} for h in hyps] for hyps in expected]


def test_one_model_needs_no_pair(fr):
    with TestClient(create_app([served(fr, "en", "fr")])) as client:
        response = client.post("/api/translate", json={"texts": ["Go."]})
    assert response.status_code == 200 and response.json()["translations"] == fr.translate(["Go."])


def test_unknown_characters_are_translated_and_named_in_a_warning(client, fr):
    texts = ["Go Ω.", "Hi."]
    response = client.post("/api/translate", json={"texts": texts, "source": "en", "target": "fr"})
    assert response.status_code == 200
    body = response.json()
    assert body["translations"] == fr.translate(texts)
    assert body["warnings"] == ["1 unknown character(s) replaced by <unk> (not in the training data): 'Ω'"]


PAIR = {"source": "en", "target": "fr"}


@pytest.mark.parametrize("body, status, message", [
    ({"texts": ["Hi."]}, 400, "name the language pair with source and target; this server serves en->fr, en->de"),
    ({"texts": ["Hi."], "source": "en", "target": "es"}, 400, "es is not supported; this server serves en->fr, en->de"),
    ({"texts": ["Hi."] * 11, **PAIR}, 413, "11 texts in one request; this server accepts at most 10 (--max-texts)"),
    ({"texts": ["Hi.", "x" * 61], **PAIR}, 413, "text 1 has 61 characters; this server accepts at most 60 per text"),
    ({"texts": ["Hi."], "beam": 0, **PAIR}, 422, f"beam must be between 1 and {MAX_BEAM}, got 0"),
    ({"texts": ["Hi."], "beam": MAX_BEAM + 1, **PAIR}, 422, f"beam must be between 1 and {MAX_BEAM}, got 11"),
    ({"texts": ["Hi."], "beam": 2, "n_best": 3, **PAIR}, 422, "n_best (3) must be between 1 and beam (2): raise beam"),
    ({"texts": ["Hi."], "beam": 2, "n_best": 0, **PAIR}, 422, "n_best (0) must be between 1 and beam (2)"),
    ({"texts": "Hi.", **PAIR}, 422, "texts: Input should be a valid list"),
    ({"texts": ["Hi.", 3], **PAIR}, 422, "texts.1: Input should be a valid string"),
    ({"text": ["Hi."]}, 422, "texts: Field required; text: Extra inputs are not permitted"),
    ([1, 2], 422, "Input should be a valid dictionary"),
])
def test_limits_and_invalid_bodies_are_clear_4xx(client, body, status, message):
    response = client.post("/api/translate", json=body)
    assert response.status_code == status
    assert message in response.json()["detail"]


def test_malformed_json_is_422(client):
    response = client.post("/api/translate", content=b'{"texts": ["Hi."]',
                           headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("invalid request: the body is not valid JSON")


@pytest.mark.parametrize("path, key", [("/api/translate", "detail"), ("/translate", "error")])
def test_oversized_body_is_refused_before_parsing(client, path, key):
    response = client.post(path, content=b" " * 2_000_000, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "larger than this server accepts" in response.json()[key]


def test_library_errors_become_400_with_their_message(fr):
    class Failing(CountingTranslator):
        def translate_prepared(self, prepared, **options):
            raise ConfigError("the model is unhappy; try again")

    with TestClient(create_app([served(Failing(fr), "en", "fr")])) as client:
        response = client.post("/api/translate", json={"texts": ["Hi."]})
    assert (response.status_code, response.json()) == (400, {"detail": "the model is unhappy; try again"})


# --- /health, OpenAPI, the page ---------------------------------------------------------------------------


def test_health_reports_each_model_with_its_memory_and_load_time(client, pair_models):
    body = client.get("/health").json()
    assert {k: body[k] for k in ("status", "max_texts", "max_chars", "max_beam", "beam", "api_keys")} == {
        "status": "ok", "max_texts": 10, "max_chars": 60, "max_beam": MAX_BEAM, "beam": 1, "api_keys": False}
    assert body["rss_mb"] > 0
    fr = body["models"][0]
    assert {k: v for k, v in fr.items() if k not in ("memory_mb", "load_s")} == {
        "name": "m-fr", "source": "en", "target": "fr", "source_name": "English", "target_name": "French",
        "source_rtl": False, "target_rtl": False, "attention": True, "device": "cpu"}
    assert [m["target"] for m in body["models"]] == ["fr", "de"]
    parameters = sum(p.numel() for p in Translator.load(pair_models["fr"], device="cpu").model.parameters())
    assert fr["memory_mb"] == pytest.approx(4 * parameters / 2**20, abs=0.01)  # float32 weights
    loaded = load_models([str(pair_models["fr"]), str(pair_models["de"])], device="cpu")
    assert [(m.name, m.pair) for m in loaded] == [("m-fr", ("en", "fr")), ("m-de", ("en", "de"))]
    assert all(m.load_s > 0 for m in loaded)


def test_openapi_describes_both_apis(client):
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/api/translate", "/api/attention", "/health", "/translate", "/languages",
                                    "/detect", "/frontend/settings", "/translate_file", "/suggest"}
    assert set(schema["paths"]["/api/translate"]["post"]["responses"]) >= {"200", "400", "403", "413", "422", "429"}
    body = schema["paths"]["/translate"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/x-www-form-urlencoded"}
    assert set(schema["paths"]["/languages"]) == {"get", "post"}


def test_page_and_its_files_are_served_with_no_outside_resources(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for needle in ('<select id="pair"', '<textarea id="texts"', '<select id="beam"', '<select id="n-best"',
                   '<input id="api-key"', '<button id="translate"', '<ol id="results"', '<table id="heatmap"',
                   'src="static/app.js"', 'href="static/style.css"'):
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
def test_attention_weights_follow_the_greedy_translation(fr, sentence):
    source, output, weights = attention_weights(fr, sentence)
    assert "".join(source) == " ".join(sentence.split())
    assert "".join(output) == fr.translate([sentence], split=False)[0]
    assert len(weights) == len(output) and all(len(row) == len(source) for row in weights)
    assert all(abs(sum(row) - 1) < 1e-4 and min(row) >= 0 for row in weights)


def test_attention_weights_need_attention_and_a_sentence(fr, plain_translator):
    with pytest.raises(ConfigError, match="trained with --attention none"):
        attention_weights(plain_translator, "Go.")
    with pytest.raises(ConfigError, match="non-empty sentence"):
        attention_weights(fr, " \t ")


@pytest.mark.parametrize("target", ["fr", "de"])
def test_attention_endpoint(client, fr, de, target):
    response = client.post("/api/attention", json={"text": "I am cold.", "source": "en", "target": target})
    assert response.status_code == 200
    body = response.json()
    source, output, weights = attention_weights({"fr": fr, "de": de}[target], "I am cold.")
    assert (body["source"], body["output"], body["translation"]) == (source, output, "".join(output))
    assert body["weights"] == [[round(w, 4) for w in row] for row in weights]


@pytest.mark.parametrize("body, status, message", [
    ({"text": " ", **PAIR}, 422, "text is empty"),
    ({"text": "x" * 61, **PAIR}, 413, "text has 61 characters; this server accepts at most 60"),
    ({"texts": ["Go."]}, 422, "text: Field required"),
    ({"text": "Go.", "source": "fr", "target": "en"}, 400, "fr is not supported; this server serves en->fr, en->de"),
])
def test_attention_endpoint_errors(client, body, status, message):
    response = client.post("/api/attention", json=body)
    assert response.status_code == status
    assert message in response.json()["detail"]


def test_attention_endpoint_without_attention_is_409(plain_translator):
    with TestClient(create_app([served(plain_translator, "en", "fr", name="plain")])) as client:
        assert client.get("/health").json()["models"][0]["attention"] is False
        response = client.post("/api/attention", json={"text": "Go."})
        assert response.status_code == 409
        assert "model 'plain' has no attention weights to show" in response.json()["detail"]
        assert client.post("/api/translate", json={"texts": ["Go."]}).status_code == 200


# --- API keys ---------------------------------------------------------------------------------------------


def test_api_key_file_is_read_with_its_limits(tmp_path):
    keys = write_keys(tmp_path / "keys", "# key  requests/minute  characters/request\nalpha 60 5000\n\n"
                                         "beta   # no limits\ngamma 0 300\n")
    assert keys.keys == {"alpha": KeyLimits(60, 5000), "beta": KeyLimits(None, None), "gamma": KeyLimits(None, 300)}


@pytest.mark.parametrize("text, message", [
    ("alpha sixty\n", "keys, line 1: write KEY [REQUESTS_PER_MINUTE [CHARACTERS_PER_REQUEST]] with whole numbers"),
    ("alpha 1 2 3\n", "keys, line 1: write KEY"),
    ("alpha\n# again\nalpha 5\n", "keys, line 3: the key alph... is listed twice"),
    ("# none\n", "the API key file holds no key; add one per line, or leave out --api-keys"),
])
def test_bad_api_key_files_are_refused(tmp_path, text, message):
    with pytest.raises(ConfigError) as raised:
        write_keys(tmp_path / "keys", text)
    assert message in str(raised.value)
    with pytest.raises(ConfigError, match="cannot read the API key file"):
        ApiKeys.read(tmp_path / "missing")


@pytest.fixture(scope="module")
def keyed_client(fr, tmp_path_factory):
    keys = write_keys(tmp_path_factory.mktemp("keys") / "keys", "open\ntight 2\nshort 0 12\n")
    with TestClient(create_app([served(fr, "en", "fr")], api_keys=keys)) as client:
        yield client


@pytest.mark.parametrize("key, status, message", [
    (None, 400, "Please contact the server operator to get an API key"),
    ("", 400, "Please contact the server operator to get an API key"),
    ("wrong", 403, "Invalid API key"),
    ("short", 400, "Invalid request: request (13) exceeds text limit (12)"),
])
def test_requests_need_a_known_key_within_its_limits(keyed_client, key, status, message):
    body = {"texts": ["I am cold.", "Hi."], "api_key": key}
    assert keyed_client.post("/api/translate", json=body).json() == {"detail": message}
    form = {"q": "I am cold.Hi.", "source": "en", "target": "fr", **({"api_key": key} if key is not None else {})}
    response = keyed_client.post("/translate", data=form)
    assert (response.status_code, response.json()) == (status, {"error": message})
    assert keyed_client.get("/health").json()["api_keys"] is True
    assert keyed_client.get("/frontend/settings").json()["keyRequired"] is True


def test_a_key_over_its_rate_gets_429_and_the_others_go_on(keyed_client):
    def ask(key: str) -> httpx.Response:
        return keyed_client.post("/api/translate", json={"texts": ["Hi."], "api_key": key})

    assert [ask("tight").status_code for _ in range(2)] == [200, 200]
    over = ask("tight")
    assert (over.status_code, over.json()) == (429, {"detail": "Slowdown: 2 per 1 minute"})
    response = keyed_client.post("/translate", json={"q": "Hi.", "source": "en", "target": "fr", "api_key": "tight"})
    assert (response.status_code, response.json()) == (429, {"error": "Slowdown: 2 per 1 minute"})
    assert [ask("open").status_code for _ in range(5)] == [200] * 5


@pytest.mark.parametrize("host, keys, warned", [
    ("127.0.0.1", False, False), ("localhost", False, False), ("::1", False, False),
    ("0.0.0.0", False, True), ("192.0.2.7", False, True), ("0.0.0.0", True, False),
])
def test_leaving_loopback_without_keys_is_warned_about(host, keys, warned):
    message = exposure_warning(host, has_keys=keys)
    assert (message is not None) == warned
    if warned:
        assert message == (f"listening on {host} without --api-keys: anyone who can reach this machine can use the "
                           "models; give --api-keys FILE, or use --host 127.0.0.1 to serve this machine only")


# --- batching ---------------------------------------------------------------------------------------------


def test_admission_groups_by_beam_and_keeps_each_requests_results(fr):
    from charmt.server.admission import Admission

    counting = CountingTranslator(fr)
    model = served(counting, "en", "fr")
    jobs = [(["Go.", "Hi."], 1, 1), (["I am cold."], 2, 2), ([], 1, 1), (["Who won?"], 1, 1),
            (["Thank you!", "Go."], 2, 1)]

    async def run():
        admission = Admission([model], Limits(), batch_wait_s=0.2)  # long enough for all five to arrive
        try:
            return await asyncio.gather(*(admission.translate(model, texts, beam=beam, n_best=n,
                                                              deadline=admission.deadline())
                                          for texts, beam, n in jobs))
        finally:
            admission.stop()

    def plain(results):  # greedy scores are NaN, which equals nothing; batch-mates change the last digits
        return [[(h.text, None if math.isnan(h.score) else round(h.score, 4)) for h in hyps] for hyps in results]

    results = asyncio.run(run())
    assert [plain(r) for r, _ in results] == [plain(fr.translate_n_best(texts, beam=beam, n_best=n))
                                              for texts, beam, n in jobs]
    assert counting.calls == [(["Go.", "Hi.", "Who won?"], 1, 1), (["I am cold.", "Thank you!", "Go."], 2, 2)]


def test_concurrent_requests_are_batched_on_a_real_server(fr, demo_lines):
    n = 20
    texts = [line.split("\t")[0] for line in demo_lines[:n]]
    expected = fr.translate(texts)
    counting = CountingTranslator(fr)
    model = served(counting, "en", "fr")
    app = create_app([model])

    def hold_the_first_call(batch: list[str]) -> None:
        # Keep the model busy until every other request waits, so the test does not depend on timing.
        deadline = time.monotonic() + 20
        while not counting.calls and app.state.server.admission.queued() < n:
            assert time.monotonic() < deadline, "the requests did not all arrive"
            time.sleep(0.005)

    counting.before_call = hold_the_first_call

    async def send_all(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            return await asyncio.gather(*(http.post("/api/translate", json={"texts": [t]}) for t in texts))

    with running_server(app) as url:
        responses = asyncio.run(send_all(url))
    assert [r.status_code for r in responses] == [200] * n
    assert [r.json()["translations"] for r in responses] == [[e] for e in expected]
    assert 1 <= len(counting.calls) <= 2 < n  # one call, or the held first call and one for all the others
    sentences = [sentence for _, sentence in fr.prepare(texts).sentences]
    assert sorted(t for batch, _, _ in counting.calls for t in batch) == sorted(sentences)


# --- the command (test_load.py and test_libretranslate.py run it) -----------------------------------------


def test_serve_command_reports_a_busy_port(pair_models, capsys):
    busy = bind("127.0.0.1", 0)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        port = busy.getsockname()[1]
        assert main(["serve", str(pair_models["fr"]), "--port", str(port), "--device", "cpu"]) == 1
    finally:
        busy.close()
        root.handlers[:], root.level = handlers, level  # main() logged onto the captured stderr
    assert f"charmt: error: cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port" \
        in capsys.readouterr().err


def test_serve_command_refuses_two_models_for_one_pair(pair_models, capsys):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert main(["serve", str(pair_models["fr"]), f"{pair_models['de']}=en:fr", "--device", "cpu"]) == 1
    finally:
        root.handlers[:], root.level = handlers, level
    assert "both translate en to fr; serve one model per language pair" in capsys.readouterr().err


# --- fuzzing ----------------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
TEXT = st.text(st.characters(exclude_categories=()), max_size=70)  # lone surrogates too; a little over max_chars
CODE = st.sampled_from(["en", "fr", "de", "EN", "xx"]) | JSON
BODY = (
    JSON
    | st.fixed_dictionaries({"texts": st.lists(TEXT, max_size=10)},
                            optional={"beam": st.integers(-3, MAX_BEAM + 3) | JSON, "n_best": st.integers(0, 4),
                                      "source": CODE, "target": CODE})
    | st.fixed_dictionaries({"texts": JSON, "source": st.just("en"), "target": st.just("de")},
                            optional={"beam": st.integers(1, 3)})
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODY, path=st.sampled_from(["/api/translate", "/api/attention"]))
def test_fuzz_any_json_body_never_gives_a_server_error(client, body, path):
    if path == "/api/attention" and isinstance(body, dict) and "texts" in body:
        texts = body.pop("texts")
        body["text"] = texts[0] if isinstance(texts, list) and texts else texts
        body.pop("beam", None), body.pop("n_best", None)
    response = client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    assert isinstance(response.json(), dict)
    if response.status_code == 200 and path == "/api/translate":
        assert len(response.json()["translations"]) == len(body["texts"])
    elif response.status_code != 200:
        assert isinstance(response.json()["detail"], str)


def test_fuzz_raw_bytes_never_give_a_server_error(client):
    for raw in [b"", b"\xff\xfe", b'{"texts": ["\xff"]}', b'{"\\udfff": 1}', b"null", b"[" * 10_000,
                b'{"texts": [' + b'"a",' * 100_000 + b'"a"]}']:
        for path in ("/api/translate", "/api/attention", "/translate", "/detect"):
            response = client.post(path, content=raw, headers={"content-type": "application/json"})
            assert 400 <= response.status_code < 500, (raw[:40], response.status_code, response.text)
    for path, raw, escaped in [("/api/translate", b'{"texts": ["\\ud800"], "source": "en", "target": "fr"}', "\\ud800"),
                               ("/api/attention", b'{"text": "\\udfff", "source": "en", "target": "fr"}', "\\udfff")]:
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

    # Built at import time (schemathesis reads the schema then), so from untrained models: two pairs, both APIs.
    api_schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(
        [served(untrained_translator(), "en", "fr"), served(untrained_translator(), "en", "de")],
        limits=Limits(max_texts=8, max_chars=60)))

    @api_schema.parametrize()
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    def test_fuzz_api_from_its_openapi_schema(case):
        case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                       response_schema_conformance])
