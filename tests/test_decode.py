"""Decoding: batched greedy search, beam search, and `Translator`."""

from __future__ import annotations

import dataclasses
import logging
import math
import threading

import numpy as np
import pytest
import torch

from charmt.decode import (
    MAX_REPEAT_UNIT,
    Translator,
    _Outputs,
    _repeats,
    beam_search,
    greedy_decode,
    output_limits,
)
from charmt.errors import ConfigError
from charmt.vocab import END_ID, PAD_ID, START_ID

SENTENCES = ["She eats the bread.", "Good evening!", "I do not read the map.", "He sees the bike.", "Hi.",
             "Does Paul want the egg?", "We have a big book."]


class ScriptedEngine:
    """Stands in for an engine: sentence i emits scripts[i], then END; records every call."""

    name, device, model = "scripted", "cpu", None

    def __init__(self, scripts: list[list[int]], vocab_size: int = 12):
        self.scripts, self.vocab_size = scripts, vocab_size
        self.encode_calls, self.step_inputs = 0, []

    def encode(self, src, src_lengths):
        self.encode_calls += 1
        return {"row": np.arange(src.shape[0]), "step": np.zeros(src.shape[0], dtype=int)}  # per decoder row

    def step(self, prev, state, attention=False):
        self.step_inputs.append(prev.tolist())
        tokens = []
        for row, step in zip(state["row"], state["step"]):
            script = self.scripts[row]
            tokens.append(script[step] if step < len(script) else END_ID)
        logits = 10 * np.eye(self.vocab_size, dtype=np.float32)[tokens]
        return logits, {"row": state["row"], "step": state["step"] + 1}, None

    def select(self, state, rows, sentences=None):
        return {key: value[rows] for key, value in state.items()}


class PrefixEngine:
    """Stands in for an engine whose next-token probabilities depend on the tokens written so far:
    `tree[prefix] = {token: probability}`; any other prefix ends."""

    name, device, model = "prefix", "cpu", None

    def __init__(self, tree: dict[tuple, dict[int, float]], vocab_size: int):
        self.tree, self.vocab_size = tree, vocab_size

    def encode(self, src, src_lengths):
        return [()] * src.shape[0]

    def step(self, prev, state, attention=False):
        prefixes = [p if t == START_ID else p + (int(t),) for p, t in zip(state, prev)]
        logits = np.full((len(prefixes), self.vocab_size), -np.inf, dtype=np.float32)
        for row, prefix in enumerate(prefixes):
            for token, p in self.tree.get(prefix, {END_ID: 1.0}).items():
                logits[row, token] = math.log(p)
        return logits, prefixes, None

    def select(self, state, rows, sentences=None):
        return [state[r] for r in rows]


def _src(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, 3), 4), np.full(n, 3)


def test_greedy_stops_each_sentence_at_end_or_its_limit_and_feeds_one_token_per_step():
    engine = ScriptedEngine([[4, 5, 6], [7], [4, 5, 6, 7, 8, 9, 10, 11]])
    src, lengths = _src(3)
    out = greedy_decode(engine, src, lengths, np.array([20, 20, 5]))
    assert out == [[4, 5, 6], [7], [4, 5, 6, 7, 8]]
    assert engine.encode_calls == 1
    # Each step feeds only the previous token of the sentences still running: the prefix is never re-run.
    assert engine.step_inputs == [[START_ID] * 3, [4, 7, 4], [5, 5], [6, 6], [7]]


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
    engine = ScriptedEngine([script])
    assert greedy_decode(engine, *_src(1), np.array([limit]), stop_repeats=stop_repeats) == [expected]


@pytest.mark.parametrize("seed", range(6))
def test_the_step_by_step_repetition_guard_agrees_with_repeats_on_every_prefix(seed):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(40):  # random text, and loops of every unit length spliced in
        unit = rng.integers(4, 4 + rng.integers(1, 4), size=rng.integers(1, MAX_REPEAT_UNIT + 2)).tolist()
        rows.append((rng.integers(4, 7, size=rng.integers(0, 8)).tolist() + unit * int(rng.integers(1, 10)))[:60])
    history = np.array([(r + [9] * 60)[:60] for r in rows])
    written = _Outputs(len(rows), 60)
    for t in range(60):
        assert written.push(history[:, t]).tolist() == _repeats(history[:, : t + 1]).tolist(), t


