"""LibreTranslate's HTTP API over charmt's models, answered as LibreTranslate's own server answers it, so that its
clients (Mastodon, Weblate, subtitle editors, browser extensions, libretranslatepy, deep-translator) work unchanged.

    POST /translate          q (a string or a list), source (or "auto"), target, format (text, html), alternatives,
                             api_key -> {"translatedText": ...} (+ "alternatives", + "detectedLanguage" for auto)
    GET|POST /languages      [{"code", "name", "targets"}] for every language a served model reads or writes
    POST /detect             [{"confidence", "language"}], best first, among the served source languages
    GET /frontend/settings   limits and features, as LibreTranslate's page reads them
    POST /translate_file, /suggest: 403, in LibreTranslate's words for a disabled feature

Fields come as a JSON object, or else from the query string and the form (the query string first), as Flask's
`request.values` gives them to LibreTranslate. Errors are {"error": "..."} with LibreTranslate's statuses and words.
Where charmt differs on purpose: `auto` picks the served source language whose models' source vocabulary covers
the most characters of the text (a character-level model knows nothing else about a language); `format: text`
translates line by line and keeps the line breaks; `format: html` keeps entities escaped in the answer.
"""

from __future__ import annotations

import html
import json
import re

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from .languages import name_of
from .serve import MAX_BEAM, Refusal, ServedModel, Server, shown
from .vocab import normalize

MAX_ALTERNATIVES = MAX_BEAM - 1
# Elements whose text is code or kept as written.
_UNTRANSLATED = {"script", "style", "code", "pre"}
_TAG = re.compile(r"<!--[\s\S]*?(?:-->|$)|<[/!?]?[A-Za-z](?:[^>\"']|\"[^\"]*\"|'[^']*')*>")
_SURROGATE = re.compile("[\ud800-\udfff]")


class ErrorResponse(BaseModel):
    error: str


class Detection(BaseModel):
    confidence: float = Field(description="0 to 100: the share of the text's characters the language's models know")
    language: str


class Translation(BaseModel):
    translatedText: str | list[str]  # noqa: N815 (LibreTranslate's name)
    alternatives: list[str] | list[list[str]] | None = Field(None, description="with alternatives > 0")
    detectedLanguage: Detection | list[Detection] | None = Field(None, description="with source auto")  # noqa: N815


class Language(BaseModel):
    code: str
    name: str
    targets: list[str]


ERRORS = {
    400: {"model": ErrorResponse, "description": "a missing field, an unsupported language or pair, a missing key"},
    403: {"model": ErrorResponse, "description": "an invalid API key, or a feature this server does not offer"},
    413: {"model": ErrorResponse, "description": "a body larger than the server's limits allow"},
    429: {"model": ErrorResponse, "description": "the API key is over its requests per minute"},
    500: {"model": ErrorResponse, "description": "the translation failed"},
}
_TEXTS = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_FIELDS = {
    "source": {"type": "string", "example": "en", "description": "source language code, or auto"},
    "target": {"type": "string", "example": "fr", "description": "target language code"},
    "format": {"type": "string", "enum": ["text", "html"], "default": "text"},
    "alternatives": {"type": "integer", "minimum": 0, "maximum": MAX_ALTERNATIVES, "default": 0,
                     "description": "this many more translations of each text (n-best)"},
    "api_key": {"type": "string", "description": "needed when the server has --api-keys"},
}


def _body(fields: dict, required: list[str]) -> dict:
    form = {name: {"type": "string"} if name == "q" else schema for name, schema in fields.items()}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"type": "object", "required": required, "properties": fields}},
        "application/x-www-form-urlencoded": {"schema": {"type": "object", "required": required, "properties": form}},
    }}}


TRANSLATE_BODY = _body({"q": _TEXTS, **_FIELDS}, ["q", "source", "target"])
DETECT_BODY = _body({"q": _TEXTS, "api_key": _FIELDS["api_key"]}, ["q"])


# --- handlers ---------------------------------------------------------------------------------------------


