"""Every language pair: codes from file names and in the model, sentences split and joined per script, BLEU's
tokenizer per language, typographic spaces, rare characters, and the human baseline on a case worked by hand.
The fixtures are written here (a few made-up sentences per script), never taken from the shared data."""

from __future__ import annotations

import itertools
import json
import math
import threading
import time

import numpy as np
import pytest
import sacrebleu
from hypothesis import given, settings
from hypothesis import strategies as st

import charmt.languages
from charmt import checkpoint as ckpt
from charmt.cli import main
from charmt.config import SelectionConfig, updated
from charmt.data import read_corpus, select
from charmt.decode import Translator
from charmt.evaluate import human_baseline
from charmt.languages import bleu_tokenizer, is_rtl, join_sentences, languages_of_file, name_of, split_sentences
from charmt.metrics import score_translations
from charmt.training import model_languages, train
from charmt.vocab import UNK_ID, Vocab, canonical_spaces

from conftest import TINY_MODEL, TINY_SELECTION, TINY_TRAIN, write_pairs

# --- fixtures: small pair files in other scripts ------------------------------------------------------------

_NUMBERS_EN = ["one", "two", "three", "four", "five", "six"]
_NUMBERS_ZH = ["一", "两", "三", "四", "五", "六"]
_THINGS = [("apples", "苹果", "תפוחים"), ("books", "书", "ספרים"), ("cats", "猫", "חתולים"),
           ("cups", "杯子", "כוסות"), ("pens", "笔", "עטים")]


def chinese_lines() -> list[str]:
    """'I have two books.' -> '我有两本书。' style pairs (measure words left out: this is a fixture, not a course)."""
    return [f"I have {n} {en}.\t我有{z}个{zh}。" for (n, z), (en, zh, _) in
            itertools.product(zip(_NUMBERS_EN, _NUMBERS_ZH), _THINGS)]


def hebrew_lines() -> list[str]:
    return [f"I see the {en}.\tאני רואה את ה{he}." for en, _, he in _THINGS] + \
           [f"Where are the {en}?\tאיפה ה{he}?" for en, _, he in _THINGS]


# --- codes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [("fra.txt", ("en", "fr")), ("fra-eng.zip", ("en", "fr")), ("eng-fra.txt", ("en", "fr")),
     ("cmn.txt", ("en", "zh")), ("jpn.train.txt", ("en", "ja")), ("deu-eng/deu.txt", ("en", "de")),
     ("heb.test.txt", ("en", "he")), ("pairs.txt", None), ("data.txt", None)],
)
def test_languages_from_manythings_file_names(name, expected):
    assert languages_of_file(name) == expected


@pytest.mark.parametrize(
    "name, reverse, given, expected",
    [("cmn.txt", False, {}, ("en", "zh")), ("cmn.txt", True, {}, ("zh", "en")),
     ("pairs.txt", False, {}, (None, None)), ("pairs.txt", True, {"source_lang": "he", "target_lang": "en"},
                                              ("he", "en")),
     ("fra.txt", False, {"target_lang": "fr-ca"}, ("en", "fr-ca"))],
)
def test_model_languages_follow_the_name_reverse_and_options(name, reverse, given, expected):
    assert model_languages(name, SelectionConfig(reverse=reverse, **given)) == expected


def test_a_bad_language_code_is_refused():
    with pytest.raises(charmt.errors.ConfigError, match="'French' is not a language code"):
        SelectionConfig(target_lang="French")


def test_names_and_direction():
    assert (name_of("fr"), name_of("zh"), name_of("xx"), name_of(None)) == ("French", "Chinese", "xx", "unknown")
    assert is_rtl("he") and is_rtl("ar") and is_rtl("fa") and not is_rtl("fr") and not is_rtl(None)


# --- sentences -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lang, text, sentences",
    [
        ("en", "Mr. Smith is here. He is cold.", ["Mr. Smith is here.", "He is cold."]),  # not after "Mr."
        ("en", "It costs 3.50 euros. Pay now!", ["It costs 3.50 euros.", "Pay now!"]),
        ("en", "I am cold.", ["I am cold."]),
        ("en", "  ", []),
        ("fr", "Où est la gare ? Je suis perdu.", ["Où est la gare ?", "Je suis perdu."]),
        ("es", "¿Dónde está la estación? ¡Tengo frío!", ["¿Dónde está la estación?", "¡Tengo frío!"]),
        ("de", "Es ist z. B. kalt. Er kommt.", ["Es ist z. B. kalt.", "Er kommt."]),
        ("ja", "行け。こんにちは！元気ですか？", ["行け。", "こんにちは！", "元気ですか？"]),  # no spaces between
        ("zh", "你好。我很冷！", ["你好。", "我很冷！"]),
        ("ar", "مرحبا. كيف حالك؟", ["مرحبا.", "كيف حالك؟"]),
        ("hi", "नमस्ते। आप कैसे हैं?", ["नमस्ते।", "आप कैसे हैं?"]),  # the danda, and combining vowel signs
        ("pt", "Olá. Tudo bem?", ["Olá.", "Tudo bem?"]),  # a language pySBD does not know: sentencex
    ],
)
def test_sentences_are_split_per_script(lang, text, sentences):
    assert split_sentences(text, lang) == sentences


