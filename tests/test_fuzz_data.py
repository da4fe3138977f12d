"""Property tests of the data path: any file reads as a Corpus or raises DataError; well-formed pair files read
back exactly; vocabularies round-trip their characters; select() keeps its invariants for any options."""

from __future__ import annotations

import io
import re
import unicodedata
import zipfile
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charmt.config import SelectionConfig
from charmt.data import Corpus, Pair, read_corpus, select
from charmt.errors import DataError
from charmt.vocab import UNK_ID, Vocab, normalize

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# --- any bytes -----------------------------------------------------------------------------------------------

_line_text = st.text(st.characters(codec="utf-8"), max_size=20)
_text_file = st.lists(st.lists(_line_text, max_size=5).map("\t".join), max_size=8).map(
    lambda lines: "\n".join(lines).encode("utf-8"))


def _zip_of(members: dict[str, bytes], compression: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@st.composite
def _damaged_zip(draw) -> bytes:
    """A real zip of a pair file (sometimes with other members), then truncated or with bytes overwritten."""
    names = draw(st.lists(st.sampled_from(["fra.txt", "_about.txt", "deu.txt", "dir/fra.txt", "x.bin"]),
                          min_size=0, max_size=3, unique=True))
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
    data = bytearray(_zip_of({name: draw(_text_file) for name in names}, compression))
    for _ in range(draw(st.integers(0, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


_any_file = st.one_of(
    st.binary(max_size=300),
    _text_file,
    _text_file.map(lambda b: b"\xef\xbb\xbf" + b.replace(b"\n", b"\r\n")),
    st.tuples(_text_file, st.binary(max_size=4), _text_file).map(b"".join),  # a stray bad byte inside
    _damaged_zip(),
)


def _check_corpus(corpus: Corpus) -> None:
    assert corpus.pairs
    lines = [p.line for p in corpus.pairs]
    assert lines == sorted(set(lines)) and 1 <= lines[0] and lines[-1] <= corpus.n_lines
    assert corpus.malformed == sorted(set(corpus.malformed)) and not set(corpus.malformed) & set(lines)
    for p in corpus.pairs:
        assert p.source.strip() and p.target.strip()
        assert not {"\t", "\n"} & set(p.source + p.target)


@FUZZ
@given(content=_any_file)
def test_any_file_reads_as_a_corpus_or_raises_data_error(tmp_path, content):
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    try:
        corpus = read_corpus(path)
    except DataError as err:
        assert str(path) in str(err)
        return
    _check_corpus(corpus)


# --- well-formed files read back exactly ------------------------------------------------------------------------

# No tab, newline or CR (they delimit), no NUL (marks a binary file), no U+FEFF (a leading one is a BOM).
_field_chars = st.characters(codec="utf-8", exclude_characters="\t\n\r\x00\ufeff")
_field = st.text(_field_chars, min_size=1, max_size=15).filter(str.strip)
_pair_line = st.tuples(_field, _field, st.one_of(st.none(), st.text(_field_chars, max_size=10)))


@PROPERTY
@given(rows=st.lists(st.one_of(_pair_line, st.just(None)), min_size=1, max_size=12).filter(any),
       bom=st.booleans(), crlf=st.booleans(), final_newline=st.booleans(), reverse=st.booleans())
def test_well_formed_pairs_read_back_exactly(tmp_path, rows, bom, crlf, final_newline, reverse):
    """None rows are blank lines. Texts come back as written: read_corpus does not normalise (Vocab does)."""
    lines = ["" if r is None else "\t".join(r[:2] if r[2] is None else r) for r in rows]
    newline = "\r\n" if crlf else "\n"
    text = newline.join(lines) + (newline if final_newline else "")
    path = tmp_path / "pairs.txt"
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
    corpus = read_corpus(path, reverse=reverse)
    expected = [Pair(i, *((r[1], r[0]) if reverse else (r[0], r[1])), r[2] or "") for i, r in enumerate(rows, 1) if r]
    assert corpus.pairs == expected
    assert corpus.malformed == []
    assert corpus.blank == rows.count(None) + final_newline


def test_read_corpus_keeps_the_file_s_normalisation(tmp_path):
    """Decomposed accents stay decomposed in the Corpus; the vocabulary normalises, so both forms encode alike."""
    path = tmp_path / "pairs.txt"
    path.write_bytes("Cafe\u0301.\tCafe\u0301.\nCafé.\tCafé.\n".encode())
    pairs = read_corpus(path).pairs
    assert [p.source for p in pairs] == ["Cafe\u0301.", "Café."]
    vocab = Vocab.build(p.target for p in pairs)
    assert vocab.encode(pairs[0].target) == vocab.encode(pairs[1].target)
    assert "\u0301" not in vocab.chars


# --- vocabulary round trip ------------------------------------------------------------------------------------------

_vocab_text = st.text(st.characters(codec="utf-8", exclude_characters="\t\n"), max_size=30)


@PROPERTY
@given(texts=st.lists(_vocab_text, max_size=5), text=_vocab_text)
def test_vocab_round_trip(texts, text):
    vocab = Vocab.build([*texts, text])
    assert vocab.decode(vocab.encode(text)) == normalize(text)
    assert UNK_ID not in vocab.encode(text)
    assert len(vocab.chars) == len(set(vocab.chars)) and all(len(c) == 1 for c in vocab.chars)


@PROPERTY
@given(texts=st.lists(_vocab_text, max_size=5), text=_vocab_text)
def test_vocab_unknown_characters_become_replacement_characters(texts, text):
    vocab = Vocab.build(texts)
    expected = "".join(c if c in vocab.chars else "\ufffd" for c in normalize(text))
    assert vocab.decode(vocab.encode(text)) == expected
    assert vocab.unknown_chars(text) == set(normalize(text)) - set(vocab.chars)
    ids = vocab.encode(text, add_start=True, add_end=True)
    assert Vocab(list(vocab.tokens)).decode(ids) == expected  # a vocabulary rebuilt from config.json's list


# --- select() invariants --------------------------------------------------------------------------------------------

_PUNCTUATION = re.compile(r"[\W_]+", re.UNICODE)  # the example's dedupe key, as data.py defines it
# Few letters, accents in both normal forms and punctuation: duplicates and near-duplicates are common.
_short = st.lists(st.sampled_from(list("ab é.!?") + ["e\u0301"]), min_size=1, max_size=6).map("".join).filter(str.strip)


@st.composite
def _corpus(draw) -> Corpus:
    n_lines = draw(st.integers(1, 40))
    lines = sorted(draw(st.sets(st.integers(1, n_lines), min_size=1, max_size=n_lines)))
    pairs = [Pair(line, draw(_short), draw(_short)) for line in lines]
    return Corpus("fuzz.txt", "0" * 64, n_lines, pairs, malformed=[], blank=n_lines - len(pairs))


_limit = st.one_of(st.none(), st.integers(1, 8))
_selection = st.builds(
    SelectionConfig, seed=st.integers(0, 3), max_input_length=_limit, max_target_length=_limit,
    dedupe=st.booleans(), num_samples=st.one_of(st.none(), st.integers(1, 30)),
    validation_fraction=st.sampled_from([0.0, 0.1, 0.2, 0.5]), test_fraction=st.sampled_from([0.0, 0.1, 0.3]),
)


@FUZZ
@given(corpus=_corpus(), config=_selection)
def test_select_invariants(corpus, config):
    try:
        chosen = select(corpus, config)
    except DataError as err:
        assert "passes the selection" in str(err)
        return
    parts = {"train": chosen.train, "validation": chosen.validation, "test": chosen.test}
    everything = chosen.all_pairs
    assert everything and set(everything) <= set(corpus.pairs)
    # disjoint splits (a pair is identified by its line)
    assert len({p.line for p in everything}) == len(everything)
    # length limits
    assert all(len(p.source) <= (config.max_input_length or len(p.source)) for p in everything)
    assert all(len(p.target) <= (config.max_target_length or len(p.target)) for p in everything)
    # no two sources with the same dedupe key
    if config.dedupe:
        keys = Counter(_PUNCTUATION.sub("", p.source) for p in everything)
        assert max(keys.values()) == 1
    # sample count and skip accounting
    if config.num_samples is not None:
        assert len(everything) <= config.num_samples
    else:
        assert len(everything) + sum(chosen.skipped.values()) == len(corpus.pairs)
    # every translation of one source on one side
    side_of: dict[str, set[str]] = {}
    for name, pairs in parts.items():
        for p in pairs:
            side_of.setdefault(unicodedata.normalize("NFC", p.source).strip(), set()).add(name)
    assert all(len(sides) == 1 for sides in side_of.values())
    # held-out parts only when asked for
    assert not chosen.validation or config.validation_fraction > 0
    assert not chosen.test or config.test_fraction > 0
    # deterministic
    again = select(corpus, config)
    assert (again.train, again.validation, again.test) == (chosen.train, chosen.validation, chosen.test)


@pytest.mark.parametrize("seed", [0, 42])
def test_select_order_does_not_depend_on_which_lines_are_pairs(seed):
    """The shuffle permutes line positions, so dropping a malformed line does not reorder the others."""
    pairs = [Pair(i, f"s{i}", f"t{i}") for i in range(1, 31)]
    full = Corpus("a", "0" * 64, 30, pairs, [], 0)
    holed = Corpus("b", "0" * 64, 30, [p for p in pairs if p.line % 7], [n for n in range(1, 31) if n % 7 == 0], 0)
    config = SelectionConfig(seed=seed, max_input_length=None, dedupe=False, num_samples=None,
                             validation_fraction=0.0)
    assert [p for p in select(full, config).train if p.line % 7] == select(holed, config).train
