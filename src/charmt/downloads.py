"""Downloading manythings.org's pair files into a cache, never leaving a half-written file behind.

The cache is the platform's user cache folder (platformdirs: ~/.cache/charmt on Linux), or $CHARMT_CACHE. The site
answers 403 to clients that do not look like a browser, and its files change between releases, so there is no
checksum to hold them to: a download is accepted when it is a complete zip. Transient failures (connection
errors, HTTP 429 and 5xx) are retried twice.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from .errors import DownloadError

log = logging.getLogger("charmt")

DOWNLOAD_URL = "https://www.manythings.org/anki/{lang}-eng.zip"
# manythings.org answers 403 to clients that do not look like a browser.
_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
RETRIES = 2
RETRY_WAIT_S = 1.0  # doubled after each failed attempt


def cache_dir() -> Path:
    """$CHARMT_CACHE, else the platform's cache folder for charmt."""
    if os.environ.get("CHARMT_CACHE"):
        return Path(os.environ["CHARMT_CACHE"])
    import platformdirs

    return Path(platformdirs.user_cache_dir("charmt", appauthor=False))


def download(lang: str, *, url: str | None = None, directory: str | os.PathLike | None = None,
             force: bool = False, timeout: float = 60.0) -> Path:
    """Fetch manythings.org's `{lang}-eng.zip` into the cache and return its path.

    The file is written under a temporary name and renamed only once it is complete and is a zip, so an
    interrupted download never leaves a half-written file behind.
    """
    if not re.fullmatch(r"[a-z]{2,4}", lang):
        raise DownloadError(f"{lang!r} is not a language code like 'fra' or 'deu' (see manythings.org/anki)")
    url = url or DOWNLOAD_URL.format(lang=lang)
    target_dir = Path(directory) if directory is not None else cache_dir()
    target = target_dir / f"{lang}-eng.zip"
    if target.exists() and not force:
        log.info("using cached %s", target)
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    except ValueError as err:  # a --url without a scheme
        raise DownloadError(
            f"{url} is not a download address ({err}); give a full URL like {DOWNLOAD_URL.format(lang=lang)}"
        ) from None
    for attempt in range(RETRIES + 1):
        try:
            _fetch(request, target, timeout)
            return target
        except DownloadError as err:
            if not err.transient or attempt == RETRIES:
                raise
            log.warning("%s; trying again", err)
            time.sleep(RETRY_WAIT_S * 2**attempt)
    raise AssertionError("unreachable")


def _fetch(request: urllib.request.Request, target: Path, timeout: float) -> None:
    """One attempt: into a temporary file beside `target`, renamed only once it is a complete zip."""
    url = request.full_url
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as tmp, urllib.request.urlopen(request, timeout=timeout) as response:
            while chunk := response.read(1 << 16):
                tmp.write(chunk)
            tmp.flush()
            os.fsync(tmp.fileno())
        if not zipfile.is_zipfile(tmp_name):
            raise DownloadError(f"{url} did not return a zip file; the site may have changed or refused us")
        os.replace(tmp_name, target)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}", transient=err.code == 429 or err.code >= 500) \
            from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        # A refused, reset or timed-out connection may work later; "unknown url type" or a full disk will not.
        transient = isinstance(reason, (ConnectionError, TimeoutError)) or (
            isinstance(err, urllib.error.URLError) and isinstance(reason, OSError))
        raise DownloadError(f"{url}: download failed ({reason})", transient=transient) from None
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)