@pytest.mark.parametrize("lengths, hard_limit, ratio, expected",
                         [([1, 10, 100], 64, None, [12, 30, 64]), ([5], 8, None, [8]),
                          ([1, 10, 100], 500, 4.0, [14, 50, 410]), ([5, 7], 64, 2.4, [22, 27]),
                          ([4, 9], 64, 0.75, [13, 17])])
def test_output_limits(lengths, hard_limit, ratio, expected):
    assert output_limits(np.array(lengths), hard_limit, ratio).tolist() == expected


@pytest.fixture(scope="module")
def translator(tiny_model_dir) -> Translator:
    return Translator.load(tiny_model_dir, device="cpu")


def _encode(translator: Translator, sentences: list[str]):
    return translator._encode_sources(sentences)


def _with(translator: Translator, engine=None, **info_changes) -> Translator:
    """A translator with another engine and/or other ModelInfo fields."""
    info = dataclasses.replace(translator.info, **info_changes)
    return Translator(None, info, engine=engine or translator.engine)


def test_greedy_batched_equals_one_at_a_time(translator):
    src, lengths = _encode(translator, SENTENCES)
    limits = output_limits(lengths, 64)
    batched = greedy_decode(translator.engine, src, lengths, limits)
    for i, sentence in enumerate(SENTENCES):
        one_src, one_len = _encode(translator, [sentence])
        assert greedy_decode(translator.engine, one_src, one_len, limits[i : i + 1]) == [batched[i]]


def test_greedy_on_a_real_model_encodes_once_and_steps_once_per_character(translator, monkeypatch):
    engine = translator.engine
    calls = {"encode": 0, "steps": []}
    encode, step = engine.encode, engine.step

    def counting_encode(*args):
        calls["encode"] += 1
        return encode(*args)

    def counting_step(prev, state, attention=False):
        calls["steps"].append(tuple(prev.shape))
        return step(prev, state, attention)

    monkeypatch.setattr(engine, "encode", counting_encode)
    monkeypatch.setattr(engine, "step", counting_step)
    src, lengths = _encode(translator, SENTENCES)
    limits = output_limits(lengths, 64)
    out = greedy_decode(engine, src, lengths, limits, stop_repeats=False)
    assert calls["encode"] == 1
    longest = max(min(len(tokens) + 1, int(limit)) for tokens, limit in zip(out, limits))  # + 1: the END step
    assert len(calls["steps"]) == longest
    assert all(len(shape) == 1 for shape in calls["steps"])  # one token per running sentence, never a prefix
    assert [s[0] for s in calls["steps"]] == sorted((s[0] for s in calls["steps"]), reverse=True)


def test_beam_of_one_is_greedy(translator):
    src, lengths = _encode(translator, SENTENCES)
    limits = output_limits(lengths, 64)
    greedy = greedy_decode(translator.engine, src, lengths, limits)
    beams = beam_search(translator.engine, src, lengths, limits, beam=1)
    assert [hyps[0][0] for hyps in beams] == greedy


def test_beam_search_n_best_are_ordered_by_score_and_scores_are_normalised_log_probabilities(translator):
    src, lengths = _encode(translator, SENTENCES)
    limits = output_limits(lengths, 64)
    results = beam_search(translator.engine, src, lengths, limits, beam=4, n_best=3, stop_repeats=False)
    top = beam_search(translator.engine, src, lengths, limits, beam=4, n_best=1, stop_repeats=False)
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
                logits, _ = translator.model(torch.from_numpy(src[row : row + 1]),
                                             torch.from_numpy(lengths[row : row + 1]), torch.tensor([target[:-1]]))
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


