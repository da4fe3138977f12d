"""The server's limits, each checked in one place; both APIs word the refusals their own way.

    --max-texts   texts per request                  --max-pieces  model inputs per request (lines, sentences)
    --max-chars   characters per text                --max-queue   requests waiting per model
    --beam        LibreTranslate's beam size         --timeout     seconds a request may take in all
    --length-penalty  every beam search's: scores / length**ALPHA
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..config import (
    DEFAULT_MAX_CHARS,
    DEFAULT_MAX_PIECES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_TEXTS,
    DEFAULT_TIMEOUT_S,
    MAX_BEAM,
)
from ..errors import CharmtError, ConfigError

RETRY_AFTER_S = 1  # what a 503 for a full queue tells the client to wait


class Refusal(CharmtError):
    """A request the server answers with an HTTP error status; each API words the body its own way."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class OverLimit(Refusal):
    """More of something than --max-texts or --max-chars allow (LibreTranslate words it with the two numbers)."""

    def __init__(self, message: str, *, count: int, limit: int):
        super().__init__(413, message)
        self.count, self.limit = count, limit


def shown(value: object, limit: int = 40) -> str:
    """A piece of a request, short enough to quote in an answer (lone surrogates are replaced when it is sent)."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def search_problem(beam: int, n_best: int) -> str | None:
    """What is wrong with a beam size and n-best count (None: nothing); each caller raises its own error."""
    if not 1 <= beam <= MAX_BEAM:
        return f"beam must be between 1 and {MAX_BEAM}, got {beam}"
    if not 1 <= n_best <= beam:
        return f"n_best ({n_best}) must be between 1 and beam ({beam}): raise beam"
    return None


@dataclass(frozen=True)
class Limits:
    max_texts: int = DEFAULT_MAX_TEXTS
    max_chars: int = DEFAULT_MAX_CHARS
    max_pieces: int = DEFAULT_MAX_PIECES
    max_queue: int = DEFAULT_MAX_QUEUE
    timeout_s: float = DEFAULT_TIMEOUT_S
    beam: int = 1  # the LibreTranslate API's beam size (its requests cannot choose one)
    length_penalty: float = 1.0  # every beam search's (Argos Translate's is 0.2)

    def __post_init__(self):
        for name in ("max_texts", "max_chars", "max_pieces", "max_queue"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.timeout_s > 0:
            raise ConfigError(f"--timeout must be more than 0 seconds, got {self.timeout_s}")
        if (problem := search_problem(self.beam, 1)) is not None:
            raise ConfigError(f"--{problem}")
        if not 0 <= self.length_penalty <= 10:
            raise ConfigError(f"--length-penalty must be from 0 to 10, got {self.length_penalty}")

    def check_texts(self, texts: list[str]) -> None:
        """--max-texts and --max-chars, as 413 with a remedy."""
        if len(texts) > self.max_texts:
            raise OverLimit(f"{len(texts)} texts in one request; this server accepts at most {self.max_texts} "
                            "(--max-texts); send them in several requests", count=len(texts), limit=self.max_texts)
        for i, text in enumerate(texts):
            if len(text) > self.max_chars:
                which = "text" if len(texts) == 1 else f"text {i}"
                raise OverLimit(f"{which} has {len(text)} characters; this server accepts at most {self.max_chars} "
                                "per text (--max-chars); split it into shorter texts", count=len(text),
                                limit=self.max_chars)

    def check_pieces(self, pieces: int) -> None:
        """--max-pieces: the model inputs of a request once its lines and sentences are split."""
        if pieces > self.max_pieces:
            raise Refusal(413, f"the request holds {pieces} lines and sentences to translate; this server translates "
                               f"at most {self.max_pieces} per request (--max-pieces); send them in several requests")

    def max_body(self) -> int:
        """The largest request body that can be within the limits. JSON escapes take at most 12 bytes per character
        (a surrogate pair); anything longer is over a limit anyway."""
        return self.max_texts * (12 * self.max_chars + 8) + 4096

    def describe(self) -> dict:
        return {**asdict(self), "max_beam": MAX_BEAM}
