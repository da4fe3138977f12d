"""`charmt serve`: an HTTP API (FastAPI) and a small web page for translating with one loaded model.

    POST /translate   {"texts": [...], "beam": 1} -> {"translations": [...], "warnings": [...], ...}
    POST /attention   {"text": "..."} -> source and output characters and their attention weights
    GET  /health      model name, device and the server's limits
    GET  /            the web page (src/charmt/static), which only ever talks to this server

Concurrent requests are gathered into one model batch by `_Batcher`, and the model runs in one thread at a time.
FastAPI and uvicorn are imported inside the functions that need them (`pip install 'charmt[serve]'`).
"""

import asyncio
import collections
import ipaddress
import logging
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from .errors import CharmtError, ConfigError

if TYPE_CHECKING:  # imported where used: `charmt serve --help` needs no PyTorch
    from .decode import Translator

log = logging.getLogger("charmt")

DEFAULT_MAX_TEXTS = 64  # texts per request
DEFAULT_MAX_CHARS = 1000  # characters per text
MAX_BEAM = 10
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


def _install_hint(err: ImportError) -> ConfigError:
    return ConfigError(f"charmt serve needs FastAPI and uvicorn ({err.name} is missing): pip install 'charmt[serve]'")


@dataclass
class _Job:
    texts: list[str]
    beam: int
    future: asyncio.Future


class _Batcher:
    """Gathers the requests that arrive within a few milliseconds (or while the model is busy) into one
    `Translator.translate` call per beam size, run in the single model thread, and hands each its results."""

    def __init__(self, translator: "Translator", executor: ThreadPoolExecutor, *, wait_s: float = BATCH_WAIT_S,
                 max_batch_texts: int = MAX_BATCH_TEXTS):
        self.translator, self.executor = translator, executor
        self.wait_s, self.max_batch_texts = wait_s, max_batch_texts
        self._pending: collections.deque[_Job] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def translate(self, texts: list[str], beam: int) -> list[str]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            # One worker per event loop: a test client may run each request in a fresh loop.
            self._loop, self._pending, self._wake = loop, collections.deque(), asyncio.Event()
            self._task = loop.create_task(self._work())
        job = _Job(texts, beam, loop.create_future())
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
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                self.executor, lambda: self.translator.translate(texts, beam=beam, batch_size=self.max_batch_texts))
        except Exception as err:  # reaches the requests' handlers, which answer for it
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(results[start : start + len(job.texts)])
            start += len(job.texts)