async def translate(request: Request) -> JSONResponse:
    """Translate text from a language to another (LibreTranslate's /translate)."""
    server: Server = request.app.state.server
    fields = await _fields(request)
    server.check_key(fields.get("api_key"))
    q, source, target = fields.get("q"), _code(fields.get("source")), _code(fields.get("target"))
    for name, value in (("q", q), ("source", source), ("target", target)):
        if not value:
            hint = " (charmt's own API, which reads texts, is at /api/translate)" if "texts" in fields else ""
            raise Refusal(400, f"Invalid request: missing {name} parameter{hint}")
    asked = _alternatives(fields.get("alternatives", 0))
    texts = _texts(q, server)
    server.check_key_chars(fields.get("api_key"), sum(len(text) for text in texts))
    text_format = fields.get("format") or "text"
    is_html = text_format == "html"
    pieces = [segments(text, is_html) for text in texts]
    detected = None
    if source == "auto":
        _check_supported(server, target, [m.target for m in server.models])
        candidates = [m for m in server.models if m.target == target]
        detected = detect_language(candidates, [p for text in pieces for p, keep in text if not keep])[0]
        source = detected["language"]
    model = _pair(server, source, target)
    if text_format not in ("text", "html"):
        raise Refusal(400, f"{shown(text_format)} format is not supported")
    results = await _translate(model, server, pieces, is_html, 0 if is_html else asked)  # none for html, as in LT
    answer: dict = {"translatedText": [r[0] for r in results] if isinstance(q, list) else results[0][0]}
    if asked > 0:
        answer["alternatives"] = [r[1] for r in results] if isinstance(q, list) else results[0][1]
    if detected is not None:
        answer["detectedLanguage"] = [detected] * len(texts) if isinstance(q, list) else detected
    return JSONResponse(answer)


async def detect(request: Request) -> JSONResponse:
    """Detect the language of a text among the served source languages (LibreTranslate's /detect)."""
    server: Server = request.app.state.server
    fields = await _fields(request)
    server.check_key(fields.get("api_key"))
    if not fields.get("q"):
        raise Refusal(400, "Invalid request: missing q parameter")
    texts = _texts(fields["q"], server)
    server.check_key_chars(fields.get("api_key"), sum(len(text) for text in texts))
    return JSONResponse(detect_language(server.models, texts))


async def languages(request: Request) -> list[Language]:
    """Every language a served model reads or writes, with the targets it can be translated into."""
    server: Server = request.app.state.server
    codes = list(dict.fromkeys(code for m in server.models for code in m.pair))
    return [Language(code=code, name=name_of(code), targets=sorted(m.target for m in server.models if m.source == code))
            for code in codes]


async def frontend_settings(request: Request) -> dict:
    """Limits and features, as LibreTranslate's web page reads them."""
    server: Server = request.app.state.server
    first = server.models[0]
    return {"charLimit": server.max_chars, "frontendTimeout": 500, "apiKeys": server.api_keys is not None,
            "keyRequired": server.api_keys is not None, "suggestions": False, "filesTranslation": False,
            "supportedFilesFormat": [],
            "language": {"source": {"code": first.source, "name": name_of(first.source)},
                         "target": {"code": first.target, "name": name_of(first.target)}}}


async def translate_file(request: Request) -> JSONResponse:
    """Not offered: answered as LibreTranslate answers when files translation is disabled."""
    raise Refusal(403, "Files translation are disabled on this server.")


async def suggest(request: Request) -> JSONResponse:
    """Not offered: answered as LibreTranslate answers when suggestions are disabled."""
    raise Refusal(403, "Suggestions are disabled on this server.")


# --- reading a request ------------------------------------------------------------------------------------


