"""Subword vocabularies: SentencePiece unigram pieces behind the surface of the character `Vocab`."""

from __future__ import annotations

import io
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from charmt.errors import ConfigError, DataError, ModelFormatError
from charmt.vocab import END_ID, PAD_ID, START_ID, UNK_ID, SubwordVocab, normalize

TEXTS = [
    "Go on.", "I’m here.", "We won’t go.", "Is it 1998 or 2024?", "He has 3 cats.", "Where is the station?",
    "Je suis désolé.", "Ma sœur est à l'école, où ça ?", "C’est l’été…", "Il a 3 chats.", "Où est la gare ?",
    "Ça ne fait rien.", "Où êtes-vous ?", "L’hôtel est fermé.",
    "我爱你。", "你好吗？", "我们走吧。", "他是学生。",
]
CORPUS = TEXTS * 4  # repeated so that pieces longer than a character are worth their place
VOCAB = SubwordVocab.train(CORPUS, 120)
ALPHABET = sorted(set("".join(TEXTS)) - {" "})


def test_special_ids_are_those_of_the_character_vocabulary():
    assert (PAD_ID, UNK_ID, START_ID, END_ID) == (0, 1, 2, 3)
    assert VOCAB.tokens[:4] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert all(VOCAB.index[piece] == i for i, piece in enumerate(VOCAB.tokens))
    assert len(VOCAB) == len(VOCAB.tokens) and repr(VOCAB) == f"SubwordVocab({len(VOCAB)} pieces)"
    # A text's own ids never include a special one but UNK.
    assert all(i > END_ID for text in TEXTS for i in VOCAB.encode(text))


def test_pieces_longer_than_one_character_are_learnt():
    assert any(len(piece) > 1 for piece in VOCAB.tokens[4:])
    assert len(VOCAB.encode("Où est la gare ?")) < len("Où est la gare ?")


@pytest.mark.parametrize("text", TEXTS)
def test_training_sentences_come_back(text):
    assert VOCAB.decode(VOCAB.encode(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "La gare est fermée.",  # French accents, unseen words
        "L’école où c’était…",  # typographic apostrophes
        "C'est l'hôtel ?",  # the straight apostrophe too
        "Where are we?",
        "I won’t go on.",
        "Il a 2024 chats.",
        "我们是学生吗？",  # Chinese, no spaces
        "你好。Go on.",  # scripts side by side
    ],
)
def test_unseen_sentences_of_seen_characters_come_back(text):
    assert VOCAB.unknown_chars(text) == set()
    assert UNK_ID not in VOCAB.encode(text)
    assert VOCAB.decode(VOCAB.encode(text)) == text


@pytest.mark.parametrize("text", [" Go on.", "Go on. ", "Go  on.", "   ", " 我爱你 。 "])
def test_spaces_come_back_as_they_were(text):
    # charmt collapses runs of whitespace before translating, but the vocabulary does not rely on it: the model is
    # trained with remove_extra_whitespaces=False, so leading, trailing and repeated spaces all come back.
    assert VOCAB.decode(VOCAB.encode(text)) == text


def test_digits_are_pieces_of_their_own():
    assert [VOCAB.tokens[i] for i in VOCAB.encode("1998")][-4:] == ["1", "9", "9", "8"]


@pytest.mark.parametrize(
    "text, unknown, decoded",
    [
        ("Go ☃ on.", {"☃"}, "Go \ufffd on."),
        ("☃☃ on", {"☃"}, "\ufffd\ufffd on"),  # one UNK per character, as in Vocab
        ("Ωkayak", {"Ω", "k", "y"}, "\ufffd\ufffda\ufffda\ufffd"),
        ("a\u2581b", {"\u2581", "b"}, "a\ufffd\ufffd"),  # SentencePiece's own space mark is no character of the text
        ("I\ud800m", {"\ud800"}, "I\ufffdm"),  # a lone surrogate
        ("猫。", {"猫"}, "\ufffd。"),
    ],
)
def test_unknown_characters_become_unk_and_come_back_as_the_replacement_character(text, unknown, decoded):
    assert VOCAB.unknown_chars(text) == unknown
    ids = VOCAB.encode(text)
    assert ids.count(UNK_ID) == sum(ch in unknown for ch in text)
    assert VOCAB.decode(ids) == decoded


@pytest.mark.parametrize("decomposed, composed", [("e\u0301te\u0301", "été"), ("c\u0327a", "ça")])
def test_encode_normalises_to_nfc(decomposed, composed):
    assert VOCAB.encode(decomposed) == VOCAB.encode(composed)
    assert VOCAB.unknown_chars(decomposed) == set()
    assert VOCAB.decode(VOCAB.encode(decomposed)) == composed


def test_encode_adds_markers():
    ids = VOCAB.encode("Go on.")
    assert VOCAB.encode("Go on.", add_start=True) == [START_ID, *ids]
    assert VOCAB.encode("Go on.", add_end=True) == [*ids, END_ID]
    assert VOCAB.encode("Go on.", add_start=True, add_end=True) == [START_ID, *ids, END_ID]
    assert VOCAB.encode("", add_start=True, add_end=True) == [START_ID, END_ID]


def test_decode_stops_at_end_and_leaves_out_pad_and_start():
    ids = VOCAB.encode("Go on.")
    assert VOCAB.decode([START_ID, *ids, END_ID, *VOCAB.encode("No")]) == "Go on."
    assert VOCAB.decode([PAD_ID, *ids[:2], PAD_ID, *ids[2:], PAD_ID]) == "Go on."
    assert VOCAB.decode([START_ID, START_ID, *ids]) == "Go on."
    assert VOCAB.decode([END_ID, *ids]) == "" and VOCAB.decode([]) == ""
    assert VOCAB.decode(iter([*ids, UNK_ID])) == "Go on.\ufffd"


