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

import functools
import html
import json

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from ..config import MAX_BEAM
from ..languages import name_of
from ..markup import rebuild, segments
from ..vocab import normalize
from .limits import OverLimit, Refusal, search_problem, shown
from .models import ServedModel
from .state import Server

MAX_ALTERNATIVES = MAX_BEAM - 1


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
    413: {"model": ErrorResponse, "description": "a body larger than the server's limits allow, or more lines and "
                                                 "sentences than --max-pieces"},
    429: {"model": ErrorResponse, "description": "the API key is over its requests per minute"},
    500: {"model": ErrorResponse, "description": "the translation failed (the server's log says why)"},
    503: {"model": ErrorResponse, "description": "the server is busy (too many requests waiting): retry after "
                                                 "Retry-After"},
    504: {"model": ErrorResponse, "description": "the request took longer than the server's --timeout"},
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

router = APIRouter(tags=["LibreTranslate"])


@router.post("/translate", openapi_extra=TRANSLATE_BODY, responses=ERRORS, response_model=Translation,
             response_model_exclude_none=True)
async def translate(request: Request) -> Translation:
    """Translate text from a language to another (LibreTranslate's /translate)."""
    server: Server = request.app.state.server
    fields = await _fields(request)
    server.check_key(fields.get("api_key"))
    q, source, target = fields.get("q"), _code(fields.get("source")), _code(fields.get("target"))
    for name, value in (("q", q), ("source", source), ("target", target)):
        if not value:
            hint = " (charmt's own API, which reads texts, is at /api/translate)" if "texts" in fields else ""
            raise Refusal(400, f"Invalid request: missing {name} parameter{hint}")
    asked = _alternatives(fields.get("alternatives", 0), server.limits.beam)
    texts = _texts(q, server)
    server.check_key_chars(fields.get("api_key"), sum(len(text) for text in texts))
    if source == "auto":
        candidates = [m for m in server.models if m.target == target]
        if not candidates:
            raise Refusal(400, f"{shown(target)} is not supported")
        lane = candidates[0]
    else:
        lane = model = server.model_for(source, target)
    text_format = fields.get("format") or "text"
    if text_format not in ("text", "html"):
        raise Refusal(400, f"{shown(text_format)} format is not supported")
    is_html = text_format == "html"
    deadline = server.admission.deadline()
    # Reading a text's markup is the model worker's work, a text a turn, as is everything that reads a text beyond
    # its length.
    pieces = [await server.admission.call(lane, functools.partial(segments, text, is_html), deadline=deadline)
              for text in texts]
    detected = None
    if source == "auto":
        detected = detect_language(candidates, [p for text in pieces for p, keep in text if not keep])[0]
        model = server.model_for(detected["language"], target)
    n_best = 1 if is_html else asked + 1  # no alternatives for html, as in LibreTranslate
    results = await _translate(model, server, pieces, is_html, n_best, deadline)
    answer: dict = {"translatedText": [r[0] for r in results] if isinstance(q, list) else results[0][0]}
    if asked > 0:
        answer["alternatives"] = [r[1] for r in results] if isinstance(q, list) else results[0][1]
    if detected is not None:
        answer["detectedLanguage"] = [detected] * len(texts) if isinstance(q, list) else detected
    return answer


@router.post("/detect", openapi_extra=DETECT_BODY, responses=ERRORS, response_model=list[Detection])
async def detect(request: Request) -> list[Detection]:
    """Detect the language of a text among the served source languages (LibreTranslate's /detect)."""
    server: Server = request.app.state.server
    fields = await _fields(request)
    server.check_key(fields.get("api_key"))
    if not fields.get("q"):
        raise Refusal(400, "Invalid request: missing q parameter")
    texts = _texts(fields["q"], server)
    server.check_key_chars(fields.get("api_key"), sum(len(text) for text in texts))
    return detect_language(server.models, texts)


