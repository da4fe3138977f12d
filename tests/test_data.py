"""Reading pair files in every shape, selecting pairs exactly as the Keras example does, and downloading."""

from __future__ import annotations

import hashlib
import http.server
import io
import random
import re
import threading
import zipfile
from pathlib import Path

import pytest

import charmt.downloads
from charmt.config import SelectionConfig
from charmt.data import Pair, read_corpus, select, split_by_source
from charmt.downloads import download
from charmt.errors import DataError, DownloadError

from conftest import write_pairs

ATTRIBUTION = "CC-BY 2.0 (France) Attribution: tatoeba.org #2877272 (CM) & #1158250 (Wittydev)"
PAIRS = [("Go.", "Va !"), ("Hi.", "Salut !"), ("Café?", "Un café ?"), ("I'm cold.", "J'ai froid.")]


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _file_bytes(columns: int, bom: bool, newline: str) -> bytes:
    lines = [f"{s}\t{t}" + (f"\t{ATTRIBUTION}" if columns == 3 else "") for s, t in PAIRS]
    return ("\ufeff" if bom else "").encode() + (newline.join(lines) + newline).encode("utf-8")


# --- reading ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["txt", "zip"])
@pytest.mark.parametrize("columns", [2, 3])
@pytest.mark.parametrize("bom", [False, True], ids=["nobom", "bom"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_read_corpus_every_file_shape(tmp_path, container, columns, bom, newline):
    raw = _file_bytes(columns, bom, newline)
    if container == "zip":  # like manythings' fra-eng.zip
        path = _zip(tmp_path / "fra-eng.zip", {"_about.txt": b"About these files\n", "fra.txt": raw})
    else:
        path = tmp_path / "fra.txt"
        path.write_bytes(raw)
    corpus = read_corpus(path)
    assert [(p.line, p.source, p.target) for p in corpus.pairs] == [(i, s, t) for i, (s, t) in enumerate(PAIRS, 1)]
    assert corpus.malformed == []
    assert (corpus.n_lines, corpus.blank) == (len(PAIRS) + 1, 1)  # the final newline ends in one empty "line"
    # The hash is the text's, so a model trained on the zip recognises the bare file as its training file.
    assert corpus.sha256 == hashlib.sha256(raw).hexdigest()
    assert corpus.report() == f"{len(PAIRS)} pairs read from {path}"


def test_reverse_swaps_columns(tmp_path):
    path = tmp_path / "fra.txt"
    path.write_bytes(_file_bytes(3, False, "\n"))
    assert [(p.source, p.target) for p in read_corpus(path, reverse=True).pairs] == [(t, s) for s, t in PAIRS]


@pytest.mark.parametrize(
    "lines, pairs, malformed, report_tail",
    [
        (["Go.\tVa !", "just text", "Hi.\tSalut !", "a\tb\tc\td", "\tno source", "no target\t", "", "  \t ",
          "Run!\tCours !"],
         [(1, "Go.", "Va !"), (3, "Hi.", "Salut !"), (9, "Run!", "Cours !")], [2, 4, 5, 6],
         "; 4 malformed lines skipped (lines 2, 4, 5, 6)"),
        (["x", "y", "Go.\tVa !", "z", "w", "v", "u"], [(3, "Go.", "Va !")], [1, 2, 4, 5, 6, 7],
         "; 6 malformed lines skipped (lines 1, 2, 4, 5, 6, ...)"),
    ],
)
def test_malformed_lines_are_counted_with_line_numbers(tmp_path, lines, pairs, malformed, report_tail):
    path = write_pairs(tmp_path / "pairs.txt", lines)
    corpus = read_corpus(path)
    assert [(p.line, p.source, p.target) for p in corpus.pairs] == pairs
    assert corpus.malformed == malformed
    assert corpus.report() == f"{len(pairs)} pairs read from {path}{report_tail}"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "holds no usable pair: expected lines of 'source<TAB>target[<TAB>attribution]'"),
        (b"\n\n  \n", "holds no usable pair: expected lines of 'source<TAB>target[<TAB>attribution]'"),
        (b"one column\nalso one\n", "holds no usable pair: expected lines of 'source<TAB>target[<TAB>attribution]' "
                                    "(2 malformed lines, first at line 1)"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks like a binary file, not a text file of tab-separated pairs"),
        ("Go.\tVa !\n".encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
        ("Go.\tVa !\nCafé\tCafé\n".encode("latin-1"), "is not UTF-8 text (bad byte at line 2); save it as UTF-8"),
    ],
    ids=["empty", "blank", "no-tabs", "binary", "utf16", "latin1"],
)
def test_unreadable_content_raises_data_error(tmp_path, content, message):
    path = tmp_path / "pairs.txt"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_corpus(path)
    assert str(err.value) == f"{path} {message}"


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'nope.txt'}: no such file")):
        read_corpus(tmp_path / "nope.txt")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path} is a directory, not a pair file")):
        read_corpus(tmp_path)


