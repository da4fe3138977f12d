"""`charmt serve`: one server for several models, one per language pair, behind two HTTP APIs and a web page.

    LibreTranslate's API (libretranslate.py)   POST /translate, GET|POST /languages, POST /detect,
                                               GET /frontend/settings: what LibreTranslate's clients talk to
    charmt's own API (api.py)                  POST /api/translate (beam, n-best), POST /api/attention
    GET /health                                status, the models (memory, load time) and the server's limits
    GET /                                      the web page (src/charmt/static), which only talks to this server

Each model is loaded once. Concurrent requests for a model are gathered into one model call by its `_Batcher`;
one thread runs the model calls of every model, one call at a time. This module imports neither PyTorch nor
FastAPI (the command line reads its defaults); `create_app` imports them (`pip install 'charmt[serve]'`).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from .config import DEFAULT_MAX_CHARS, DEFAULT_MAX_TEXTS, MAX_BEAM  # (defined there for the command line's help)
from .errors import CharmtError, ConfigError, ModelFormatError
from .languages import check_code, is_rtl, name_of

if TYPE_CHECKING:
    from .api_keys import ApiKeys
    from .decode import Hypothesis, Translator

log = logging.getLogger("charmt")

BATCH_WAIT_S = 0.005  # how long the first request of a batch waits for others to join it
MAX_BATCH_TEXTS = 128  # texts per model call (the Translator's default batch size)
STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
# The page loads nothing from anywhere else.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Refusal(CharmtError):
    """A request the server answers with an HTTP error status; each API words the body its own way."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def shown(value: object, limit: int = 40) -> str:
    """A piece of a request, safe to quote in an answer: shortened, lone surrogates escaped (no UTF-8 for them)."""
    text = str(value)
    text = text if len(text) <= limit else text[:limit] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _install_hint(err: ImportError) -> ConfigError:
    return ConfigError(f"charmt serve needs FastAPI and uvicorn ({err.name} is missing): pip install 'charmt[serve]'")


# --- the models -------------------------------------------------------------------------------------------


@dataclass
class ServedModel:
    """One loaded model and the language pair it serves."""

    translator: Translator
    name: str
    source: str
    target: str
    load_s: float = 0.0  # seconds `Translator.load` took
    batcher: _Batcher | None = field(default=None, repr=False)  # set by create_app

    @property
    def pair(self) -> tuple[str, str]:
        return self.source, self.target

    @property
    def has_attention(self) -> bool:
        return self.translator.info.model.has_attention

    def memory_mb(self) -> float:
        """Weights and buffers of the model (what each further model adds, less the engine's own caches); for an
        ONNX export, the size of its graphs."""
        return self.translator.engine.memory_bytes() / 2**20

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "target": self.target,
                "source_name": name_of(self.source), "target_name": name_of(self.target),
                "source_rtl": is_rtl(self.source), "target_rtl": is_rtl(self.target), "attention": self.has_attention,
                "device": str(self.translator.device), "memory_mb": round(self.memory_mb(), 2),
                "load_s": round(self.load_s, 3)}


_PAIR = re.compile(r"(?P<path>.+)=(?P<source>[^=:/\\]+):(?P<target>[^=:/\\]+)")


def _parse_spec(spec: str) -> tuple[Path, tuple[str, str] | None]:
    """`DIR` or `DIR=SRC:TGT` (languages for a model whose config.json does not name them)."""
    match = _PAIR.fullmatch(spec)
    if match is None or Path(spec).exists():
        return Path(spec), None
    return Path(match["path"]), (check_code(match["source"]), check_code(match["target"]))


