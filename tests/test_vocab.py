"""Character vocabularies: special tokens, NFC normalisation, unknown characters, round trips."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charmt.vocab import END, END_ID, PAD, PAD_ID, SPECIALS, START, START_ID, UNK, UNK_ID, Vocab, normalize

TEXTS = ["Va !", "Je suis désolé.", "Ma sœur est à l'école, où ça ?", "C’est l’été…", "Il a 3 chats."]
VOCAB = Vocab.build(TEXTS)


def test_special_tokens_are_distinct_and_pad_is_not_a_character():
    ids = {PAD: PAD_ID, UNK: UNK_ID, START: START_ID, END: END_ID}
    assert sorted(ids.values()) == [0, 1, 2, 3] and len(set(ids)) == 4
    assert [VOCAB.tokens[i] for i in range(4)] == list(SPECIALS)
    # The example padded with " ", so its mask masked nothing: here the space is an ordinary character.
    assert PAD != " " and " " in VOCAB.chars and VOCAB.index[" "] >= len(SPECIALS)
    assert START == "\t" and END == "\n"  # the example's start and end characters


def test_build_lists_each_character_once_sorted_without_the_markers():
    vocab = Vocab.build(["ba\tc", "a\nb", "cab"])
    assert vocab.chars == ["a", "b", "c"]
    assert vocab.tokens == list(SPECIALS) + ["a", "b", "c"] and len(vocab) == 7


@pytest.mark.parametrize(
    "tokens, message",
    [
        (["a", "b"], "a vocabulary must start with the special tokens"),
        ([*SPECIALS, "a", "a"], "a vocabulary must not list a token twice"),
    ],
)
def test_invalid_token_lists(tokens, message):
    with pytest.raises(ValueError, match=message):
        Vocab(tokens)


@pytest.mark.parametrize("decomposed, composed", [("e\u0301", "é"), ("c\u0327a", "ça"), ("E\u0301te\u0301", "Été")])
def test_nfc_normalisation_in_build_and_encode(decomposed, composed):
    assert normalize(decomposed) == composed
    built = Vocab.build([decomposed])
    assert built == Vocab.build([composed])
    assert "\u0301" not in built.chars and "\u0327" not in built.chars
    assert built.encode(decomposed) == built.encode(composed)
    assert UNK_ID not in built.encode(decomposed)
    assert built.unknown_chars(decomposed) == set()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Va !", ["V", "a", " ", "!"]),
        ("Vé ☃", ["V", "é", " ", UNK]),
        ("Ωl a", [UNK, "l", " ", "a"]),
    ],
)
def test_unknown_characters_become_unk(text, expected):
    assert [VOCAB.tokens[i] for i in VOCAB.encode(text)] == expected
    assert VOCAB.unknown_chars(text) == {t for t, e in zip(normalize(text), expected) if e == UNK}


def test_encode_adds_markers():
    assert VOCAB.encode("Va", add_start=True, add_end=True) == [START_ID, VOCAB.index["V"], VOCAB.index["a"], END_ID]


@pytest.mark.parametrize(
    "ids, expected",
    [
        ([START_ID, "V", "a", END_ID, "!"], "Va"),  # stops at END
        (["V", PAD_ID, "a", PAD_ID], "Va"),  # PAD left out
        ([START_ID, START_ID, "V"], "V"),  # START left out
        (["V", UNK_ID, "a"], "V\ufffda"),  # UNK shown as the replacement character
        ([END_ID, "V"], ""),
        ([], ""),
    ],
)
def test_decode_table(ids, expected):
    assert VOCAB.decode([VOCAB.index[i] if isinstance(i, str) else i for i in ids]) == expected


@settings(derandomize=True)
@given(st.lists(st.sampled_from(VOCAB.chars + ["e\u0301", "c\u0327"]), max_size=60).map("".join))
def test_round_trip_gives_the_nfc_form(text):
    assert VOCAB.decode(VOCAB.encode(text)) == unicodedata.normalize("NFC", text)
    assert VOCAB.decode(VOCAB.encode(text, add_start=True, add_end=True)) == normalize(text)
    assert VOCAB.unknown_chars(text) == set()


@settings(derandomize=True)
@given(st.text(alphabet=st.characters(blacklist_characters="\t\n", blacklist_categories=("Cs",)), max_size=40))
def test_any_text_encodes_to_one_id_per_nfc_character(text):
    ids = VOCAB.encode(text)
    assert len(ids) == len(normalize(text))
    assert all(i == UNK_ID or i >= len(SPECIALS) for i in ids)
    assert (UNK_ID in ids) == bool(VOCAB.unknown_chars(text))