async def _fields(request: Request) -> dict:
    """A JSON object's fields, or else the query string's and the form's (a name in both: the query string's)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json" or kind.startswith("application/") and kind.endswith("+json"):
        try:
            fields = json.loads(await request.body())
        except (ValueError, RecursionError):
            raise Refusal(400, "Invalid JSON format") from None
        if not isinstance(fields, dict):
            raise Refusal(400, "Invalid JSON format")
        return fields
    fields = {}
    for name, value in request.query_params.multi_items():
        fields.setdefault(name, value)
    if kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form = await request.form()
        except HTTPException as err:  # a malformed multipart body
            raise Refusal(400, f"Invalid request: {shown(err.detail, 200)}") from None
        for name, value in form.multi_items():
            if isinstance(value, str):
                fields.setdefault(name, value)
        if isinstance(fields.get("q"), str):  # LibreTranslate counts a line break as one character
            fields["q"] = "\n".join(fields["q"].splitlines())
    return fields


def _code(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _alternatives(value: object) -> int:
    try:
        number = max(0, int(value))
    except (TypeError, ValueError, OverflowError):
        raise Refusal(400, "Invalid request: alternatives parameter is not a number") from None
    if number > MAX_ALTERNATIVES:
        raise Refusal(400, f"Invalid request: alternatives parameter must be <= {MAX_ALTERNATIVES}")
    return number


def _texts(q: object, server: Server) -> list[str]:
    """q as a list of texts, within the server's limits (in LibreTranslate's words: 400, not 413)."""
    texts = q if isinstance(q, list) else [q]
    if not all(isinstance(text, str) for text in texts):
        raise Refusal(400, "Invalid request: q must be a string or a list of strings")
    if len(texts) > server.max_texts:
        raise Refusal(400, f"Invalid request: request ({len(texts)}) exceeds text limit ({server.max_texts})")
    for text in texts:
        if len(text) > server.max_chars:
            raise Refusal(400, f"Invalid request: request ({len(text)}) exceeds text limit ({server.max_chars})")
    return texts


def _check_supported(server: Server, code: object, known: list[str]) -> None:
    if code not in known:
        raise Refusal(400, f"{shown(code)} is not supported")


def _pair(server: Server, source: object, target: object) -> ServedModel:
    _check_supported(server, source, [m.source for m in server.models])
    _check_supported(server, target, [m.target for m in server.models])
    model = server.model_for(source, target)
    if model is None:
        raise Refusal(400, f"{name_of(target)} ({target}) is not available as a target language from "
                           f"{name_of(source)} ({source})")
    return model


# --- translating ------------------------------------------------------------------------------------------


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


async def _translate(model: ServedModel, server: Server, pieces: list[list[tuple[str, bool]]], is_html: bool,
                     alternatives: int) -> list[tuple[str, list[str]]]:
    """(translation, alternatives) of each text: its pieces translated in one model call and put back in place."""
    sources = [html.unescape(p) if is_html else p for text in pieces for p, keep in text if not keep]
    n_best = alternatives + 1
    try:
        results = await model.batcher.translate(sources, max(server.beam, n_best), n_best) if sources else []
    except Exception as err:  # noqa: BLE001 (LibreTranslate answers any failure so)
        raise Refusal(500, f"Cannot translate text: {shown(err, 200)}") from None
    found = iter(results)
    answers = []
    for text in pieces:
        hyps = [next(found) for _, keep in text if not keep]
        best = _rebuild(text, [h[0].text if h else "" for h in hyps], is_html)
        others = [_rebuild(text, [h.text], is_html) for h in hyps[0][1:]] if len(hyps) == 1 else []  # one piece
        answers.append((best, list(dict.fromkeys(o for o in others if o not in (best, "")))))
    return answers


def _rebuild(pieces: list[tuple[str, bool]], translations: list[str], is_html: bool) -> str:
    """The pieces with each one to translate replaced by its translation (escaped again in html)."""
    outputs = iter(html.escape(t, quote=False) if is_html else t for t in translations)
    return _SURROGATE.sub("\ufffd", "".join(piece if keep else next(outputs) for piece, keep in pieces))


def detect_language(models: list[ServedModel], texts: list[str]) -> list[dict]:
    """[{"confidence", "language"}] for each source language of `models`, best first: the percentage of the
    texts' characters (spaces aside) in the source vocabulary of that language's models. Ties keep model order."""
    chars = [ch for text in texts for ch in normalize(text) if not ch.isspace()]
    known: dict[str, set[str]] = {}
    for m in models:
        known.setdefault(m.source, set()).update(m.translator.source_vocab.index)
    scores = [{"confidence": round(100 * sum(ch in vocab for ch in chars) / len(chars), 1) if chars else 0.0,
               "language": code} for code, vocab in known.items()]
    return sorted(scores, key=lambda s: -s["confidence"])
