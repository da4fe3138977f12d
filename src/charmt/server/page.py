"""The web page (src/charmt/static): GET / and its two files, which load nothing from anywhere else."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


def _page(file: str):
    content = (resources.files("charmt") / "static").joinpath(file).read_bytes()

    async def page():
        return Response(content, media_type=f"{STATIC_FILES[file]}; charset=utf-8", headers=PAGE_HEADERS)

    return page


router.get("/")(_page("index.html"))
for _name in STATIC_FILES:
    router.get(f"/static/{_name}")(_page(_name))