def find_models(specs: list[str]) -> list[tuple[Path, tuple[str, str]]]:
    """(model directory, (source, target)) for each `DIR[=SRC:TGT]`; a directory that is not a model but holds
    models stands for all of them. Refuses models without language codes and two models for one pair."""
    from .checkpoint import is_model_dir, load_info

    found: list[tuple[Path, tuple[str, str]]] = []
    for spec in specs:
        path, pair = _parse_spec(spec)
        inside = sorted(p for p in path.iterdir() if is_model_dir(p)) if path.is_dir() and not is_model_dir(path) \
            else [path]
        if not inside:
            raise ModelFormatError(f"{path} is neither a model directory nor a directory of model directories")
        if pair is not None and len(inside) > 1:
            raise ConfigError(f"{spec}: =SOURCE:TARGET names the pair of one model; put it after a model directory")
        for directory in inside:
            info = load_info(directory)
            codes = pair or (info.source_lang, info.target_lang)
            if None in codes:
                raise ConfigError(f"{directory} does not say which languages it translates (its training file's name "
                                  "did not say them): serve it as DIR=SOURCE:TARGET, e.g. "
                                  f"{directory}=en:fr, or train it with --source-lang and --target-lang")
            found.append((directory, codes))
    pairs: dict[tuple[str, str], Path] = {}
    for directory, pair in found:
        if pair in pairs:
            raise ConfigError(f"{pairs[pair]} and {directory} both translate {pair[0]} to {pair[1]}; serve one model "
                              "per language pair")
        pairs[pair] = directory
    return found


def load_models(specs: list[str], device: str = "auto") -> list[ServedModel]:
    """Load each model of `specs` (see `find_models`) once, timing it."""
    from .decode import Translator

    models = []
    for directory, (source, target) in find_models(specs):
        start = time.perf_counter()
        translator = Translator.load(directory, device=device)
        models.append(ServedModel(translator, directory.resolve().name, source, target,
                                  load_s=time.perf_counter() - start))
    return models


def process_rss_mb() -> float | None:
    """This process's resident memory (Linux), else None."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# --- batching ---------------------------------------------------------------------------------------------


@dataclass
class _Job:
    texts: list[str]
    beam: int
    n_best: int
    future: asyncio.Future


class _Batcher:
    """Gathers the requests that arrive within a few milliseconds (or while the model is busy) into one
    `Translator.translate_n_best` call per beam size, run in the model thread, and hands each its results."""

    def __init__(self, translator: Translator, executor: ThreadPoolExecutor, *, wait_s: float = BATCH_WAIT_S,
                 max_batch_texts: int = MAX_BATCH_TEXTS):
        self.translator, self.executor = translator, executor
        self.wait_s, self.max_batch_texts = wait_s, max_batch_texts
        self._pending: collections.deque[_Job] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def translate(self, texts: list[str], beam: int = 1, n_best: int = 1) -> list[list[Hypothesis]]:
        """Up to `n_best` hypotheses per text, best first (n_best <= beam)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            # One worker per event loop: a test client may run each request in a fresh loop.
            self._loop, self._pending, self._wake = loop, collections.deque(), asyncio.Event()
            self._task = loop.create_task(self._work())
        job = _Job(texts, beam, n_best, loop.create_future())
        self._pending.append(job)
        self._wake.set()
        return await job.future

    def queued_texts(self) -> int:
        """Texts waiting for the model (safe to read from any thread)."""
        return sum(len(job.texts) for job in list(self._pending))

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._task = None

    async def _work(self) -> None:
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            if self.wait_s:
                await asyncio.sleep(self.wait_s)
            batch: list[_Job] = []
            size = 0
            while self._pending and (not batch or size + len(self._pending[0].texts) <= self.max_batch_texts):
                job = self._pending.popleft()
                if not job.future.done():  # a client that went away needs no translation
                    batch.append(job)
                    size += len(job.texts)
            for beam in sorted({job.beam for job in batch}):
                await self._run([job for job in batch if job.beam == beam], beam)

    async def _run(self, jobs: list[_Job], beam: int) -> None:
        texts = [text for job in jobs for text in job.texts]
        n_best = max(job.n_best for job in jobs)  # beam search finds the same best ones whatever n_best asks
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.executor, lambda: self.translator.translate_n_best(
                texts, beam=beam, n_best=n_best, batch_size=self.max_batch_texts, warn=False))
        except Exception as err:  # reaches the requests' handlers, which answer for it
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result([hyps[: job.n_best] for hyps in results[start : start + len(job.texts)]])
            start += len(job.texts)


