"""Text cut into pieces to translate and pieces kept (charmt/markup.py), and put back around the translations: the
pieces always join into the text, and every text path takes time linear in the text's length, hostile shapes
included (unclosed tags, comments and quotes, deep nesting, runs of combining marks)."""

from __future__ import annotations

import html
import time
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charmt.markup import rebuild, segments
from charmt.server.libretranslate import detect_language
from charmt.vocab import Vocab, canonical_spaces, collapse_whitespace, normalize


@pytest.mark.parametrize("text, is_html, translated", [
    ("Hi. Go.", False, ["Hi. Go."]),
    ("  Hi.\n\nGo. \n", False, ["Hi.", "Go."]),
    (" \n ", False, []),
    ("<p>Hi <b>you</b></p>", True, ["Hi", "you"]),
    ("a < b, c > d", True, ["a < b, c > d"]),  # not tags: '<' before a space
    ("<!-- Hi --><p>&nbsp;</p><br/>Go<code>x <i>y</i> z</code>.", True, ["Go", "."]),
    ("<unclosed Hi", True, ["<unclosed Hi"]),
    ('<a title="x > y">Hi</a><b title=\'>\'>Go</b>', True, ["Hi", "Go"]),  # a > in quotes does not end a tag
    ('<a title="unclosed>Hi</a> <b>Go</b>', True, ['<a title="unclosed>Hi', "Go"]),  # nor does an open quote
    ("<!DOCTYPE html><?xml x?><p>Hi</p><!-- never closed <p>Go</p>", True, ["Hi"]),
    ("<pre><code>x</code> y</pre>Hi<PRE/>Go", True, ["Hi", "Go"]),  # a self-closed <pre/> opens nothing
    ("<pre>a<script>b</pre>Hi</script>Go", True, ["Hi", "Go"]),  # </pre> closes what was opened inside it
])
def test_segments_cut_a_text_into_pieces_to_translate(text, is_html, translated):
    pieces = segments(text, is_html)
    assert "".join(piece for piece, _ in pieces) == text
    assert [piece for piece, keep in pieces if not keep] == translated


def test_html_keeps_the_tags_entities_go_to_the_model_unescaped_and_come_back_escaped():
    q = ('<p>I am cold.</p>\n<p class="h-card">Hi <a href="https://example.org/@paul" title="a > b">Paul</a>!</p>'
         '<pre>Go.</pre><script>let go = "Go.";</script> Tom &amp; Jerry')
    pieces = segments(q, True)
    sources = [html.unescape(piece) for piece, keep in pieces if not keep]
    assert sources == ["I am cold.", "Hi", "Paul", "!", "Tom & Jerry"]
    translated = rebuild(pieces, [f"<{s.upper()}>" for s in sources], True)
    assert translated == ('<p>&lt;I AM COLD.&gt;</p>\n<p class="h-card">&lt;HI&gt; <a href="https://example.org/@paul"'
                          ' title="a > b">&lt;PAUL&gt;</a>&lt;!&gt;</p><pre>Go.</pre><script>let go = "Go.";</script>'
                          ' &lt;TOM &amp; JERRY&gt;')


def test_plain_text_is_rebuilt_line_by_line_as_given():
    pieces = segments("  Hi.\n\nGo. \n", False)
    assert rebuild(pieces, ["Salut <b>.", "Va\ud800."], False) == "  Salut <b>.\n\nVa\ud800. \n"


# Characters that make tags, comments, quotes, entities and line breaks, and any others.
_MARKUP = st.lists(st.sampled_from(list("<>\"'!-/?=&;# \n\tap") + [
    "<a ", "</a>", "<!--", "-->", "<pre>", "</pre>", "<script>", "&amp;", "&nbsp;", "<br/>"]) | st.characters(),
    max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=_MARKUP | st.text(), is_html=st.booleans())
def test_the_pieces_join_into_the_text_and_only_text_is_given_to_translate(text, is_html):
    pieces = segments(text, is_html)
    assert "".join(piece for piece, _ in pieces) == text
    for piece, keep in pieces:
        assert piece and (keep or piece == piece.strip() != "")
    assert rebuild(pieces, [piece for piece, keep in pieces if not keep], False) == text


# --- time linear in the length -----------------------------------------------------------------------------


def _seconds(function, text: str) -> float:
    """The fastest of three runs, to see the function's time rather than the machine's other work."""
    times = []
    for _ in range(3):
        start = time.monotonic()
        function(text)
        times.append(time.monotonic() - start)
    return min(times)