def test_training_is_deterministic_and_the_model_loads_back():
    again = SubwordVocab.train(CORPUS, 120)
    assert again.model_bytes == VOCAB.model_bytes and again == VOCAB
    loaded = SubwordVocab(VOCAB.model_bytes, VOCAB.chars)
    assert loaded == VOCAB and loaded.tokens == VOCAB.tokens
    assert loaded.encode("L’été") == VOCAB.encode("L’été")


def test_chars_are_the_characters_of_the_training_text():
    assert VOCAB.chars == sorted(set("".join(TEXTS)))
    # Without stored characters they are read from the model's pieces: the same for a corpus with spaces.
    assert SubwordVocab(VOCAB.model_bytes).chars == VOCAB.chars
    # A corpus without spaces: the space is still encodable (SentencePiece's mark before each sentence) but was
    # never seen, so only the stored list leaves it out of the characters a language detector counts.
    chinese = SubwordVocab.train(["我爱你。", "你好吗？"], 30)
    assert chinese.chars == sorted("我爱你。好吗？") and " " in SubwordVocab(chinese.model_bytes).chars
    assert chinese.unknown_chars("我 爱") == set()


def test_vocab_size_is_reached_on_a_corpus_big_enough():
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyzéèà") for _ in range(rng.randint(2, 9))) for _ in range(400)]
    corpus = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(2000)]
    for size in (100, 300):
        assert len(SubwordVocab.train(corpus, size)) == size


def test_a_tiny_corpus_gives_fewer_pieces_but_a_working_vocabulary():
    tiny = SubwordVocab.train(["Va !", "Cours !"], 500)
    assert 4 + len(set("Va ! Cours !")) <= len(tiny) < 500
    assert tiny.decode(tiny.encode("Cours ! Va !")) == "Cours ! Va !"


def test_low_character_coverage_leaves_the_rarest_characters_unknown():
    vocab = SubwordVocab.train(["aaaa bbbb aaaa bbbb"] * 50 + ["z"], 20, character_coverage=0.99)
    assert "z" not in vocab.chars and vocab.unknown_chars("ab z") == {"z"}
    assert vocab.decode(vocab.encode("ab z")) == "ab \ufffd"


def test_training_writes_no_file_and_prints_nothing(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    SubwordVocab.train(CORPUS, 80)
    SubwordVocab(VOCAB.model_bytes).encode("Go on.")
    assert list(tmp_path.iterdir()) == []
    assert capfd.readouterr() == ("", "")


def test_encoding_from_several_threads_gives_the_results_of_one():
    sentences = [f"{a} {b}" for a in TEXTS for b in TEXTS]
    expected = [VOCAB.encode(s) for s in sentences]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(VOCAB.encode, sentences * 4)) == expected * 4
        assert list(pool.map(VOCAB.decode, expected * 4)) == sentences * 4


def _foreign_model() -> bytes:
    """A SentencePiece model trained with SentencePiece's defaults (<unk> at id 0, no <pad>)."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.Train(sentence_iterator=iter(TEXTS), model_writer=out, vocab_size=100, minloglevel=3,
                                   hard_vocab_limit=False)
    return out.getvalue()


@pytest.mark.parametrize(
    "model_bytes, message",
    [
        (b"", r"^the subword model is not a SentencePiece model \(.*\): its sentencepiece.model is truncated or "
              r"foreign; train the model again$"),
        (b"not a model", r"^the subword model is not a SentencePiece model"),
        (VOCAB.model_bytes[:-40], r"^the subword model is not a SentencePiece model"),
        (_foreign_model(), r"^the SentencePiece model was not trained by charmt \(ids 0-3 are \['<unk>', '<s>', "
                           r"'</s>', .*\], not \['<pad>', '<unk>', '<s>', '</s>'\] with <unk> shown as U\+FFFD\): "
                           r"train it with SubwordVocab.train$"),
    ],
)
def test_bytes_that_are_not_a_charmt_model_are_refused(model_bytes, message):
    with pytest.raises(ModelFormatError, match=message):
        SubwordVocab(model_bytes)


def test_stored_characters_must_belong_to_the_model():
    with pytest.raises(ModelFormatError, match=r"^the characters stored with the subword model \('Ωℵ'\) are not in "
                                               r"its pieces: sentencepiece.model and the vocabulary come from "
                                               r"different trainings; train again$"):
        SubwordVocab(VOCAB.model_bytes, [*VOCAB.chars, "ℵ", "Ω"])


def test_training_errors_say_what_to_change():
    with pytest.raises(DataError, match="^no text to train a subword vocabulary on: give at least one non-empty "
                                        "sentence$"):
        SubwordVocab.train([], 50)
    with pytest.raises(ConfigError, match=r"^a vocabulary of 8 pieces cannot hold the 4 special tokens and the 13 "
                                          r"characters of the texts: raise vocab_size to at least 17, or lower "
                                          r"character_coverage$"):
        SubwordVocab.train(["abcdefghijkl"], 8)


@settings(derandomize=True, max_examples=200)
@given(st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=12), min_size=1, max_size=8).map(" ".join))
def test_any_text_of_the_training_alphabet_with_single_spaces_comes_back(text):
    ids = VOCAB.encode(text)
    assert UNK_ID not in ids and VOCAB.unknown_chars(text) == set()
    assert VOCAB.decode(ids) == normalize(text) == text