def create_app(translator: "Translator", *, name: str = "model", max_texts: int = DEFAULT_MAX_TEXTS,
               max_chars: int = DEFAULT_MAX_CHARS, batch_wait_s: float = BATCH_WAIT_S):
    """The FastAPI application serving `translator`; run it with uvicorn, or `serve`."""
    from .decode import attention_weights

    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, Response
        from pydantic import BaseModel, ConfigDict, Field
    except ImportError as err:
        raise _install_hint(err) from None
    if max_texts < 1 or max_chars < 1:
        raise ConfigError("--max-texts and --max-chars must be at least 1")

    static = resources.files("charmt") / "static"
    pages = {file: static.joinpath(file).read_bytes() for file in STATIC_FILES}
    has_attention = translator.model.config.attention != "none"
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charmt-model")  # one model call at a time
    batcher = _Batcher(translator, executor, wait_s=batch_wait_s)
    # JSON escapes take at most 12 bytes per character (a surrogate pair); anything longer is over a limit anyway.
    max_body = max_texts * (12 * max_chars + 8) + 4096

    class TranslateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: list[str] = Field(description=f"texts to translate, at most {max_texts}, each at most {max_chars} "
                                             "characters; a text of several sentences is split and rejoined")
        beam: int = Field(1, ge=1, le=MAX_BEAM, description="beam size, 1 for greedy decoding")

    class TranslateResponse(BaseModel):
        translations: list[str]
        model: str
        device: str
        beam: int
        warnings: list[str]

    class AttentionRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str = Field(description="one sentence (it is not split)")

    class AttentionResponse(BaseModel):
        source: list[str] = Field(description="source characters (columns)")
        output: list[str] = Field(description="output characters (rows)")
        weights: list[list[float]] = Field(description="weights[i][j]: attention of output i on source j")
        translation: str
        warnings: list[str]

    class Error(BaseModel):
        detail: str

    @asynccontextmanager
    async def lifespan(app):
        yield
        await batcher.close()

    app = FastAPI(title="charmt", version=_version(), lifespan=lifespan,
                  description="Character-level seq2seq translation. Limits: see GET /health.")
    app.state.batcher = batcher

    def error(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # One readable line, without echoing the input (it may not even be encodable as UTF-8).
        problems = []
        for e in exc.errors():
            if e.get("type") == "json_invalid":
                problems.append(f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'decode error')})")
                continue
            where = ".".join(str(part) for part in e.get("loc", ()) if part != "body") or "body"
            problems.append(f"{where}: {e.get('msg', 'invalid')}")
        detail = "invalid request: " + "; ".join(problems)
        return JSONResponse({"detail": detail.encode("utf-8", "backslashreplace").decode("utf-8")}, status_code=422)

    @app.exception_handler(CharmtError)
    async def charmt_error(request: Request, exc: CharmtError) -> JSONResponse:
        return error(400, str(exc))

    class LimitBody:  # plain ASGI: refuses a declared oversized body before anything reads it
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http":
                length = dict(scope["headers"]).get(b"content-length", b"")
                if length.isdigit() and int(length) > max_body:
                    response = error(413, f"request body of {int(length)} bytes is larger than this server accepts "
                                          f"({max_body}); send at most {max_texts} texts of at most {max_chars} "
                                          "characters")
                    return await response(scope, receive, send)
            return await self.app(scope, receive, send)

    app.add_middleware(LimitBody)

    def check_text(text: str, index: int | None = None) -> JSONResponse | None:
        if len(text) > max_chars:
            which = "text" if index is None else f"text {index}"
            return error(413, f"{which} has {len(text)} characters; this server accepts at most {max_chars} per text "
                              "(--max-chars); split it into shorter texts")
        return None

    limits = {400: {"model": Error, "description": "a body that cannot be read, or an error from the model"},
              413: {"model": Error, "description": "too many texts, or a text too long"},
              422: {"model": Error, "description": "invalid request body"}}

    @app.post("/translate", response_model=TranslateResponse, responses=limits)
    async def translate(request: TranslateRequest):
        """Translate `texts` in order; blank texts give empty translations."""
        if len(request.texts) > max_texts:
            return error(413, f"{len(request.texts)} texts in one request; this server accepts at most {max_texts} "
                              "(--max-texts); send them in several requests")
        for i, text in enumerate(request.texts):
            if (too_long := check_text(text, i)) is not None:
                return too_long
        translations = await batcher.translate(request.texts, request.beam) if request.texts else []
        return TranslateResponse(translations=translations, model=name, device=str(translator.device),
                                 beam=request.beam, warnings=translator.input_warnings(request.texts))

    @app.post("/attention", response_model=AttentionResponse,
              responses={**limits, 409: {"model": Error, "description": "the model has no attention"}})
    async def attention(request: AttentionRequest):
        """Greedy-decode one sentence and return the attention weights of each output character."""
        if not has_attention:
            return error(409, f"model {name!r} has no attention weights to show (it was trained with "
                              "--attention none); serve a model trained with --attention luong")
        if (too_long := check_text(request.text)) is not None:
            return too_long
        if not request.text.split():
            return error(422, "text is empty: give one sentence")
        loop = asyncio.get_running_loop()
        source, output, weights = await loop.run_in_executor(executor, attention_weights, translator, request.text)
        source = [ch if not 0xD800 <= ord(ch) <= 0xDFFF else "\ufffd" for ch in source]  # lone surrogates: no UTF-8
        warnings = translator.input_warnings([request.text], split=False)
        return AttentionResponse(source=source, output=output, weights=[[round(w, 4) for w in row] for row in weights],
                                 translation="".join(output), warnings=warnings)

    @app.get("/health")
    async def health():
        """Liveness, the model and the server's limits (the web page reads them)."""
        return {"status": "ok", "model": name, "device": str(translator.device), "attention": has_attention,
                "max_texts": max_texts, "max_chars": max_chars, "max_beam": MAX_BEAM}

    @app.get("/", include_in_schema=False)
    async def index():
        return Response(pages["index.html"], media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.get("/static/{file}", include_in_schema=False)
    async def static_file(file: str):
        if file not in pages:
            return error(404, f"no such file: {file}")
        return Response(pages[file], media_type=f"{STATIC_FILES[file]}; charset=utf-8", headers=PAGE_HEADERS)

    return app


def _version() -> str:
    from . import __version__

    return __version__


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    if not _is_loopback(host):
        log.warning("listening on %s: anyone who can reach this machine can use the model (there is no "
                    "authentication); use --host 127.0.0.1 to serve this machine only", host)
    sock = bind(host, port)
    config = uvicorn.Config(app, host=host, port=sock.getsockname()[1], log_level=log_level,
                            timeout_graceful_shutdown=5)
    if on_ready is not None:
        on_ready(url_of(sock))
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