def _assert_linear(function, make) -> None:
    """`function` on make(n) and make(4n) within a deadline, and the second not more than about 4x as long."""
    function(make(100))  # anything built once, on first use, is not what is measured
    time_short, time_long = _seconds(function, make(25_000)), _seconds(function, make(100_000))
    assert time_long < 2
    assert time_long <= 8 * time_short + 0.005, (time_short, time_long)  # quadratic would be 16x


_HOSTILE_HTML = {
    "<a": lambda n: "<a" * (n // 2),  # the old regex: 4,000 characters of it took 0.2 s
    "<!--": lambda n: "<!--" * (n // 4),
    '<"': lambda n: "<" + '"' * n,
    "&": lambda n: "&" * n,
    "nested": lambda n: "<b>" * (n // 7) + "x" + "</b>" * (n // 7),  # 25,000 and 100,000 characters: 3,600+ deep
    "nested pre": lambda n: "<pre><code>" * (n // 24) + "x" + "</code></pre>" * (n // 24),
    "unclosed quotes": lambda n: '<a b="c" d="' * (n // 12),
    "quotes": lambda n: "<a \"'" * (n // 5),
    "<a x": lambda n: "<a x" * (n // 4),
    "</ <! <?": lambda n: "</<!<?" * (n // 6),
    "<![": lambda n: "<![" * (n // 3),
}


def _round_trip(text: str) -> str:
    pieces = segments(text, True)
    return rebuild(pieces, [html.unescape(piece) for piece, keep in pieces if not keep], True)


@pytest.mark.parametrize("shape", _HOSTILE_HTML)
def test_html_takes_time_linear_in_the_length(shape):
    _assert_linear(_round_trip, _HOSTILE_HTML[shape])


def test_ten_thousand_nested_tags_and_a_text_inside_them():
    text = "<div>" * 10_000 + "Hi" + "</div>" * 10_000
    start = time.monotonic()
    pieces = segments(text, True)
    assert time.monotonic() - start < 2
    assert [piece for piece, keep in pieces if not keep] == ["Hi"]


@pytest.mark.parametrize("shape", ["Hi. \n", "\n", " ", "x"])
def test_plain_text_takes_time_linear_in_the_length(shape):
    _assert_linear(lambda text: segments(text, False), lambda n: shape * (n // len(shape)))


# Runs of combining marks in no canonical order: unicodedata's NFC alone took 13 s on 100,000 of them.
_MARKS = {
    "alternating": lambda n: "a" + "\u0301\u0316" * (n // 2),
    "reversed": lambda n: "a" + "\u0301" * (n // 2) + "\u0316" * (n // 2),
    "tibetan": lambda n: "a" + "\u0f73" * n,  # a vowel sign that decomposes into two marks
    "accents and letters": lambda n: ("x" + "\u0316\u0301" * 20) * (n // 41),
}


@pytest.mark.parametrize("shape", _MARKS)
def test_normalizing_takes_time_linear_in_the_length(shape):
    _assert_linear(normalize, _MARKS[shape])
    _assert_linear(Vocab.build(["abc"]).unknown_chars, _MARKS[shape])


def test_a_long_run_of_marks_gets_a_joiner_after_every_thirty_and_real_text_is_plain_nfc():
    # 80 marks after "a": a joiner after the 30th and the 60th; in each run, those below (220) before those above
    # (230), and the first acute accent composes with the letter.
    assert normalize("a" + "\u0316\u0301" * 40) == ("\u00e1" + "\u0316" * 15 + "\u0301" * 14 + "\u034f"
                                                    + "\u0316" * 15 + "\u0301" * 15 + "\u034f"
                                                    + "\u0316" * 10 + "\u0301" * 10)
    assert normalize("e\u0301" * 1000) == "\u00e9" * 1000
    assert normalize("Cafe\u0301 ou\u0300 \u1100\u1161") == "Café où \uac00"


@pytest.mark.parametrize("function", [normalize, canonical_spaces, collapse_whitespace,
                                      Vocab.build(["abc"]).unknown_chars])
@pytest.mark.parametrize("unit", ["e\u0301\u202f ", "\u0316\u0301", "\u00a0\u3000\t", "x"])
def test_a_megabyte_of_text_takes_well_under_a_second(function, unit):
    text = unit * (1_000_000 // len(unit))
    function(text[:100])
    start = time.monotonic()
    function(text)
    assert time.monotonic() - start < 1


def test_detecting_the_language_of_a_megabyte_of_marks_takes_well_under_a_second():
    model = SimpleNamespace(source="en", translator=SimpleNamespace(source_vocab=Vocab.build(["abc"])))
    text = "a" + "\u0301\u0316" * 500_000
    start = time.monotonic()
    assert detect_language([model], [text]) == [{"confidence": 0.0, "language": "en"}]
    assert time.monotonic() - start < 2
