"""What wraps every request, below the routers: the body limit, the access log, and how an answer is written.

- The body limit counts the bytes actually received, chunked bodies included, and answers 413 as soon as the
  running total passes it (a declared Content-Length over it: before anything is read).
- One access line per request, without the query string (API keys travel there); uvicorn's own is switched off.
- Answers are JSON in which lone surrogates (they have no UTF-8) become U+FFFD: the one place that cleans them.
"""

from __future__ import annotations

import json
import logging
import re
import time

from fastapi.responses import JSONResponse

access_log = logging.getLogger("charmt.access")

_SURROGATE = re.compile("[\ud800-\udfff]")


class Answer(JSONResponse):
    """JSONResponse that never fails on a lone surrogate (JSON's syntax is ASCII: only strings can hold one)."""

    def render(self, content) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def error_body(path: str, message: str) -> dict:
    """charmt's API words errors as {"detail": ...}; LibreTranslate's as {"error": ...}."""
    return {"detail": message} if path.startswith("/api/") or path == "/health" else {"error": message}


class _TooLarge(Exception):
    """Raised from `receive` into the application; the guard answers 413 in its place."""


class Guard:
    """Plain ASGI around the application: the body limit and the access log."""

    def __init__(self, app, max_body: int):
        self.app, self.max_body = app, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, received, refused = time.perf_counter(), 0, 0, False

        async def counted_receive():
            nonlocal received, refused
            if refused:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    refused = True
                    raise _TooLarge
            return message

        async def guarded_send(message):
            nonlocal status
            if refused:  # the application's answer to a body it could not read: the guard's 413 replaces it
                return
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_body:
                received, refused = int(length), True
            else:
                try:
                    await self.app(scope, counted_receive, guarded_send)
                except _TooLarge:
                    pass
            if refused and not status:
                status = 413
                message = (f"the request body is larger than this server accepts ({received} bytes and more, "
                           f"at most {self.max_body}); send fewer or shorter texts (GET /health shows the limits)")
                await Answer(error_body(scope["path"], message), status_code=413)(scope, receive, send)
        finally:
            client = scope.get("client")
            access_log.info('%s - "%s %s HTTP/%s" %s %.0f ms', f"{client[0]}:{client[1]}" if client else "-",
                            scope["method"], scope["path"], scope.get("http_version", "1.1"), status or "-",
                            1000 * (time.perf_counter() - start))
