"""Decoding: batched greedy search, beam search, and `Translator`."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from charmt.decode import Translator, beam_search, greedy_decode, output_limits, split_sentences
from charmt.errors import ConfigError
from charmt.model import DecoderState
from charmt.vocab import END_ID, PAD_ID, START_ID

SENTENCES = ["She eats the bread.", "Good evening!", "I do not read the map.", "He sees the bike.", "Hi.",
             "Does Paul want the egg?", "We have a big book."]


class ScriptedModel:
    """Stands in for Seq2Seq: sentence i emits scripts[i], then END; records every call."""

    def __init__(self, scripts: list[list[int]], vocab_size: int = 12):
        self.scripts, self.vocab_size = scripts, vocab_size
        self.encode_calls, self.step_inputs = 0, []

    def encode(self, src, src_lengths):
        self.encode_calls += 1
        B, S = src.shape
        rows = torch.arange(B, dtype=torch.float)[None, :, None]  # h carries the original row, c the step
        return DecoderState(rows, torch.zeros(1, B, 1), torch.zeros(B, S, 1), torch.ones(B, S, dtype=torch.bool))

    def decode_step(self, prev_tokens, state):
        self.step_inputs.append(prev_tokens.tolist())
        tokens = []
        for row, step in zip(state.h[0, :, 0].long().tolist(), state.c[0, :, 0].long().tolist()):
            script = self.scripts[row]
            tokens.append(script[step] if step < len(script) else END_ID)
        logits = 10 * F.one_hot(torch.tensor(tokens), self.vocab_size).float()
        return logits, DecoderState(state.h, state.c + 1, state.memory, state.mask), None


def _src(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n, 3), 4), torch.full((n,), 3)


def test_greedy_stops_each_sentence_at_end_or_its_limit_and_feeds_one_token_per_step():
    model = ScriptedModel([[4, 5, 6], [7], [4, 5, 6, 7, 8, 9, 10, 11]])
    src, lengths = _src(3)
    out = greedy_decode(model, src, lengths, torch.tensor([20, 20, 5]))
    assert out == [[4, 5, 6], [7], [4, 5, 6, 7, 8]]
    assert model.encode_calls == 1
    # Each step feeds only the previous token of the sentences still running: the prefix is never re-run.
    assert model.step_inputs == [[START_ID] * 3, [4, 7, 4], [5, 5], [6, 6], [7]]


@pytest.mark.parametrize(
    "script, stop_repeats, limit, expected",
    [
        ([4, 5] * 10, True, 30, [4, 5]),  # a loop is cut after 4 repetitions and trimmed to one
        ([6] * 20, True, 30, [6]),  # single characters may repeat 8 times before counting as a loop
        ([6] * 5 + [7], True, 30, [6] * 5 + [7]),
        ([4, 5] * 10, False, 30, [4, 5] * 10),
        ([4, 5] * 10, False, 7, [4, 5, 4, 5, 4, 5, 4]),
    ],
)
def test_greedy_repetition_guard(script, stop_repeats, limit, expected):
    model = ScriptedModel([script])
    assert greedy_decode(model, *_src(1), torch.tensor([limit]), stop_repeats=stop_repeats) == [expected]


@pytest.mark.parametrize("lengths, hard_limit, expected", [([1, 10, 100], 64, [12, 30, 64]), ([5], 8, [8])])
def test_output_limits(lengths, hard_limit, expected):
    assert output_limits(torch.tensor(lengths), hard_limit).tolist() == expected


@pytest.fixture(scope="module")
def translator(tiny_model_dir) -> Translator:
    return Translator.load(tiny_model_dir, device="cpu")


def _encode(translator: Translator, sentences: list[str]):
    return translator._encode_sources(sentences)


def test_greedy_batched_equals_one_at_a_time(translator):
    src, lengths = _encode(translator, SENTENCES)
    limits = output_limits(lengths, 64)
    batched = greedy_decode(translator.model, src, lengths, limits)
    for i, sentence in enumerate(SENTENCES):
        one_src, one_len = _encode(translator, [sentence])
        assert greedy_decode(translator.model, one_src, one_len, limits[i : i + 1]) == [batched[i]]


def test_greedy_on_a_real_model_encodes_once_and_steps_once_per_character(translator, monkeypatch):
    model = translator.model
    calls = {"encode": 0, "steps": []}
    encode, decode_step = model.encode, model.decode_step

    def counting_encode(*args):
        calls["encode"] += 1
        return encode(*args)

    def counting_step(prev, state):
        calls["steps"].append(tuple(prev.shape))
        return decode_step(prev, state)

    monkeypatch.setattr(model, "encode", counting_encode)
    monkeypatch.setattr(model, "decode_step", counting_step)
    src, lengths = _encode(translator, SENTENCES)
    limits = output_limits(lengths, 64)
    out = greedy_decode(model, src, lengths, limits, stop_repeats=False)
    assert calls["encode"] == 1
    longest = max(min(len(tokens) + 1, int(limit)) for tokens, limit in zip(out, limits))  # + 1: the END step
    assert len(calls["steps"]) == longest
    assert all(len(shape) == 1 for shape in calls["steps"])  # one token per running sentence, never a prefix
    assert [s[0] for s in calls["steps"]] == sorted((s[0] for s in calls["steps"]), reverse=True)


def test_beam_of_one_is_greedy(translator):
    src, lengths = _encode(translator, SENTENCES)
    limits = output_limits(lengths, 64)
    greedy = greedy_decode(translator.model, src, lengths, limits)
    beams = beam_search(translator.model, src, lengths, limits, beam=1)
    assert [hyps[0][0] for hyps in beams] == greedy


def test_beam_search_n_best_are_ordered_by_score_and_scores_are_normalised_log_probabilities(translator):
    src, lengths = _encode(translator, SENTENCES)
    limits = output_limits(lengths, 64)
    results = beam_search(translator.model, src, lengths, limits, beam=4, n_best=3, stop_repeats=False)
    top = beam_search(translator.model, src, lengths, limits, beam=4, n_best=1, stop_repeats=False)
    for row, hyps in enumerate(results):
        assert 1 <= len(hyps) <= 3
        scores = [score for _, score in hyps]
        assert scores == sorted(scores, reverse=True)
        assert top[row] == hyps[:1]
        # Recompute each hypothesis' log-probability by teacher forcing (END included when it ended there).
        for tokens, score in hyps:
            ended = len(tokens) < int(limits[row])
            target = [START_ID] + tokens + ([END_ID] if ended else [])
            with torch.no_grad():
                logits, _ = translator.model(src[row : row + 1], lengths[row : row + 1],
                                             torch.tensor([target[:-1]]))
            logp = torch.log_softmax(logits[0], dim=-1).gather(1, torch.tensor(target[1:])[:, None]).sum()
            assert score == pytest.approx(float(logp) / (len(target) - 1), abs=1e-4)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"beam": 0}, "--beam and --n-best must be at least 1"),
        ({"beam": 1, "n_best": 2}, "--n-best needs beam search: add --beam N with N >= n-best"),
        ({"beam": 2, "n_best": 3}, "--n-best (3) cannot exceed --beam (2)"),
    ],
)
def test_translate_n_best_rejects_bad_options(translator, options, message):
    with pytest.raises(ConfigError) as err:
        translator.translate_n_best(["Hi."], **options)
    assert str(err.value) == message


def test_translate_one_output_per_input_in_order(translator):
    inputs = ["", *SENTENCES[:3], "   \t ", SENTENCES[3], "\n"]
    outputs = translator.translate(inputs, batch_size=2)
    assert len(outputs) == len(inputs)
    assert outputs[0] == outputs[4] == outputs[6] == ""
    alone = [translator.translate([s])[0] for s in SENTENCES[:4]]
    assert [outputs[i] for i in (1, 2, 3, 5)] == alone
    assert all(alone)
    assert translator.translate([]) == []


def test_translate_splits_paragraphs_into_sentences(translator):
    first, second = translator.translate(SENTENCES[:2])
    assert translator.translate([f"{SENTENCES[0]} {SENTENCES[1]}"]) == [f"{first} {second}"]
    assert translator.translate(["  She   eats\tthe bread. "]) == [first]  # whitespace runs become one space


def test_beam_translate_gives_one_output_per_input(translator):
    outputs = translator.translate(["", *SENTENCES[:3]], beam=3)
    assert len(outputs) == 4 and outputs[0] == "" and all(outputs[1:])
    n_best = translator.translate_n_best(SENTENCES[:2], beam=3, n_best=2)
    assert [len(h) for h in n_best] == [2, 2]
    assert all(h[0].score >= h[1].score for h in n_best)


def test_unknown_characters_give_one_warning_naming_them(translator, caplog):
    assert translator.source_vocab.unknown_chars("☃Ωß") == {"☃", "Ω", "ß"}
    caplog.set_level(logging.WARNING, logger="charmt")
    outputs = translator.translate(["I see the ☃.", "Ω and ß.", "He sees the bike."])
    assert len(outputs) == 3
    warnings = [r.getMessage() for r in caplog.records if "unknown character" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("3 unknown character(s) replaced by <unk>")
    assert all(repr(c) in warnings[0] for c in "☃Ωß")


def test_very_long_input_does_not_crash(translator, caplog):
    caplog.set_level(logging.WARNING, logger="charmt")
    one_piece = translator.translate(["the bread " * 1000], split=False)[0]
    assert len(one_piece) <= max(2 * translator.info.max_target_length, 64)
    assert any("longer than any seen in training" in r.getMessage() for r in caplog.records)
    paragraph = "She eats the bread. " * 500
    assert len(paragraph.strip()) > 9_000
    (text,) = translator.translate([paragraph])
    assert text.startswith(translator.translate([SENTENCES[0]])[0])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello. How are you?", ["Hello.", "How are you?"]),
        ("Wait... What?", ["Wait...", "What?"]),
        ("Hi!  Bye.", ["Hi!", "Bye."]),
        ("It costs 5. 6 is more.", ["It costs 5.", "6 is more."]),
        ("Él va. Ça va.", ["Él va.", "Ça va."]),
        ("¿Qué? ¡Sí!", ["¿Qué?", "¡Sí!"]),
        ("Mr. smith is here.", ["Mr. smith is here."]),  # no capital after the period
        ("3.5 is a number.", ["3.5 is a number."]),
        ("Stop!Go.", ["Stop!Go."]),
        ("No end", ["No end"]),
        ("", []),
        ("   ", []),
        ('He said "Go." Then he left.', ['He said "Go."', "Then he left."]),
        ("«Non.» Puis il part.", ["«Non.»", "Puis il part."]),
        ("(See above.) Then go.", ["(See above.)", "Then go."]),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_padding_id_never_comes_out_of_beam_search(translator):
    src, lengths = _encode(translator, SENTENCES)
    for hyps in beam_search(translator.model, src, lengths, output_limits(lengths, 64), beam=3, n_best=3):
        assert all(PAD_ID not in tokens and END_ID not in tokens and math.isfinite(s) for tokens, s in hyps)