# --- the server's state, shared by both APIs --------------------------------------------------------------


@dataclass
class Server:
    """What the request handlers share (`request.app.state.server`)."""

    models: list[ServedModel]
    max_texts: int = DEFAULT_MAX_TEXTS
    max_chars: int = DEFAULT_MAX_CHARS
    beam: int = 1  # the LibreTranslate API's beam size (its requests cannot choose one)
    api_keys: ApiKeys | None = None
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="charmt-model"))

    def model_for(self, source: str, target: str) -> ServedModel | None:
        return next((m for m in self.models if m.pair == (source, target)), None)

    def pairs_text(self) -> str:
        return ", ".join(f"{m.source}->{m.target}" for m in self.models)

    def check_key(self, api_key: object) -> None:
        """With --api-keys: refuse a missing or unknown key, or one over its rate (see api_keys.py)."""
        if self.api_keys is not None:
            self.api_keys.check(api_key)

    def check_key_chars(self, api_key: object, chars: int) -> None:
        if self.api_keys is not None:
            self.api_keys.check_chars(api_key, chars)

    def check_texts(self, texts: list[str]) -> None:
        """The server's own limits (--max-texts, --max-chars), as 413 with a remedy."""
        if len(texts) > self.max_texts:
            raise Refusal(413, f"{len(texts)} texts in one request; this server accepts at most {self.max_texts} "
                               "(--max-texts); send them in several requests")
        for i, text in enumerate(texts):
            if len(text) > self.max_chars:
                which = "text" if len(texts) == 1 else f"text {i}"
                raise Refusal(413, f"{which} has {len(text)} characters; this server accepts at most {self.max_chars} "
                                   "per text (--max-chars); split it into shorter texts")

    def health(self) -> dict:
        rss = process_rss_mb()
        return {"status": "ok", "models": [m.describe() for m in self.models], "max_texts": self.max_texts,
                "max_chars": self.max_chars, "max_beam": MAX_BEAM, "beam": self.beam,
                "api_keys": self.api_keys is not None, "rss_mb": None if rss is None else round(rss, 1)}


# --- the application --------------------------------------------------------------------------------------


def create_app(models: list[ServedModel], *, max_texts: int = DEFAULT_MAX_TEXTS, max_chars: int = DEFAULT_MAX_CHARS,
               beam: int = 1, api_keys: ApiKeys | None = None, batch_wait_s: float = BATCH_WAIT_S):
    """The FastAPI application serving `models` (one per language pair); run it with uvicorn, or `serve`."""
    try:
        from fastapi import FastAPI
        from fastapi.exceptions import RequestValidationError

        from . import api, libretranslate
    except ImportError as err:
        raise _install_hint(err) from None
    if max_texts < 1 or max_chars < 1:
        raise ConfigError("--max-texts and --max-chars must be at least 1")
    if not 1 <= beam <= MAX_BEAM:
        raise ConfigError(f"--beam must be between 1 and {MAX_BEAM}, got {beam}")
    if not models:
        raise ConfigError("give at least one model directory to serve")
    pairs = [m.pair for m in models]
    if len(set(pairs)) < len(pairs):
        raise ConfigError("two models translate the same language pair; serve one model per pair")
    server = Server(list(models), max_texts=max_texts, max_chars=max_chars, beam=beam, api_keys=api_keys)
    for model in server.models:
        model.batcher = _Batcher(model.translator, server.executor, wait_s=batch_wait_s)

    @asynccontextmanager
    async def lifespan(app):
        yield
        for model in server.models:
            await model.batcher.close()

    app = FastAPI(title="charmt", version=_version(), lifespan=lifespan,
                  description=api.DESCRIPTION)
    app.state.server = server
    app.add_middleware(_LimitBody, max_body=_max_body(max_texts, max_chars))
    app.add_exception_handler(Refusal, _refusal)
    app.add_exception_handler(CharmtError, _refusal)  # from the model: 400, with its remedy
    app.add_exception_handler(RequestValidationError, api.invalid_request)

    # LibreTranslate's API, as its clients expect it
    lt = {"tags": ["LibreTranslate"], "responses": libretranslate.ERRORS}
    app.post("/translate", openapi_extra=libretranslate.TRANSLATE_BODY, **lt,
             response_model=libretranslate.Translation)(libretranslate.translate)
    for method in (app.get, app.post):  # some clients POST
        method("/languages", tags=["LibreTranslate"], response_model=list[libretranslate.Language])(
            libretranslate.languages)
    app.post("/detect", openapi_extra=libretranslate.DETECT_BODY, **lt,
             response_model=list[libretranslate.Detection])(libretranslate.detect)
    app.get("/frontend/settings", tags=["LibreTranslate"])(libretranslate.frontend_settings)
    app.post("/translate_file", **lt)(libretranslate.translate_file)
    app.post("/suggest", **lt)(libretranslate.suggest)
    # charmt's own API: beam search, n-best lists, attention weights
    app.post("/api/translate", response_model=api.TranslateResponse, responses=api.ERRORS)(api.translate)
    app.post("/api/attention", response_model=api.AttentionResponse, responses=api.ATTENTION_ERRORS)(api.attention)
    app.get("/health", response_model=api.Health)(api.health)
    # the web page
    app.get("/", include_in_schema=False)(_page("index.html"))
    for name in STATIC_FILES:
        app.get(f"/static/{name}", include_in_schema=False)(_page(name))
    return app