def test_a_text_longer_than_the_splitters_window_is_split_as_its_parts():
    paragraph = "Mr. Smith is here. It costs 3.50 euros. Où est la gare ? "
    sentences = split_sentences(paragraph * 100, "en")  # 5,700 characters, several windows
    assert sentences == ["Mr. Smith is here.", "It costs 3.50 euros.", "Où est la gare ?"] * 100


def test_a_sentence_longer_than_half_the_splitters_window_is_cut_at_a_space():
    text = "Hi. " + "word " * 600 + "end."
    sentences = split_sentences(text, "en")
    assert sentences[0] == "Hi." and all(500 <= len(s) <= 1000 for s in sentences[1:-1])
    assert " ".join(sentences) == text


def _no_spaces(text: str) -> str:
    return "".join(text.split())


@settings(max_examples=100, deadline=None)
@given(text=st.text(st.sampled_from(list("ab A.!?()[]1 ,\n\"«»。☝∯\ue000")) | st.characters(), max_size=300),
       lang=st.sampled_from(["en", "de", "ja", "pt"]))
def test_the_sentences_hold_every_character_of_the_text_but_spaces(text, lang):
    assert _no_spaces("".join(split_sentences(text, lang))) == _no_spaces(text)


# pySBD's numbered-reference rule backtracks exponentially after a period and an opening bracket (pySBD issue #79
# found it on Wikipedia, "...[484 216 622 139 651 592 379 228 242 355]"): 8 groups took 4 s, 10 hours.
_REFERENCES = [".." + "[" + " ".join(["111"] * n) + "]" for n in (10, 20, 40)] + [
    "......[289852000000260698,289852000000260744",  # also from issue #79
    "See e.g.[" + "1" * 60 + "] Next one.", "It is.☝[" + "1☝" * 40 + "] Next.",  # pySBD deletes ☝ before the rule
    "Foobar me.600036001060011700057000 There is nothing to report.",  # pragmatic_segmenter issue #78
]


@pytest.mark.parametrize("text", _REFERENCES)
def test_a_long_list_of_numbers_after_a_period_is_split_at_once(text):
    start = time.monotonic()
    sentences = split_sentences(text, "en")
    assert time.monotonic() - start < 2
    assert _no_spaces("".join(sentences)) == _no_spaces(text)


def test_a_short_citation_after_a_period_stays_with_its_sentence():
    assert split_sentences("It is true.[1] It is.[12-14] Next one.", "en") == ["It is true.[1]", "It is.[12-14]",
                                                                                "Next one."]


def _seconds(text: str, lang: str) -> float:
    """The fastest of three runs, to see the splitter's time rather than the machine's other work."""
    times = []
    for _ in range(3):
        start = time.monotonic()
        split_sentences(text, lang)
        times.append(time.monotonic() - start)
    return min(times)


