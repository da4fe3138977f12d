"""Training loop features: early stopping, time budget, bucketed batches, learning-rate schedules; and the
decoding guards added for long inputs (repetition stop, sentence splitting, too-long warning)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from charmt.data import Pair
from charmt.decode import Translator, _repeats, _trim
from charmt.train import EncodedPairs, TrainConfig, _learning_rate, make_batches, train, updated

from conftest import TINY_MODEL, TINY_SELECTION, TINY_TRAIN


def test_early_stopping_stops_after_patience_epochs_without_better_chrf(pair_file, tmp_path):
    # A learning rate this small changes nothing, so validation chrF never improves after epoch 1.
    config = updated(TINY_TRAIN, epochs=10, patience=2, learning_rate=1e-12)
    result = train(pair_file, tmp_path / "m", model_config=TINY_MODEL, train_config=config, selection=TINY_SELECTION)
    assert result.stopped_because == "early stopping"
    assert result.epochs_run == 3 and result.best_epoch == 1
    log = [json.loads(line) for line in (tmp_path / "m" / "log.jsonl").read_text().splitlines()]
    assert [r["best"] for r in log] == [True, False, False]


def test_time_budget_stops_cleanly_and_keeps_a_model(pair_file, tmp_path):
    config = updated(TINY_TRAIN, epochs=50, time_budget_minutes=1e-6)
    result = train(pair_file, tmp_path / "m", model_config=TINY_MODEL, train_config=config, selection=TINY_SELECTION)
    assert result.stopped_because == "time budget" and result.epochs_run == 1
    record = json.loads((tmp_path / "m" / "log.jsonl").read_text().splitlines()[0])
    assert record["partial"] is True and record["steps"] == 1
    assert Translator.load(tmp_path / "m", device="cpu").translate(["I eat."])[0] is not None


def _padding_share(data: EncodedPairs, batches: list[list[int]]) -> float:
    padded = sum(len(b) * max(len(data.sources[i]) for i in b) for b in batches)
    return 1 - sum(len(s) for s in data.sources) / padded


def test_bucketed_batches_cover_every_pair_once_with_less_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 80, (1000,), generator=g).tolist()
    data = EncodedPairs([[5] * n for n in lengths], [[2, 5, 3]] * len(lengths))
    bucketed = make_batches(data, 32, torch.Generator().manual_seed(1), bucket=True)
    plain = make_batches(data, 32, torch.Generator().manual_seed(1), bucket=False)
    for batches in (bucketed, plain):
        assert sorted(i for b in batches for i in b) == list(range(1000))
    assert _padding_share(data, bucketed) < 0.1 < 0.3 < _padding_share(data, plain)


@pytest.mark.parametrize(
    "schedule, warmup, step, progress, factor, expected",
    [
        ("constant", 0, 100, 0.5, 1.0, 1.0),
        ("constant", 10, 0, 0.0, 1.0, 0.1),  # linear warm-up: (step + 1) / warmup
        ("constant", 10, 4, 0.0, 1.0, 0.5),
        ("cosine", 0, 0, 0.0, 1.0, 1.0),
        ("cosine", 0, 50, 0.5, 1.0, 0.5),
        ("cosine", 0, 99, 1.0, 1.0, 0.0),
        ("plateau", 0, 5, 0.5, 0.25, 0.25),  # halved twice
    ],
)
def test_learning_rate_schedule(schedule, warmup, step, progress, factor, expected):
    config = TrainConfig(lr_schedule=schedule, warmup_steps=warmup, learning_rate=1.0)
    assert _learning_rate(config, step, progress, factor) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    "tokens, looping, trimmed",
    [
        ([9, 5, 6, 5, 6, 5, 6, 5, 6], True, [9, 5, 6]),  # "salade salade salade salade" -> "salade"
        ([9, 5, 6, 5, 6, 5, 6], False, [9, 5, 6, 5, 6, 5, 6]),  # three times is not a loop yet
        ([7] * 8, True, [7]),
        ([7] * 7, False, [7] * 7),
        ([5, 6, 7, 8], False, [5, 6, 7, 8]),
    ],
)
def test_repetition_guard(tokens, looping, trimmed):
    assert bool(_repeats(torch.tensor([tokens]))[0]) is looping
    assert _trim(tokens, True) == trimmed


def test_paragraphs_are_split_translated_as_sentences_and_rejoined(tiny_model_dir):
    translator = Translator.load(tiny_model_dir, device="cpu")
    first, second = translator.translate(["I eat the bread.", "She sees a cat."], split=False)
    assert translator.translate(["I eat the bread. She sees a cat."]) == [f"{first} {second}"]


def test_a_sentence_longer_than_any_in_training_is_warned_about(tiny_model_dir, caplog):
    translator = Translator.load(tiny_model_dir, device="cpu")
    longest = translator.info.max_source_length
    with caplog.at_level(logging.WARNING, logger="charmt"):
        translator.translate(["a" * (longest + 1)])
    assert "longer than any seen in training" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="charmt"):
        translator.translate(["a" * longest])
    assert "longer than any" not in caplog.text


def test_validation_uses_every_reference_of_a_source(tmp_path):
    from charmt.train import references_by_source

    pairs = [Pair(1, "Hi.", "Salut."), Pair(2, "Run!", "Cours !"), Pair(3, "Hi.", "Bonjour."),
             Pair(4, "Run!", "Courez !")]
    sources, refs = references_by_source(pairs)
    assert [p.source for p in sources] == ["Hi.", "Run!"]
    assert refs == [["Salut.", "Bonjour."], ["Cours !", "Courez !"]]


def test_demo_command_trains_on_the_built_in_corpus_and_shows_held_out_translations(tmp_path, capsys):
    from charmt.cli import main

    assert main(["-q", "demo", "--epochs", "2", "--show", "3", "--device", "cpu", "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Validation sentences (never trained on), best epoch")
    assert len(out) == 4 and all(" -> " in line for line in out[1:])
    assert (tmp_path / "m" / "model.safetensors").exists()