def _version() -> str:
    from . import __version__

    return __version__


def _error_body(path: str, message: str) -> dict:
    """charmt's API words errors as {"detail": ...}; LibreTranslate's as {"error": ...}."""
    return {"detail": message} if path.startswith("/api/") or path == "/health" else {"error": message}


async def _refusal(request, exc: CharmtError):
    from fastapi.responses import JSONResponse

    return JSONResponse(_error_body(request.url.path, shown(exc, limit=2000)), status_code=getattr(exc, "status", 400))


def _max_body(max_texts: int, max_chars: int) -> int:
    # JSON escapes take at most 12 bytes per character (a surrogate pair); anything longer is over a limit anyway.
    return max_texts * (12 * max_chars + 8) + 4096


class _LimitBody:
    """Plain ASGI: refuses a declared oversized body before anything reads it."""

    def __init__(self, app, max_body: int):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_body:
                from fastapi.responses import JSONResponse

                message = (f"request body of {int(length)} bytes is larger than this server accepts ({self.max_body});"
                           " send fewer or shorter texts (see GET /health for the limits)")
                response = JSONResponse(_error_body(scope["path"], message), status_code=413)
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def _page(file: str):
    from fastapi.responses import Response

    content = (resources.files("charmt") / "static").joinpath(file).read_bytes()

    async def page():
        return Response(content, media_type=f"{STATIC_FILES[file]}; charset=utf-8", headers=PAGE_HEADERS)

    return page


# --- running it -------------------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, *, has_keys: bool) -> str | None:
    """What to tell someone who serves beyond this machine without API keys (None: nothing)."""
    if _is_loopback(host) or has_keys:
        return None
    return (f"listening on {host} without --api-keys: anyone who can reach this machine can use the models; "
            "give --api-keys FILE, or use --host 127.0.0.1 to serve this machine only")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one); errors say which option to change."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as err:
        raise ConfigError(f"cannot listen on {host!r}: {err}; check --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port or --host") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(app, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info",
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve `app` with uvicorn until interrupted; `on_ready` receives the URL once the socket listens."""
    try:
        import uvicorn
    except ImportError as err:
        raise _install_hint(err) from None
    if (warning := exposure_warning(host, has_keys=app.state.server.api_keys is not None)) is not None:
        log.warning("%s", warning)
    sock = bind(host, port)
    config = uvicorn.Config(app, host=host, port=sock.getsockname()[1], log_level=log_level,
                            timeout_graceful_shutdown=5)
    if on_ready is not None:
        on_ready(url_of(sock))
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
