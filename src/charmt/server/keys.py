"""API keys for `charmt serve --api-keys FILE`: who may use the server, and how much.

The file holds one key a line, with its limits (0 or nothing: none); blank lines and # comments are skipped:

    # key                 requests per minute   characters per request
    3f9c2a7e-mastodon     120                   5000
    local-subtitles

Requests per minute are counted per key in memory with the `limits` package's moving window (what LibreTranslate
counts with, through flask-limiter); a key over its limit is answered 429 at once and never waits for the model,
so it cannot hold up the others. Characters per request add up every text of a request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .limits import Refusal

# LibreTranslate's own words, which its clients may show to users.
KEY_MISSING = "Please contact the server operator to get an API key"
KEY_INVALID = "Invalid API key"


@dataclass(frozen=True)
class KeyLimits:
    requests_per_minute: int | None = None
    chars_per_request: int | None = None


class ApiKeys:
    """The keys a server accepts and their limits; `check` answers each request."""

    def __init__(self, keys: dict[str, KeyLimits]):
        from limits import RateLimitItemPerMinute
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        if not keys:
            raise ConfigError("the API key file holds no key; add one per line, or leave out --api-keys")
        self.keys = dict(keys)
        self._rates = {key: RateLimitItemPerMinute(limit.requests_per_minute)
                       for key, limit in self.keys.items() if limit.requests_per_minute}
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    @classmethod
    def read(cls, path: str | os.PathLike) -> ApiKeys:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read the API key file {path}: {getattr(err, 'strerror', None) or err}") from None
        keys: dict[str, KeyLimits] = {}
        for number, line in enumerate(lines, 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            key, limits = fields[0], fields[1:]
            if len(limits) > 2 or not all(f.isdigit() for f in limits):
                raise ConfigError(f"{path}, line {number}: write KEY [REQUESTS_PER_MINUTE [CHARACTERS_PER_REQUEST]] "
                                  "with whole numbers (0 for no limit)")
            if key in keys:
                raise ConfigError(f"{path}, line {number}: the key {key[:4]}... is listed twice")
            per_minute, chars = (int(f) or None for f in (limits + ["0", "0"])[:2])
            keys[key] = KeyLimits(per_minute, chars)
        return cls(keys)

    def check(self, api_key: object) -> None:
        """Refuse a request without a known key (400, 403) or over its key's rate (429)."""
        if api_key is None or api_key == "":
            raise Refusal(400, KEY_MISSING)
        if not isinstance(api_key, str) or api_key not in self.keys:
            raise Refusal(403, KEY_INVALID)
        rate = self._rates.get(api_key)
        if rate is not None and not self._limiter.hit(rate, api_key):
            raise Refusal(429, f"Slowdown: {rate}")

    def check_chars(self, api_key: str, chars: int) -> None:
        """Refuse a request of more characters than its key allows (400, in LibreTranslate's words)."""
        limit = self.keys[api_key].chars_per_request
        if limit is not None and chars > limit:
            raise Refusal(400, f"Invalid request: request ({chars}) exceeds text limit ({limit})")