@pytest.mark.parametrize(
    "members, message",
    [
        ({"_about.txt": b"about"}, "expected exactly one pair file (*.txt besides _about.txt) in the zip, found []"),
        ({"fra.txt": b"Go.\tVa !\n", "deu.txt": b"Go.\tGeh.\n"},
         "expected exactly one pair file (*.txt besides _about.txt) in the zip, found ['fra.txt', 'deu.txt']"),
    ],
)
def test_zip_without_exactly_one_pair_file(tmp_path, members, message):
    path = _zip(tmp_path / "x.zip", members)
    with pytest.raises(DataError) as err:
        read_corpus(path)
    assert str(err.value) == f"{path}: {message}"


def test_damaged_zip(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("fra.txt", b"Go.\tVa !\n" * 20)
    data = bytearray(buffer.getvalue())
    data[data.index(b"Va !") + 1] ^= 0xFF  # the central directory is intact, the CRC no longer matches
    path = tmp_path / "fra-eng.zip"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=re.escape(f"{path} is a damaged zip file")):
        read_corpus(path)


# --- selection --------------------------------------------------------------------------------------------


def keras_example_selection(text: str, max_input_length: int, num_samples: int) -> list[tuple[str, str]]:
    """The Keras example's loop, as in the notebook (minus the vocabulary bookkeeping)."""
    lines = text.split("\n")
    saved = random.getstate()
    try:
        random.seed(42)
        random.shuffle(lines)  # Put the lines in a different order
    finally:
        random.setstate(saved)
    RE_W = re.compile(r"[\W_]+", re.UNICODE)
    input_texts, target_texts, seen_inputs = [], [], set()
    for line in lines:
        try:
            input_text, target_text, _ = line.split("\t")
        except ValueError:
            continue
        if len(input_text) > max_input_length:
            continue
        unq = RE_W.sub("", input_text)
        if unq in seen_inputs:
            continue
        seen_inputs.add(unq)
        input_texts.append(input_text)
        target_texts.append(target_text)
        if len(input_texts) >= num_samples:
            break
    return list(zip(input_texts, target_texts))


def _generated_corpus_text(n: int = 400) -> str:
    """3-column lines with exact and punctuation-only duplicates, long sources, a few malformed lines."""
    rng = random.Random(1234)
    words = ["I", "you", "Tom", "see", "like", "the", "cat", "dog", "café", "big", "red", "it's", "go", "run", "now"]
    lines = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.15 and lines:  # an exact duplicate of an earlier line, or the same source re-punctuated
            source = rng.choice(lines).split("\t")[0]
            source = source if rng.random() < 0.5 else source.rstrip(".!?") + rng.choice(["!", "?", " !", "..."])
        else:
            source = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6))).capitalize() + rng.choice(".!?")
        target = " ".join(rng.choice(["le", "chat", "voit", "aime", "chien", "grand"]) for _ in range(3)) + "."
        lines.append(f"{source}\t{target}\tCC-BY 2.0 (France) Attribution: tatoeba.org #{i}")
    lines[50] = "a line without any tab"
    lines[120] = "four\tcolumns\tare\ttoo many"
    lines.insert(200, "")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("max_input_length, num_samples", [(15, 60), (15, 10_000), (25, 100), (8, 10_000)])
def test_select_reproduces_the_keras_example(tmp_path, max_input_length, num_samples):
    text = _generated_corpus_text()
    path = tmp_path / "fra.txt"
    path.write_text(text, encoding="utf-8")
    expected = keras_example_selection(text, max_input_length, num_samples)
    assert 5 < len(expected) <= num_samples

    config = SelectionConfig(max_input_length=max_input_length, num_samples=num_samples)
    selection = select(read_corpus(path), config)
    assert [(p.source, p.target) for p in selection.all_pairs] == expected
    # Keras's validation_split holds out the last 20% of the (shuffled) samples.
    split_at = int(len(expected) * (1 - 0.2))
    assert [(p.source, p.target) for p in selection.train] == expected[:split_at]
    assert [(p.source, p.target) for p in selection.validation] == expected[split_at:]
    summary = selection.summary()
    assert summary["max_input_length"] == max(len(s) for s, _ in expected)  # the example's max_encoder_seq_length
    assert summary["max_target_length"] == max(len("\t" + t + "\n") for _, t in expected)