@router.get("/languages", response_model=list[Language])
@router.post("/languages", response_model=list[Language])  # some clients POST
async def languages(request: Request) -> list[Language]:
    """Every language a served model reads or writes, with the targets it can be translated into."""
    server: Server = request.app.state.server
    codes = list(dict.fromkeys(code for m in server.models for code in m.pair))
    return [Language(code=code, name=name_of(code), targets=sorted(m.target for m in server.models if m.source == code))
            for code in codes]


@router.get("/frontend/settings")
async def frontend_settings(request: Request) -> dict:
    """Limits and features, as LibreTranslate's web page reads them."""
    server: Server = request.app.state.server
    first = server.models[0]
    return {"charLimit": server.limits.max_chars, "frontendTimeout": 500, "apiKeys": server.api_keys is not None,
            "keyRequired": server.api_keys is not None, "suggestions": False, "filesTranslation": False,
            "supportedFilesFormat": [],
            "language": {"source": {"code": first.source, "name": name_of(first.source)},
                         "target": {"code": first.target, "name": name_of(first.target)}}}


@router.post("/translate_file", responses=ERRORS)
async def translate_file(request: Request) -> dict:
    """Not offered: answered as LibreTranslate answers when files translation is disabled."""
    raise Refusal(403, "Files translation are disabled on this server.")


@router.post("/suggest", responses=ERRORS)
async def suggest(request: Request) -> dict:
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


def _alternatives(value: object, beam: int) -> int:
    try:
        number = max(0, int(value))
    except (TypeError, ValueError, OverflowError):
        raise Refusal(400, "Invalid request: alternatives parameter is not a number") from None
    if search_problem(max(beam, number + 1), number + 1) is not None:
        raise Refusal(400, f"Invalid request: alternatives parameter must be <= {MAX_ALTERNATIVES}")
    return number


def _texts(q: object, server: Server) -> list[str]:
    """q as a list of texts, within the server's limits (in LibreTranslate's words: 400, not 413)."""
    texts = q if isinstance(q, list) else [q]
    if not all(isinstance(text, str) for text in texts):
        raise Refusal(400, "Invalid request: q must be a string or a list of strings")
    try:
        server.limits.check_texts(texts)
    except OverLimit as err:
        raise Refusal(400, f"Invalid request: request ({err.count}) exceeds text limit ({err.limit})") from None
    return texts


# --- translating ------------------------------------------------------------------------------------------


async def _translate(model: ServedModel, server: Server, pieces: list[list[tuple[str, bool]]], is_html: bool,
                     n_best: int, deadline: float) -> list[tuple[str, list[str]]]:
    """(translation, alternatives) of each text: its pieces translated and put back in place."""
    sources = [html.unescape(p) if is_html else p for text in pieces for p, keep in text if not keep]
    try:
        results, _ = await server.admission.translate(model, sources, beam=max(server.limits.beam, n_best),
                                                      n_best=n_best, deadline=deadline)
    except Refusal as err:
        if err.status != 500:
            raise
        raise Refusal(500, f"Cannot translate text: {err}") from None  # LibreTranslate's words, then which model
    found = iter(results)
    answers = []
    for text in pieces:
        hyps = [next(found) for _, keep in text if not keep]
        best = rebuild(text, [h[0].text if h else "" for h in hyps], is_html)
        others = [rebuild(text, [h.text], is_html) for h in hyps[0][1:]] if len(hyps) == 1 else []  # one piece
        answers.append((best, list(dict.fromkeys(o for o in others if o not in (best, "")))))
    return answers


def detect_language(models: list[ServedModel], texts: list[str]) -> list[dict]:
    """[{"confidence", "language"}] for each source language of `models`, best first: the percentage of the
    texts' characters (spaces aside) in the source vocabulary of that language's models. Ties keep model order."""
    chars = [ch for text in texts for ch in normalize(text) if not ch.isspace()]
    known: dict[str, set[str]] = {}
    for m in models:
        known.setdefault(m.source, set()).update(m.translator.source_vocab.chars)
    scores = [{"confidence": round(100 * sum(ch in vocab for ch in chars) / len(chars), 1) if chars else 0.0,
               "language": code} for code, vocab in known.items()]
    return sorted(scores, key=lambda s: -s["confidence"])
