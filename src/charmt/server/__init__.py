"""`charmt serve`: one server for several models, one per language pair, behind two HTTP APIs and a web page.

    LibreTranslate's API (libretranslate.py)   POST /translate, GET|POST /languages, POST /detect,
                                               GET /frontend/settings: what LibreTranslate's clients talk to
    charmt's own API (api.py)                  POST /api/translate (beam, n-best), POST /api/attention,
                                               GET /health: status, models, limits
    the web page (page.py)                     GET / and its files (src/charmt/static)

Laid out as FastAPI's "bigger applications" guide lays out one: a router per area, this app factory that includes
them, and the state they share passed down through `app.state.server` (state.py). Imports go one way: the routers
import the shared pieces (state, limits, admission, models, keys), never this module.

    models.py     which model directories, which pairs; loading them
    limits.py     the limits, each checked once; Refusal, the error a request is answered with
    admission.py  the model worker: queue bound, fair turns between models, deadlines, batching, failures
    keys.py       API keys and their rates
    asgi.py       below the routers: the body limit, the access log, the JSON writer

This module imports neither PyTorch nor FastAPI (the command line reads its defaults); `create_app` imports them
(`pip install 'charmt[serve]'`).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from ..errors import CharmtError, ConfigError
from .admission import BATCH_WAIT_S, Admission
from .limits import Limits
from .models import ServedModel, find_models, load_models
from .state import Server

if TYPE_CHECKING:
    from .keys import ApiKeys

__all__ = ["Limits", "ServedModel", "bind", "create_app", "exposure_warning", "find_models", "load_models", "serve",
           "url_of"]

log = logging.getLogger("charmt")


def _install_hint(err: ImportError) -> ConfigError:
    return ConfigError(f"charmt serve needs FastAPI and uvicorn ({err.name} is missing): pip install 'charmt[serve]'")


def create_app(models: list[ServedModel], *, limits: Limits | None = None, api_keys: ApiKeys | None = None,
               batch_wait_s: float = BATCH_WAIT_S):
    """The FastAPI application serving `models` (one per language pair); run it with uvicorn, or `serve`."""
    try:
        from fastapi import FastAPI
        from fastapi.exceptions import RequestValidationError

        from . import api, libretranslate, page
        from .asgi import Answer, Guard, error_body
    except ImportError as err:
        raise _install_hint(err) from None
    limits = limits or Limits()
    if not models:
        raise ConfigError("give at least one model directory to serve")
    pairs = [m.pair for m in models]
    if len(set(pairs)) < len(pairs):
        raise ConfigError("two models translate the same language pair; serve one model per pair")
    admission = Admission(models, limits, batch_wait_s=batch_wait_s)
    server = Server(list(models), limits, admission, api_keys=api_keys)

    @asynccontextmanager
    async def lifespan(app):
        yield
        admission.stop()

    async def refusal(request, exc: CharmtError):
        # A Refusal says its status; any other CharmtError comes from the model, with its remedy: 400.
        return Answer(error_body(request.url.path, str(exc)), status_code=getattr(exc, "status", 400),
                      headers=getattr(exc, "headers", None))

    app = FastAPI(title="charmt", version=_version(), lifespan=lifespan, description=api.DESCRIPTION,
                  default_response_class=Answer)
    app.state.server = server
    app.add_middleware(Guard, max_body=limits.max_body())
    app.add_exception_handler(CharmtError, refusal)
    app.add_exception_handler(RequestValidationError, api.invalid_request)
    for router in (libretranslate.router, api.router, page.router):
        app.include_router(router)
    return app


def _version() -> str:
    from .. import __version__

    return __version__


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
    # uvicorn's access log prints the query string, where API keys travel: asgi.Guard logs each request without
    # it. Stopping waits 2 s for open requests at most; the model worker never holds the process (a daemon thread).
    config = uvicorn.Config(app, host=host, port=sock.getsockname()[1], log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=2)
    if on_ready is not None:
        on_ready(url_of(sock))
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
