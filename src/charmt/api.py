"""charmt's own JSON API, for what LibreTranslate's cannot ask: beam size, n-best lists, attention weights.

    POST /api/translate  {"texts": [...], "source": "en", "target": "fr", "beam": 5, "n_best": 3}
    POST /api/attention  {"text": "...", "source": "en", "target": "fr"} -> characters and attention weights
    GET  /health         status, models (languages, memory, load time, attention) and the server's limits

`source` and `target` may be left out while the server serves one model. Errors are {"detail": "..."}.
"""

from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .serve import MAX_BEAM, Refusal, ServedModel, Server, shown

DESCRIPTION = ("Character-level seq2seq translation: LibreTranslate's API (/translate, /languages, /detect, "
               "/frontend/settings) and charmt's own (/api/...). Limits and models: GET /health.")


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(description="texts to translate (limits: GET /health); a text of several sentences is "
                                         "split and rejoined")
    source: str | None = Field(None, description="source language code, e.g. en (optional with one model)")
    target: str | None = Field(None, description="target language code, e.g. fr (optional with one model)")
    beam: int = Field(1, ge=1, le=MAX_BEAM, description="beam size, 1 for greedy decoding")
    n_best: int = Field(1, ge=1, le=MAX_BEAM, description="hypotheses per text, at most `beam`")
    api_key: str | None = Field(None, description="needed when the server has --api-keys")


class Scored(BaseModel):
    text: str
    score: float = Field(description="log-probability per character (summed over the sentences of a text)")


class TranslateResponse(BaseModel):
    translations: list[str]
    n_best: list[list[Scored]] | None = Field(None, description="with n_best > 1: each text's hypotheses, best "
                                                                "first (one for a text of several sentences)")
    model: str
    source: str
    target: str
    device: str
    beam: int
    warnings: list[str]


class AttentionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="one sentence (it is not split)")
    source: str | None = None
    target: str | None = None
    api_key: str | None = None


class AttentionResponse(BaseModel):
    source: list[str] = Field(description="source characters (columns)")
    output: list[str] = Field(description="output characters (rows)")
    weights: list[list[float]] = Field(description="weights[i][j]: attention of output i on source j")
    translation: str
    warnings: list[str]


class ModelHealth(BaseModel):
    name: str
    source: str
    target: str
    source_name: str
    target_name: str
    source_rtl: bool
    target_rtl: bool
    attention: bool
    device: str
    memory_mb: float = Field(description="the model's weights and buffers")
    load_s: float = Field(description="seconds the model took to load")


class Health(BaseModel):
    status: str
    models: list[ModelHealth]
    max_texts: int
    max_chars: int
    max_beam: int
    beam: int = Field(description="the beam size of LibreTranslate's /translate")
    api_keys: bool = Field(description="whether requests need an api_key")
    rss_mb: float | None = Field(description="the server process's resident memory")


class Error(BaseModel):
    detail: str


ERRORS = {
    400: {"model": Error, "description": "no such language pair, a missing key, or an error from the model"},
    403: {"model": Error, "description": "an unknown api_key"},
    413: {"model": Error, "description": "too many texts, or a text too long"},
    422: {"model": Error, "description": "invalid request body"},
    429: {"model": Error, "description": "the api_key is over its requests per minute"},
}
ATTENTION_ERRORS = {**ERRORS, 409: {"model": Error, "description": "the model has no attention"}}


def _model(server: Server, source: str | None, target: str | None) -> ServedModel:
    if source is None and target is None and len(server.models) == 1:
        return server.models[0]
    if source is None or target is None:
        raise Refusal(400, f"name the language pair with source and target; this server serves {server.pairs_text()}")
    model = server.model_for(source.lower(), target.lower())
    if model is None:
        raise Refusal(400, f"no model here translates {shown(source)} to {shown(target)}; this server serves "
                           f"{server.pairs_text()}")
    return model


async def translate(body: TranslateRequest, request: Request) -> TranslateResponse:
    """Translate `texts` in order; blank texts give empty translations."""
    server: Server = request.app.state.server
    server.check_key(body.api_key)
    model = _model(server, body.source, body.target)
    if body.n_best > body.beam:
        raise Refusal(422, f"n_best ({body.n_best}) cannot exceed beam ({body.beam}): raise beam")
    server.check_texts(body.texts)
    server.check_key_chars(body.api_key, sum(len(text) for text in body.texts))
    results = await model.batcher.translate(body.texts, body.beam, body.n_best) if body.texts else []
    n_best = [[Scored(text=h.text, score=h.score) for h in hyps] for hyps in results] if body.n_best > 1 else None
    return TranslateResponse(translations=[hyps[0].text if hyps else "" for hyps in results], n_best=n_best,
                             model=model.name, source=model.source, target=model.target,
                             device=str(model.translator.device), beam=body.beam,
                             warnings=model.translator.input_warnings(body.texts))


async def attention(body: AttentionRequest, request: Request) -> AttentionResponse:
    """Greedy-decode one sentence and return the attention weights of each output character."""
    from .decode import attention_weights

    server: Server = request.app.state.server
    server.check_key(body.api_key)
    model = _model(server, body.source, body.target)
    if not model.has_attention:
        raise Refusal(409, f"model {model.name!r} has no attention weights to show (it was trained with --attention "
                           "none); serve a model trained with --attention luong")
    server.check_texts([body.text])
    server.check_key_chars(body.api_key, len(body.text))
    if not body.text.split():
        raise Refusal(422, "text is empty: give one sentence")
    loop = asyncio.get_running_loop()
    source, output, weights = await loop.run_in_executor(server.executor, attention_weights, model.translator,
                                                         body.text)
    # Lone surrogates have no UTF-8; a source unit is a character, or a subword piece of several.
    source = ["".join(ch if not 0xD800 <= ord(ch) <= 0xDFFF else "\ufffd" for ch in unit) for unit in source]
    return AttentionResponse(source=source, output=output, weights=[[round(w, 4) for w in row] for row in weights],
                             translation="".join(output),
                             warnings=model.translator.input_warnings([body.text], split=False))


async def health(request: Request) -> Health:
    """Liveness (LibreTranslate's clients read `status`), the models and the server's limits (the page reads them)."""
    return request.app.state.server.health()


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """One readable line, without echoing the input (it may not even be encodable as UTF-8)."""
    problems = []
    for e in exc.errors():
        if e.get("type") == "json_invalid":
            problems.append(f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'decode error')})")
            continue
        where = ".".join(str(part) for part in e.get("loc", ()) if part != "body") or "body"
        problems.append(f"{where}: {e.get('msg', 'invalid')}")
    return JSONResponse({"detail": shown("invalid request: " + "; ".join(problems), limit=2000)}, status_code=422)