def test_select_counts_skips_by_reason(tmp_path):
    path = write_pairs(tmp_path / "pairs.txt", [
        "Go.\tVa !",
        "Go!\tVas-y !",  # same source once punctuation is stripped
        "Hello there, my friend.\tSalut l'ami.",  # source longer than 15
        "Hi.\tSalut, tout le monde, bonjour à tous.",  # target longer than 20
        "bad line",
        "Run.\tCours !",
    ])
    config = SelectionConfig(max_input_length=15, max_target_length=20, num_samples=None, validation_fraction=0.0)
    selection = select(read_corpus(path), config)
    assert sorted(p.source for p in selection.all_pairs) in (["Go.", "Run."], ["Go!", "Run."])
    assert selection.skipped == {"source too long": 1, "target too long": 1, "duplicate source": 1,
                                 "malformed line": 1}


def test_select_with_nothing_left(tmp_path):
    path = write_pairs(tmp_path / "pairs.txt", ["This source is far too long.\tCette phrase est longue."])
    with pytest.raises(DataError, match=r"no pair of .* passes the selection \({'source too long': 1}\); raise"):
        select(read_corpus(path), SelectionConfig())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"validation_fraction": 1.0}, "validation_fraction must be in [0, 1), got 1.0"),
        ({"test_fraction": -0.1}, "test_fraction must be in [0, 1), got -0.1"),
        ({"validation_fraction": 0.5, "test_fraction": 0.5},
         "validation_fraction + test_fraction must leave some pairs for training"),
        ({"max_input_length": 0}, "max_input_length must be at least 1 (or None for no limit), got 0"),
        ({"num_samples": -3}, "num_samples must be at least 1 (or None for no limit), got -3"),
    ],
)
def test_selection_config_rejects_bad_values(options, message):
    with pytest.raises(DataError) as err:
        SelectionConfig(**options)
    assert str(err.value) == message


