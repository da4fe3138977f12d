"""Load test: `charmt serve m-fr m-de --api-keys FILE` (the command, in a subprocess) on loopback answers 200
concurrent clients (two waves of 200 x 2 requests), spread over both models and both APIs (LibreTranslate's
/translate as JSON and as a form, charmt's /api/translate), with no error, every answer equal to the Translator's
own translation, and a server RSS that stays put. During the second wave a key over its rate limit gets 429 for
all but its first request, and the other clients still get every answer; no two inputs have the same translation,
so an answer handed to the wrong client shows. The second wave may add at most RSS_PER_REQUEST_KB per request to
the server's memory. Then it refuses more than --max-texts and stops cleanly on Ctrl+C.

Latency percentiles are printed (see them with `pytest -s tests/test_load.py`); nothing is asserted on time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import statistics
import time
from pathlib import Path

import httpx
import pytest
import test_serve
from test_serve import serve_process

from charmt.decode import Translator

CLIENTS = 200
REQUESTS_PER_CLIENT = 2
POOLS = 20  # connection pools the clients share, 10 connections each
WAVE_TIMEOUT_S = 120
RSS_PER_REQUEST_KB = 100  # what the second wave may add to the server's memory, per request
OVER_LIMIT_REQUESTS = 40  # sent with the key allowed one request a minute
pair_models = test_serve.pair_models  # the fixture: m-fr and m-de, trained once a session


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def client_request(sources: dict[str, list[str]], client: int, request: int) -> tuple[str, str, list[str]]:
    """(API, target, texts) of one request: each client keeps to one API and one pair; one to three texts,
    different for each client and request (LibreTranslate's form carries one)."""
    api = ["libretranslate-json", "libretranslate-form", "charmt"][client % 3]
    target = ["fr", "de"][client // 3 % 2]
    count = 1 if api == "libretranslate-form" else 1 + (client + request) % 3
    texts = sources[target]
    return api, target, [texts[(client * 7 + request * 13 + k * 5) % len(texts)] for k in range(count)]


async def send(http: httpx.AsyncClient, api: str, target: str, texts: list[str], key: str) -> tuple[int, object]:
    """(status, the translations) of one request; for an error, (status, the start of the body)."""
    pair = {"source": "en", "target": target, "api_key": key}
    if api == "charmt":
        response = await http.post("/api/translate", json={"texts": texts, **pair})
    elif api == "libretranslate-json":
        response = await http.post("/translate", json={"q": texts, **pair})
    else:
        response = await http.post("/translate", data={"q": texts[0], **pair})
    if response.status_code != 200:
        return response.status_code, response.text[:200]
    body = response.json()
    got = body["translations"] if api == "charmt" else body["translatedText"]
    return 200, got if isinstance(got, list) else [got]


async def wave(url: str, sources: dict[str, list[str]], over_limit: bool) -> tuple[dict, list, list[int]]:
    # Several connection pools: one httpx pool of 200 connections costs the client more CPU than the server uses.
    async with contextlib.AsyncExitStack() as stack:
        pools = [await stack.enter_async_context(httpx.AsyncClient(
            base_url=url, timeout=WAVE_TIMEOUT_S, limits=httpx.Limits(max_connections=CLIENTS // POOLS)))
            for _ in range(POOLS)]

        async def one_client(client: int):
            results = []
            for request in range(REQUESTS_PER_CLIENT):
                api, target, texts = client_request(sources, client, request)
                start = time.perf_counter()
                got = await send(pools[client % POOLS], api, target, texts, "load")
                results.append((api, time.perf_counter() - start, target, texts, got))
            return results

        async def over_its_limit() -> list[int]:
            async with httpx.AsyncClient(base_url=url, timeout=WAVE_TIMEOUT_S) as http:
                answers = await asyncio.gather(*(http.post("/api/translate", json={
                    "texts": ["Hi."], "source": "en", "target": "fr", "api_key": "tight"})
                    for _ in range(OVER_LIMIT_REQUESTS if over_limit else 0)))
            return [r.status_code for r in answers]

        done, statuses = await asyncio.wait_for(asyncio.gather(
            asyncio.gather(*(one_client(c) for c in range(CLIENTS))), over_its_limit()), WAVE_TIMEOUT_S)
    flat = [r for client in done for r in client]
    latencies: dict[str, list[float]] = {}
    for api, latency, *_ in flat:
        latencies.setdefault(api, []).append(latency)
    return latencies, [(api, target, texts, *got) for api, _, target, texts, got in flat], statuses


def percentiles(latencies: list[float]) -> str:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return f"p50 {1000 * cuts[49]:.0f} ms, p90 {1000 * cuts[89]:.0f} ms, p99 {1000 * cuts[98]:.0f} ms"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's RSS from /proc (Linux)")
@pytest.mark.slow
def test_200_concurrent_clients_over_two_models_and_both_apis(pair_models, demo_lines, tmp_path):
    candidates = sorted({line.split("\t")[0] for line in demo_lines[:300]})
    expected = {target: dict(zip(candidates, Translator.load(pair_models[target], device="cpu").translate(
        candidates))) for target in ("fr", "de")}
    # For each model, inputs whose translations all differ, so that an answer handed to the wrong client shows.
    seen = {target: collections.Counter(outputs.values()) for target, outputs in expected.items()}
    sources = {t: [s for s in candidates if seen[t][expected[t][s]] == 1][:60] for t in expected}
    assert all(len(texts) >= 10 for texts in sources.values())
    keys = tmp_path / "keys"
    keys.write_text("load\ntight 1\n", encoding="utf-8")
    log = tmp_path / "serve.log"
    with serve_process([pair_models["fr"], pair_models["de"]], "--max-texts", "3", "--api-keys", str(keys),
                       log_path=log) as (url, proc):
        assert url.startswith("http://127.0.0.1:")
        health = httpx.get(f"{url}/health").json()
        assert [(m["name"], m["target"]) for m in health["models"]] == [("m-fr", "fr"), ("m-de", "de")]
        rss = []
        for number in (1, 2):
            start = time.perf_counter()
            latencies, answers, statuses = asyncio.run(wave(url, sources, over_limit=number == 2))
            seconds = time.perf_counter() - start
            rss.append(rss_mb(proc.pid))
            errors = [answer for answer in answers if answer[3] != 200]
            assert not errors, f"{len(errors)} failed requests, e.g. {errors[:3]}"
            wrong = [(api, target, texts, got) for api, target, texts, _, got in answers
                     if got != [expected[target][t] for t in texts]]
            assert not wrong, f"{len(wrong)} wrong answers, e.g. {wrong[:3]}"
            print(f"\nwave {number}: {len(answers)} requests from {CLIENTS} concurrent clients in {seconds:.1f} s "
                  f"({len(answers) / seconds:.0f} requests/s); server RSS {rss[-1]:.0f} MB; latency: " + "; ".join(
                      f"{api} {percentiles(times)}" for api, times in sorted(latencies.items())))
        assert sorted(statuses) == [200] + [429] * (OVER_LIMIT_REQUESTS - 1)  # the key over its limit, wave 2
        too_many = {"source": "en", "target": "de", "api_key": "load"}
        assert httpx.post(f"{url}/api/translate", json={"texts": sources["de"][:4], **too_many}).status_code == 413
        refused = httpx.post(f"{url}/translate", json={"q": sources["de"][:4], **too_many})
        assert (refused.status_code, refused.json()) == (400, {"error": "Invalid request: request (4) exceeds text "
                                                                        "limit (3)"})
        proc.send_signal(signal.SIGINT)  # Ctrl+C is the normal way to stop it
        assert proc.wait(30) == 0
    assert log.read_text().rstrip().endswith("Stopped")
    limit = RSS_PER_REQUEST_KB * CLIENTS * REQUESTS_PER_CLIENT / 1024
    assert rss[1] - rss[0] < limit, f"server RSS grew from {rss[0]:.0f} to {rss[1]:.0f} MB (limit {limit:.0f} MB)"