@pytest.mark.parametrize("unit", [
    "a. ", "e.g. ", "Mr. A. ", '"A. ', "(a) ", ".", "?!", "(", "1", "[1 ", "See e.g.[111 111 111 111 111] x. ",
    "Where? " + "\u3002" * 3, "".join(itertools.islice(itertools.cycle(".,;:!?()[]{}\"'«»-…1a A"), 997)),
])
@pytest.mark.parametrize("lang", ["en", "pt"])  # pySBD, sentencex
def test_splitting_takes_time_linear_in_the_length(unit, lang):
    short, long = [(unit * (n // len(unit) + 1))[:n] for n in (2_500, 10_000)]
    time_short, time_long = _seconds(short, lang), _seconds(long, lang)
    assert time_long < 2
    assert time_long <= 8 * time_short + 0.005, (time_short, time_long)  # 4x the length; quadratic would be 16x


def test_threads_splitting_at_once_each_get_their_own_sentences():
    texts = {lang: " ".join(f"Sentence {i} of {lang} is here." for i in range(40)) for lang in ("en", "de", "pt")}
    texts["en2"] = " ".join(f"Mr. Smith has {i}.5 euros!" for i in range(40))
    expected = {key: split_sentences(text, key[:2]) for key, text in texts.items()}
    wrong = []

    def work(key: str) -> None:
        for _ in range(30):
            got = split_sentences(texts[key], key[:2])
            if got != expected[key]:
                wrong.append(key)

    threads = [threading.Thread(target=work, args=(key,)) for key in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == [] and len(expected["en"]) == len(expected["pt"]) == 40  # pySBD and sentencex


@pytest.mark.parametrize("lang, joined", [("zh", "你好。我很冷！"), ("ja", "你好。我很冷！"),
                                          ("fr", "你好。 我很冷！")])
def test_sentences_are_joined_as_the_script_writes_them(lang, joined):
    assert join_sentences(["你好。", "我很冷！"], lang) == joined


# --- scores ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lang, tokenizer", [("zh", "zh"), ("yue", "zh"), ("fr", "13a"), ("th", "char"),
                                             (None, "13a")])
def test_bleu_tokenizer_per_language(lang, tokenizer):
    assert bleu_tokenizer(lang) == (tokenizer, None)


@pytest.mark.parametrize("mecab", [True, False])
def test_japanese_bleu_uses_mecab_when_it_is_installed_and_says_so_when_not(monkeypatch, mecab):
    monkeypatch.setattr(charmt.languages, "_mecab_works", lambda: mecab)
    name, note = bleu_tokenizer("ja")
    assert (name, note is None) == (("ja-mecab", True) if mecab else ("char", False))
    if not mecab:
        assert "pip install 'charmt[ja]'" in note


def test_chinese_bleu_sees_words_not_one_token_per_sentence():
    hyp, ref = ["我有两本书。"], [["我有三本书。"]]
    assert score_translations(hyp, ref, tokenize="13a").bleu == 0.0  # one "word" each, and they differ
    segmented = score_translations(hyp, ref, tokenize="zh").bleu
    assert segmented == pytest.approx(sacrebleu.corpus_bleu(hyp, ref, tokenize="zh").score)
    assert segmented > 0


def test_human_baseline_on_a_case_worked_by_hand():
    references = [["the cat sat", "the cat sat"],  # two people agree
                  ["a dog ran", "a dog ran", "the dog ran"],
                  ["only one reference"]]  # left out: nobody to compare with
    hypotheses = ["the cat sat", "a cat ran", "whatever"]
    result = human_baseline(hypotheses, references)
    assert result["sentences"] == 2
    others = [["the cat sat"], ["a dog ran", "the dog ran"]]
    assert result["human_chrf"] == pytest.approx(100.0)  # each first reference appears among the others
    assert result["model_chrf"] == pytest.approx(score_translations(["the cat sat", "a cat ran"], others).chrf)
    assert result["chrf_ratio"] == pytest.approx(result["model_chrf"] / 100)
    assert human_baseline(hypotheses, [["x"], ["y"], ["z"]]) is None


def test_exact_match_ignores_which_spaces_a_sentence_uses():
    assert score_translations(["Où est la gare ?"], [["Où est la gare\u202f?"]]).exact_match == 1.0


# --- typography and rare characters ----------------------------------------------------------------------------


def test_typographic_spaces_become_plain_spaces_but_the_ideographic_space_stays():
    assert canonical_spaces("gare\u202f? gare\u00a0! 10\u2009000") == "gare ? gare ! 10 000"
    assert canonical_spaces("東京\u3000大阪") == "東京\u3000大阪"


def test_canonical_spaces_in_the_selection_only_when_asked(tmp_path):
    path = write_pairs(tmp_path / "fra.txt", ["Where?\tOù\u202f?", "Why?\tPourquoi\u00a0?"])
    kept = select(read_corpus(path), SelectionConfig(validation_fraction=0.0))
    canonical = select(read_corpus(path), SelectionConfig(validation_fraction=0.0, canonical_spaces=True))
    assert sorted(p.target for p in kept.train) == ["Où\u202f?", "Pourquoi\u00a0?"]  # the example's selection
    assert sorted(p.target for p in canonical.train) == ["Où ?", "Pourquoi ?"]


def test_characters_rarer_than_min_count_become_unk():
    vocab = Vocab.build(["aab", "abc"], min_count=2)
    assert vocab.chars == ["a", "b"]
    assert vocab.encode("abc") == [vocab.index["a"], vocab.index["b"], UNK_ID]


# --- whole models in other scripts ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chinese_models(tmp_path_factory):
    """A tiny en->zh and a zh->en model, trained for a few seconds on the made-up Chinese fixture."""
    root = tmp_path_factory.mktemp("cmn")
    data = write_pairs(root / "cmn.txt", chinese_lines())
    config = updated(TINY_TRAIN, epochs=2, eval_sentences=5)
    for name, reverse in (("en-zh", False), ("zh-en", True)):
        train(data, root / name, model_config=TINY_MODEL, train_config=config,
              selection=updated(TINY_SELECTION, reverse=reverse, test_fraction=0.0))
    return root


def test_chinese_models_know_their_languages_script_and_length_ratio(chinese_models):
    forward, backward = (ckpt.load_info(chinese_models / name) for name in ("en-zh", "zh-en"))
    assert (forward.source_lang, forward.target_lang) == ("en", "zh")
    assert (backward.source_lang, backward.target_lang) == ("zh", "en")
    assert "苹" in forward.target_vocab.index and "苹" in backward.source_vocab.index
    # "I have one apples." (18) -> "我有一个苹果。" (7): English is about 2.6x longer than this Chinese.
    assert forward.length_ratio < 0.5 < 2 < backward.length_ratio
    card = (chinese_models / "zh-en" / ckpt.CARD_FILE).read_text(encoding="utf-8")
    assert card.startswith("# charmt model: Chinese → English")
    assert "| languages | Chinese → English (zh → en) |" in card


def test_hebrew_model_from_the_command_line(tmp_path, capsys):
    data = write_pairs(tmp_path / "heb.txt", hebrew_lines())
    out = tmp_path / "he-en"
    assert main(["train", str(data), "--reverse", "--out", str(out), "--preset", "tiny", "--epochs", "1",
                 "--hidden-size", "16", "--embedding-size", "8", "--device", "cpu", "--eval-sentences", "3"]) == 0
    config = json.loads((out / ckpt.CONFIG_FILE).read_text(encoding="utf-8"))
    assert (config["source_lang"], config["target_lang"]) == ("he", "en")
    assert "א" in config["source_vocab"]
    capsys.readouterr()
    assert main(["translate", str(out), "אני רואה את הספרים."]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


# --- a target language much longer than the source ------------------------------------------------------------


class _NeverEnds:
    """An engine whose every decoder row writes the same 13-character cycle and never END: longer than any unit
    the repetition guard looks for, so only the output cap stops it."""

    name, device, model = "never-ends", "cpu", None

    def __init__(self, cycle: list[int], vocab_size: int):
        self.cycle, self.vocab_size = cycle, vocab_size

    def encode(self, src, lengths):
        return np.zeros(src.shape[0], dtype=np.int64)  # the step each row is at

    def step(self, prev, steps, attention=False):
        tokens = [self.cycle[s % len(self.cycle)] for s in steps]
        return 10 * np.eye(self.vocab_size, dtype=np.float32)[tokens], steps + 1, None

    def select(self, steps, rows, sentences=None):
        return steps[rows]

    def memory_bytes(self):
        return 0


def test_targets_four_times_longer_than_sources_set_the_models_output_cap(tmp_path):
    # "ab." -> "ab ab ab ab." style pairs: every target is about 4x its source.
    words = ["ka", "lo", "mi", "nu", "pe", "ri", "so", "tu", "va", "zo"]
    lines = [f"{a}{b}.\t" + " ".join([a + b] * 4) + "." for a, b in itertools.product(words, words[:6])]
    data = write_pairs(tmp_path / "pairs.txt", lines)
    out = tmp_path / "long"
    train(data, out, model_config=TINY_MODEL, train_config=updated(TINY_TRAIN, epochs=1, eval_sentences=3),
          selection=updated(TINY_SELECTION, test_fraction=0.0))
    info = ckpt.load_info(out)
    assert 3.5 <= info.length_ratio <= 4.0  # "kalo." (5) -> "kalo kalo kalo kalo." (20)
    assert info.max_target_length == 20
    cycle = [info.target_vocab.index[c] for c in "klmnoprstuvz."]
    translator = Translator(None, info, engine=_NeverEnds(cycle, len(info.target_vocab)))
    for source in ("kalo.", "kalo mipe."):
        n = len(source)
        # The old fixed rule, 2n + 10, would cut such a translation short.
        assert len(translator.translate([source])[0]) == math.ceil(info.length_ratio * n) + 10 > 2 * n + 10
