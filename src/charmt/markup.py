"""A text as pieces to translate between pieces kept as they are: the tags of html, the line breaks of plain text.

    segments(text, is_html) -> [(piece, keep), ...]       joined, the pieces give back `text`
    rebuild(pieces, translations, is_html) -> str          the pieces with each one to translate replaced
"""

from __future__ import annotations

import html
import re

# Elements whose text is code or kept as written.
_UNTRANSLATED = {"script", "style", "code", "pre"}
_TAG = re.compile(r"<!--[\s\S]*?(?:-->|$)|<[/!?]?[A-Za-z](?:[^>\"']|\"[^\"]*\"|'[^']*')*>")
_SURROGATE = re.compile("[\ud800-\udfff]")


def segments(text: str, is_html: bool) -> list[tuple[str, bool]]:
    """`text` as (piece, keep) pairs: pieces to translate (keep False) between pieces kept as they are (tags,
    line breaks of plain text, the spaces around a text). Joined, the pieces give back `text`."""
    pieces: list[tuple[str, bool]] = []

    def add_text(chunk: str) -> None:
        core = chunk.strip()
        if not (html.unescape(core) if is_html else core).strip():
            pieces.append((chunk, True))
            return
        start = chunk.index(core)
        pieces.extend([(chunk[:start], True), (core, False), (chunk[start + len(core) :], True)])

    if not is_html:
        for line in re.split(r"(\n)", text):
            add_text(line)
        return [p for p in pieces if p[0]]
    inside, position = [], 0  # open elements whose text is not translated
    for match in _TAG.finditer(text):
        (pieces.append((text[position : match.start()], True)) if inside else add_text(text[position : match.start()]))
        tag = match.group()
        name = re.match(r"</?([A-Za-z][\w-]*)", tag)
        name = name.group(1).lower() if name else ""
        if name in _UNTRANSLATED and tag.startswith("</"):
            inside = inside[: len(inside) - 1 - inside[::-1].index(name)] if name in inside else inside
        elif name in _UNTRANSLATED and not tag.endswith("/>"):
            inside.append(name)
        pieces.append((tag, True))
        position = match.end()
    (pieces.append((text[position:], True)) if inside else add_text(text[position:]))
    return [p for p in pieces if p[0]]


def rebuild(pieces: list[tuple[str, bool]], translations: list[str], is_html: bool) -> str:
    """The pieces with each one to translate replaced by its translation (escaped again in html)."""
    outputs = iter(html.escape(t, quote=False) if is_html else t for t in translations)
    return _SURROGATE.sub("\ufffd", "".join(piece if keep else next(outputs) for piece, keep in pieces))
