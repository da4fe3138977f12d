"""Load test: `charmt serve` (the command, in a subprocess) on loopback answers 200 concurrent clients (two
waves of 200 x 2 requests) with no error, every answer equal to the Translator's own translation, and a server
RSS that stays put; then it refuses more than --max-texts and stops cleanly on Ctrl+C.

Latency percentiles are printed (see them with `pytest -s tests/test_load.py`); nothing is asserted on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
import time
from pathlib import Path

import httpx
import pytest
from test_serve import serve_process

from charmt.decode import Translator

CLIENTS = 200
REQUESTS_PER_CLIENT = 2
POOLS = 20  # connection pools the clients share, 10 connections each
WAVE_TIMEOUT_S = 60
RSS_GROWTH_LIMIT_MB = 50


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def client_texts(sources: list[str], client: int, request: int) -> list[str]:
    """Requests of one to three texts, different for each client and request."""
    count = 1 + (client + request) % 3
    return [sources[(client * 7 + request * 13 + k * 5) % len(sources)] for k in range(count)]


async def wave(url: str, sources: list[str]) -> tuple[list[float], list[tuple[list[str], httpx.Response]]]:
    # Several connection pools: one httpx pool of 200 connections costs the client more CPU than the server uses.
    async with contextlib.AsyncExitStack() as stack:
        pools = [await stack.enter_async_context(httpx.AsyncClient(
            base_url=url, timeout=WAVE_TIMEOUT_S, limits=httpx.Limits(max_connections=CLIENTS // POOLS)))
            for _ in range(POOLS)]

        async def one_client(client: int):
            http = pools[client % POOLS]
            results = []
            for request in range(REQUESTS_PER_CLIENT):
                texts = client_texts(sources, client, request)
                start = time.perf_counter()
                response = await http.post("/translate", json={"texts": texts})
                results.append((time.perf_counter() - start, texts, response))
            return results

        done = await asyncio.wait_for(asyncio.gather(*(one_client(c) for c in range(CLIENTS))), WAVE_TIMEOUT_S)
    flat = [r for client in done for r in client]
    return [latency for latency, _, _ in flat], [(texts, response) for _, texts, response in flat]


def percentiles(latencies: list[float]) -> str:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return f"p50 {1000 * cuts[49]:.0f} ms, p90 {1000 * cuts[89]:.0f} ms, p99 {1000 * cuts[98]:.0f} ms"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's RSS from /proc (Linux)")
def test_200_concurrent_clients_get_the_right_answers(tiny_model_dir, demo_lines, tmp_path):
    sources = sorted({line.split("\t")[0] for line in demo_lines[:300]})[:60]
    translator = Translator.load(tiny_model_dir, device="cpu")
    expected = dict(zip(sources, translator.translate(sources)))
    log = tmp_path / "serve.log"
    with serve_process(tiny_model_dir, "--max-texts", "3", log_path=log) as (url, proc):
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/health").json()["model"] == tiny_model_dir.name
        rss = []
        for number in (1, 2):
            start = time.perf_counter()
            latencies, answers = asyncio.run(wave(url, sources))
            seconds = time.perf_counter() - start
            rss.append(rss_mb(proc.pid))
            errors = [(texts, r.status_code, r.text[:200]) for texts, r in answers if r.status_code != 200]
            assert not errors, f"{len(errors)} failed requests, e.g. {errors[:3]}"
            wrong = [(texts, r.json()["translations"]) for texts, r in answers
                     if r.json()["translations"] != [expected[t] for t in texts]]
            assert not wrong, f"{len(wrong)} wrong answers, e.g. {wrong[:3]}"
            print(f"\nwave {number}: {len(answers)} requests from {CLIENTS} concurrent clients in {seconds:.1f} s "
                  f"({len(answers) / seconds:.0f} requests/s); latency {percentiles(latencies)}; "
                  f"server RSS {rss[-1]:.0f} MB")
        assert httpx.post(f"{url}/translate", json={"texts": sources[:4]}).status_code == 413  # --max-texts 3
        proc.send_signal(signal.SIGINT)  # Ctrl+C is the normal way to stop it
        assert proc.wait(30) == 0
    assert log.read_text().rstrip().endswith("Stopped")
    assert rss[1] - rss[0] < RSS_GROWTH_LIMIT_MB, f"server RSS grew from {rss[0]:.0f} to {rss[1]:.0f} MB"
