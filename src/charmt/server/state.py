"""What the request handlers of both APIs share: the models, the limits, the API keys and the admission
(`request.app.state.server`, set by `create_app`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..languages import name_of
from .admission import Admission
from .limits import Limits, Refusal, shown
from .models import ServedModel

if TYPE_CHECKING:
    from .keys import ApiKeys


@dataclass
class Server:
    models: list[ServedModel]
    limits: Limits
    admission: Admission
    api_keys: ApiKeys | None = None

    def model_for(self, source: object, target: object) -> ServedModel:
        """The model of a pair, or a 400 that says which language is not served (in LibreTranslate's words)."""
        for code, known in ((source, {m.source for m in self.models}), (target, {m.target for m in self.models})):
            if code not in known:
                raise Refusal(400, f"{shown(code)} is not supported")
        model = next((m for m in self.models if m.pair == (source, target)), None)
        if model is None:
            raise Refusal(400, f"{name_of(target)} ({target}) is not available as a target language from "
                               f"{name_of(source)} ({source})")
        return model

    def pairs_text(self) -> str:
        return ", ".join(f"{m.source}->{m.target}" for m in self.models)

    def check_key(self, api_key: object) -> None:
        """With --api-keys: refuse a missing or unknown key, or one over its rate (see keys.py)."""
        if self.api_keys is not None:
            self.api_keys.check(api_key)

    def check_key_chars(self, api_key: object, chars: int) -> None:
        if self.api_keys is not None:
            self.api_keys.check_chars(api_key, chars)

    def health(self) -> dict:
        rss = process_rss_mb()
        return {"status": "ok", "models": [m.describe() for m in self.models], **self.limits.describe(),
                "queued": self.admission.queued(), "api_keys": self.api_keys is not None,
                "rss_mb": None if rss is None else round(rss, 1)}


def process_rss_mb() -> float | None:
    """This process's resident memory (Linux), else None."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
