"""A text cut into the pieces a model translates and the pieces kept as they are (tags, line breaks, spaces), and
put back together around the translations: plain text line by line, html between its tags.

Both take time linear in the text's length, whatever it holds. The standard library's html.parser does not on the
Python versions charmt supports (3.11.7 takes 1 s on 20,000 "<a" and 7 s on 10,000 "<a x", four times the text
taking 8 to 14 times as long, and raises AssertionError on "<![<!["), nor does a regex tried at every "<" (each
failed try reads on to the end of the text). So html is read here as the old regex read it, in one pass:

- a comment runs from "<!--" to "-->", or to the end of the text;
- a tag is "<", "</", "<!" or "<?" then an ASCII letter, then anything up to the first ">" outside quotes ("..."
  or '...'); an opening with no such ">" after it is text;
- text inside script, style, code and pre is kept untranslated.
"""

from __future__ import annotations

import html
import re

# Elements whose text is code or kept as written.
_UNTRANSLATED = {"script", "style", "code", "pre"}
_SPECIAL = re.compile("[<>\"']")
_NAME = re.compile(r"</?([A-Za-z][\w-]*)")


def segments(text: str, is_html: bool) -> list[tuple[str, bool]]:
    """`text` as (piece, keep) pairs: pieces to translate (keep False) between pieces kept as they are (tags,
    line breaks of plain text, the spaces around a text). Joined, the pieces give back `text`."""
    pieces: list[tuple[str, bool]] = []
    if not is_html:
        for line in re.split(r"(\n)", text):
            _add_text(pieces, line, is_html)
        return [p for p in pieces if p[0]]
    inside: list[str] = []  # open elements whose text is not translated
    opened = dict.fromkeys(_UNTRANSLATED, 0)  # how many of each are in `inside`, so as never to search it
    position = 0
    for start, end in _tags(text):
        chunk = text[position:start]
        pieces.append((chunk, True)) if inside else _add_text(pieces, chunk, is_html)
        tag = text[start:end]
        name = _NAME.match(tag)
        name = name.group(1).lower() if name else ""
        if name in _UNTRANSLATED and tag.startswith("</"):
            while opened[name]:  # closes the last one opened, and what was opened inside it
                opened[inside[-1]] -= 1
                if inside.pop() == name:
                    break
        elif name in _UNTRANSLATED and not tag.endswith("/>"):
            inside.append(name)
            opened[name] += 1
        pieces.append((tag, True))
        position = end
    chunk = text[position:]
    pieces.append((chunk, True)) if inside else _add_text(pieces, chunk, is_html)
    return [p for p in pieces if p[0]]


def rebuild(pieces: list[tuple[str, bool]], translations: list[str], is_html: bool) -> str:
    """The pieces with each one to translate replaced by its translation (escaped again in html). Lone
    surrogates are kept: the server's JSON writer is the one place that makes them U+FFFD."""
    outputs = iter(html.escape(t, quote=False) if is_html else t for t in translations)
    return "".join(piece if keep else next(outputs) for piece, keep in pieces)


def _add_text(pieces: list[tuple[str, bool]], chunk: str, is_html: bool) -> None:
    """The chunk as its leading spaces, its text to translate and its trailing spaces; kept whole when blank."""
    core = chunk.strip()
    if not (html.unescape(core) if is_html else core).strip():
        pieces.append((chunk, True))
        return
    start = len(chunk) - len(chunk.lstrip())
    pieces.extend([(chunk[:start], True), (core, False), (chunk[start + len(core) :], True)])


def _tags(text: str) -> list[tuple[int, int]]:
    """(start, end) of every tag and comment in `text`, in order."""
    # Only <, >, " and ' decide where a tag ends. closes[k]: the > that ends a tag whose inside is read from the
    # k-th of those characters on (None: none does), worked out backwards so that each is read once.
    where = [m.start() for m in _SPECIAL.finditer(text)]
    closes: list[int | None] = [None] * (len(where) + 1)
    after: dict[str, int | None] = {'"': None, "'": None}  # the next quote of each kind
    for k in range(len(where) - 1, -1, -1):
        char = text[where[k]]
        if char == ">":
            closes[k] = where[k]
        elif char == "<":
            closes[k] = closes[k + 1]
        else:
            closes[k] = closes[after[char] + 1] if after[char] is not None else None
            after[char] = k
    found, k = [], 0
    while k < len(where):
        start = where[k]
        k += 1
        if text[start] != "<":
            continue
        if text.startswith("<!--", start):
            close = text.find("-->", start + 4)
            end = len(text) if close < 0 else close + 3
        elif _opens_tag(text, start) and closes[k] is not None:
            end = closes[k] + 1
        else:
            continue
        found.append((start, end))
        while k < len(where) and where[k] < end:
            k += 1
    return found


def _opens_tag(text: str, start: int) -> bool:
    """Whether "<" at `start` opens a tag: "<", "</", "<!" or "<?" then an ASCII letter."""
    first = text[start + 1 : start + 2]
    letter = text[start + 2 : start + 3] if first in ("/", "!", "?") else first
    return letter.isascii() and letter.isalpha()