def test_sentences_are_split_by_the_source_languages_rules_and_joined_by_the_targets(translator):
    english = _with(translator, source_lang="en", target_lang="fr")
    # "Mr." ends no sentence in English (a regex on ". " + capital letter split it).
    assert [s for _, s in english.prepare(["Mr. Smith eats the bread. He sees the bike."]).sentences] == [
        "Mr. Smith eats the bread.", "He sees the bike."]
    first, second = translator.translate(SENTENCES[:2])
    assert english.translate([f"{SENTENCES[0]} {SENTENCES[1]}"]) == [f"{first} {second}"]
    chinese = _with(translator, target_lang="zh")  # a script written without spaces between sentences
    assert chinese.translate([f"{SENTENCES[0]} {SENTENCES[1]}"]) == [first + second]
    assert _with(translator, source_lang="zh").prepare(["你好。我很冷！"]).sentences == [(0, "你好。"), (0, "我很冷！")]


def test_typographic_spaces_are_plain_spaces_for_a_model_trained_so(translator):
    assert translator.info.selection.get("canonical_spaces") is False  # the fixture's selection
    canonical = _with(translator, selection={**translator.info.selection, "canonical_spaces": True})
    assert canonical._clean("Hi\u202f! Go\u00a0away.") == "Hi ! Go away."
    assert canonical.translate(["Hi\u202f!"]) == translator.translate(["Hi !"])


def test_the_output_cap_follows_the_models_length_ratio(translator):
    # A cycle of 13 characters, longer than any unit the repetition guard looks for: only the cap stops it.
    never_ends = ScriptedEngine([list(range(4, 17)) * 40], vocab_size=len(translator.target_vocab))
    sentence = "Hi there."
    n = len(sentence)
    for ratio, expected in ((4.0, math.ceil(4 * n) + 10), (None, 2 * n + 10), (0.75, math.ceil(0.75 * n) + 10)):
        capped = _with(translator, engine=never_ends, length_ratio=ratio, max_target_length=200)
        assert len(capped.translate([sentence])[0]) == expected
    clamped = _with(translator, engine=never_ends, length_ratio=4.0, max_target_length=10)  # hard limit: 64
    assert len(clamped.translate(["Hi there, how are you?"])[0]) == 64  # not 4 x 22 + 10


def test_n_best_never_gives_two_hypotheses_that_differ_only_in_whitespace(translator):
    vocab = translator.target_vocab
    a, b, space = vocab.index["a"], vocab.index["b"], vocab.index[" "]
    tree = {(): {a: 0.9, b: 0.1}, (a,): {space: 0.6, b: 0.4}, (a, space): {b: 0.9, space: 0.1},
            (a, space, space): {b: 1.0}}
    prefix = _with(translator, engine=PrefixEngine(tree, len(vocab)))
    (hyps,) = prefix.translate_n_best(["x"], beam=4, n_best=3)
    # Beam search finds "a b", "ab", "a  b" (two spaces) and "b", in this order of score; "a  b" is left out.
    assert [h.text for h in hyps] == ["a b", "ab", "b"]
    assert hyps[0].score > hyps[1].score > hyps[2].score


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


def test_padding_id_never_comes_out_of_beam_search(translator):
    src, lengths = _encode(translator, SENTENCES)
    for hyps in beam_search(translator.engine, src, lengths, output_limits(lengths, 64), beam=3, n_best=3):
        assert all(PAD_ID not in tokens and END_ID not in tokens and math.isfinite(s) for tokens, s in hyps)


@pytest.mark.slow
def test_decoding_leaves_onednn_and_the_thread_count_alone_even_in_two_threads_at_once(translator):
    """No process-wide switch is flipped to decode (oneDNN used to be turned off around every decode, which raced
    between threads)."""
    before = torch.backends.mkldnn.enabled, torch.get_num_threads()
    seen, errors = set(), []

    def decode(beam: int) -> None:
        try:
            for _ in range(3):
                translator.translate(SENTENCES, beam=beam)
        except Exception as err:  # noqa: BLE001 (reported by the assertion below)
            errors.append(err)

    threads = [threading.Thread(target=decode, args=(beam,)) for beam in (1, 3)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        seen.add((torch.backends.mkldnn.enabled, torch.get_num_threads()))
    for thread in threads:
        thread.join()
    assert not errors
    assert seen | {before} == {before}
    assert (torch.backends.mkldnn.enabled, torch.get_num_threads()) == before
