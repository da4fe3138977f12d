"""charmt's own JSON API, for what LibreTranslate's cannot ask: beam size, n-best lists, attention weights.

    POST /api/translate  {"texts": [...], "source": "en", "target": "fr", "beam": 5, "n_best": 3}
    POST /api/attention  {"text": "...", "source": "en", "target": "fr"} -> characters and attention weights
    GET  /health         status, models (languages, memory, load time, attention) and the server's limits

`source` and `target` may be left out while the server serves one model. Errors are {"detail": "..."}.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from ..config import MAX_BEAM
from .asgi import Answer
from .limits import Refusal, search_problem, shown
from .models import ServedModel
from .state import Server

DESCRIPTION = ("Character-level seq2seq translation: LibreTranslate's API (/translate, /languages, /detect, "
               "/frontend/settings) and charmt's own (/api/...). Limits and models: GET /health.")


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(description="texts to translate (limits: GET /health); a text of several sentences is "
                                         "split and rejoined")
    source: str | None = Field(None, description="source language code, e.g. en (optional with one model)")
    target: str | None = Field(None, description="target language code, e.g. fr (optional with one model)")
    # The range is documented here and checked by limits.search_problem, as for LibreTranslate's alternatives.
    beam: int = Field(1, description=f"beam size, 1 for greedy decoding, at most {MAX_BEAM}",
                      json_schema_extra={"minimum": 1, "maximum": MAX_BEAM})
    n_best: int = Field(1, description="hypotheses per text, at most `beam`",
                        json_schema_extra={"minimum": 1, "maximum": MAX_BEAM})
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
    source: list[str] = Field(description="source units (columns): characters, or subword pieces")
    output: list[str] = Field(description="output units (rows); joined, they are the translation")
    weights: list[list[float]] = Field(description="weights[i][j]: attention of output i on source j")
    translation: str
    shown: str = Field(description="which attention the weights are (a Transformer's: how its layers and heads "
                                   "are combined)")
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
    max_texts: int = Field(description="texts per request (--max-texts)")
    max_chars: int = Field(description="characters per text (--max-chars)")
    max_pieces: int = Field(description="lines and sentences per request, once split (--max-pieces)")
    max_queue: int = Field(description="requests waiting or running per model before more are answered 503 "
                                       "(--max-queue)")
    timeout_s: float = Field(description="seconds a request may take before it is answered 504 (--timeout)")
    max_beam: int
    beam: int = Field(description="the beam size of LibreTranslate's /translate")
    queued: int = Field(description="requests waiting or running now")
    api_keys: bool = Field(description="whether requests need an api_key")
    rss_mb: float | None = Field(description="the server process's resident memory")


class Error(BaseModel):
    detail: str


ERRORS = {
    400: {"model": Error, "description": "no such language pair, a missing key, or an error from the model"},
    403: {"model": Error, "description": "an unknown api_key"},
    413: {"model": Error, "description": "too many texts, lines and sentences, or a text too long"},
    422: {"model": Error, "description": "invalid request body"},
    429: {"model": Error, "description": "the api_key is over its requests per minute"},
    500: {"model": Error, "description": "the translation failed (the server's log says why)"},
    503: {"model": Error, "description": "the server is busy (too many requests waiting): retry after Retry-After"},
    504: {"model": Error, "description": "the request took longer than the server's --timeout"},
}
ATTENTION_ERRORS = {**ERRORS, 409: {"model": Error, "description": "the model has no attention"}}


router = APIRouter()


def _model(server: Server, source: str | None, target: str | None) -> ServedModel:
    if source is None and target is None and len(server.models) == 1:
        return server.models[0]
    if source is None or target is None:
        raise Refusal(400, f"name the language pair with source and target; this server serves {server.pairs_text()}")
    try:
        return server.model_for(source.lower(), target.lower())
    except Refusal as err:
        raise Refusal(err.status, f"{err}; this server serves {server.pairs_text()}") from None


@router.post("/api/translate", response_model=TranslateResponse, responses=ERRORS)
async def translate(body: TranslateRequest, request: Request) -> TranslateResponse:
    """Translate `texts` in order; blank texts give empty translations."""
    server: Server = request.app.state.server
    server.check_key(body.api_key)
    model = _model(server, body.source, body.target)
    if (problem := search_problem(body.beam, body.n_best)) is not None:
        raise Refusal(422, problem)
    server.limits.check_texts(body.texts)
    server.check_key_chars(body.api_key, sum(len(text) for text in body.texts))
    results, warnings = await server.admission.translate(model, body.texts, beam=body.beam, n_best=body.n_best,
                                                         deadline=server.admission.deadline(), warnings=True)
    n_best = [[Scored(text=h.text, score=h.score) for h in hyps] for hyps in results] if body.n_best > 1 else None
    return TranslateResponse(translations=[hyps[0].text if hyps else "" for hyps in results], n_best=n_best,
                             model=model.name, source=model.source, target=model.target,
                             device=str(model.translator.device), beam=body.beam, warnings=warnings)


@router.post("/api/attention", response_model=AttentionResponse, responses=ATTENTION_ERRORS)
async def attention(body: AttentionRequest, request: Request) -> AttentionResponse:
    """Greedy-decode one sentence and return the attention weights of each output character."""
    from ..decode import ATTENTION_SHOWN, attention_weights

    server: Server = request.app.state.server
    server.check_key(body.api_key)
    model = _model(server, body.source, body.target)
    if not model.has_attention:
        raise Refusal(409, f"model {model.name!r} has no attention weights to show (it was trained with --attention "
                           "none, or is a CTranslate2 export, whose search the display cannot drive); serve a model "
                           "directory with attention")
    server.limits.check_texts([body.text])
    server.check_key_chars(body.api_key, len(body.text))
    if not body.text.split():
        raise Refusal(422, "text is empty: give one sentence")

    def weights_and_warnings():
        return (attention_weights(model.translator, body.text),
                model.translator.input_warnings([body.text], split=False))

    (source, output, weights), warnings = await server.admission.call(model, weights_and_warnings,
                                                                      deadline=server.admission.deadline())
    return AttentionResponse(source=source, output=output, weights=[[round(w, 4) for w in row] for row in weights],
                             translation="".join(output), shown=ATTENTION_SHOWN[model.translator.info.model.arch],
                             warnings=warnings)


@router.get("/health", response_model=Health)
async def health(request: Request) -> Health:
    """Liveness (LibreTranslate's clients read `status`), the models and the server's limits (the page reads them)."""
    return request.app.state.server.health()


async def invalid_request(request: Request, exc: RequestValidationError) -> Answer:
    """One readable line, without echoing the input (it may not even be encodable as UTF-8)."""
    problems = []
    for e in exc.errors():
        if e.get("type") == "json_invalid":
            problems.append(f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'decode error')})")
            continue
        where = ".".join(str(part) for part in e.get("loc", ()) if part != "body") or "body"
        problems.append(f"{where}: {e.get('msg', 'invalid')}")
    return Answer({"detail": shown("invalid request: " + "; ".join(problems), limit=2000)}, status_code=422)