def test_split_keeps_all_translations_of_a_source_together_and_holds_out_the_end(tmp_path):
    rng = random.Random(5)
    lines = []
    for i in range(60):
        for k in range(rng.randint(1, 4)):
            lines.append(f"Sentence number {i}.\tPhrase {i}, traduction {k}.")
    rng.shuffle(lines)
    path = write_pairs(tmp_path / "pairs.txt", lines)
    config = SelectionConfig(max_input_length=None, dedupe=False, num_samples=None, validation_fraction=0.2,
                             test_fraction=0.1)
    first, second = select(read_corpus(path), config), select(read_corpus(path), config)
    assert (first.train, first.validation, first.test) == (second.train, second.validation, second.test)
    sides = [{p.source for p in part} for part in (first.train, first.validation, first.test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert [len(s) for s in sides] == [42, 12, 6]  # floor(60 * 0.7), floor(60 * 0.9) - 42, the rest
    # Held-out parts come from the end of the shuffled order, as Keras's validation_split does.
    order = list(dict.fromkeys(p.source for p in first.all_pairs))
    assert order[:42] == list(dict.fromkeys(p.source for p in first.train))
    assert order[54:] == list(dict.fromkeys(p.source for p in first.test))


@pytest.mark.parametrize(
    "sources, validation_fraction, test_fraction, expected",
    [
        ("abcde", 0.2, 0.0, ("abcd", "e", "")),
        ("abacde", 0.2, 0.0, ("aabcd", "e", "")),
        ("abcdea", 0.4, 0.0, ("aabc", "de", "")),
        ("abcdefghij", 0.2, 0.1, ("abcdefg", "hi", "j")),
        ("ab", 0.1, 0.0, ("a", "b", "")),  # a validation set was asked for: at least one source
        ("a", 0.1, 0.0, ("", "a", "")),
        ("abc", 0.0, 0.0, ("abc", "", "")),
    ],
)
def test_split_by_source_table(sources, validation_fraction, test_fraction, expected):
    pairs = [Pair(i, s, f"{s}-{i}") for i, s in enumerate(sources, 1)]
    parts = split_by_source(pairs, validation_fraction, test_fraction)
    assert tuple("".join(p.source for p in part) for part in parts) == expected


# --- download ---------------------------------------------------------------------------------------------


class _Server:
    """A local stand-in for manythings.org: 403 without a browser-like User-Agent, as the real site answers;
    `busy` times 503 before answering."""

    def __init__(self, zip_bytes: bytes):
        self.requests: list[tuple[str, str]] = []
        self.busy = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                agent = self.headers.get("User-Agent", "")
                server.requests.append((self.path, agent))
                if not agent.startswith("Mozilla/5.0"):
                    return self._send(403, b"Forbidden", "text/plain")
                if server.busy:
                    server.busy -= 1
                    return self._send(503, b"Busy", "text/plain")
                if self.path == "/fra-eng.zip":
                    return self._send(200, zip_bytes, "application/zip")
                if self.path == "/page.html":
                    return self._send(200, b"<html>moved</html>" * 100, "text/html")
                return self._send(404, b"Not Found", "text/plain")

            def _send(self, code, body, kind):
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(tmp_path, monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    zip_path = _zip(tmp_path / "served.zip", {"fra.txt": _file_bytes(3, False, "\n"), "_about.txt": b"about"})
    running = _Server(zip_path.read_bytes())
    yield running
    running.close()


def test_download_writes_the_zip_into_the_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("CHARMT_CACHE", str(tmp_path / "cache"))
    path = download("fra", url=server.url + "/fra-eng.zip")
    assert path == tmp_path / "cache" / "fra-eng.zip"
    assert len(read_corpus(path).pairs) == len(PAIRS)
    assert [p for p, _ in server.requests] == ["/fra-eng.zip"]
    assert server.requests[0][1].startswith("Mozilla/5.0")  # the site answers 403 to urllib's own agent
    assert sorted(p.name for p in path.parent.iterdir()) == ["fra-eng.zip"]


def test_download_reuses_the_cached_file_without_a_request(server, tmp_path):
    cached = tmp_path / "fra-eng.zip"
    cached.write_bytes(b"whatever is there")
    assert download("fra", url=server.url + "/fra-eng.zip", directory=tmp_path) == cached
    assert server.requests == []
    assert download("fra", url=server.url + "/fra-eng.zip", directory=tmp_path, force=True) == cached
    assert len(server.requests) == 1 and zipfile.is_zipfile(cached)


@pytest.mark.parametrize("busy, succeeds", [(2, True), (3, False)])
def test_download_tries_twice_more_when_the_site_is_busy(server, tmp_path, monkeypatch, busy, succeeds):
    monkeypatch.setattr(charmt.downloads, "RETRY_WAIT_S", 0.0)
    server.busy = busy
    url, cache = server.url + "/fra-eng.zip", tmp_path / "cache"
    if succeeds:
        assert zipfile.is_zipfile(download("fra", url=url, directory=cache))
    else:
        with pytest.raises(DownloadError, match="HTTP 503"):
            download("fra", url=url, directory=cache)
        assert list(cache.iterdir()) == []
    assert len(server.requests) == min(busy + 1, 3)


@pytest.mark.parametrize(
    "path, message",
    [
        ("/page.html", "{url} did not return a zip file; the site may have changed or refused us"),
        ("/missing.zip", "{url}: HTTP 404 Not Found"),
    ],
)
def test_download_failures_leave_no_file(server, tmp_path, path, message):
    url = server.url + path
    with pytest.raises(DownloadError) as err:
        download("fra", url=url, directory=tmp_path / "cache")
    assert str(err.value) == message.format(url=url)
    assert list((tmp_path / "cache").iterdir()) == []  # neither fra-eng.zip nor a *.part


@pytest.mark.parametrize(
    "url, message",
    [
        ("not-a-url", "not-a-url is not a download address (unknown url type: 'not-a-url'); give a full URL like "
                      "https://www.manythings.org/anki/fra-eng.zip"),
        ("gopher2://example.org/x.zip", "gopher2://example.org/x.zip: download failed (unknown url type: gopher2)"),
    ],
)
def test_download_from_a_bad_address(tmp_path, url, message):
    with pytest.raises(DownloadError) as err:
        download("fra", url=url, directory=tmp_path)
    assert str(err.value) == message
    assert list(tmp_path.iterdir()) == []


def test_download_rejects_a_bad_language_code(tmp_path):
    with pytest.raises(DownloadError, match=r"'FR' is not a language code like 'fra' or 'deu'"):
        download("FR", directory=tmp_path)
    assert list(tmp_path.iterdir()) == []
