"""Both model families through everything charmt does: a tiny Transformer (char and subword units) trains from the
command line, resumes bit-exactly, stops early or on its time budget, translates (greedy, beam, n-best, sentence
splitting, output caps, repetition guard), evaluates, shows its cross-attention, exports to ONNX and is served;
LSTM models keep their config.json and translate as before.

The Transformers are trained once per module (a few seconds each, 12 epochs on 150 demo pairs, seed 1, fp32).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors_bytes

from charmt import checkpoint as ckpt
from charmt.cli import main
from charmt.config import ModelConfig
from charmt.decode import (
    ATTENTION_SHOWN,
    Translator,
    _repeats,
    _trim,
    attention_weights,
    beam_search,
    greedy_decode,
    output_limits,
)
from charmt.errors import ConfigError
from charmt.evaluate import evaluate_file
from charmt.families.lstm import Seq2Seq
from charmt.families.transformer import Transformer
from charmt.languages import join_sentences, split_sentences
from charmt.training import train, training_autocast, training_precision
from charmt.vocab import END_ID, PAD_ID, START_ID, collapse_whitespace

from conftest import DEMO, TINY_SELECTION, TINY_TRAIN, write_pairs

UNITS = ["char", "subword"]
TRANSFORMER = ModelConfig(arch="transformer", hidden_size=32, num_layers=2, heads=4, ff_size=64)
TRAINING = replace(TINY_TRAIN, epochs=12)  # fp32, seed 1, adam 3e-3, batch 16
LINES = DEMO.read_text(encoding="utf-8").splitlines()
# Demo sentences the models never trained on (the fixtures train on the first 150 lines).
SENTENCES = [line.split("\t")[0] for line in LINES[150:180]]
PARAGRAPH = "He runs. She walks. I am cold."

# Fields of config.json's "model" for each family: an LSTM's are those of every model before the Transformer, plus
# "arch"; neither family's file holds the other's options.
LSTM_FIELDS = {"arch", "src_vocab_size", "tgt_vocab_size", "hidden_size", "encoder_hidden_size", "embedding_size",
               "num_layers", "bidirectional", "attention", "dropout"}
TRANSFORMER_FIELDS = {"arch", "src_vocab_size", "tgt_vocab_size", "hidden_size", "num_layers", "dropout", "heads",
                      "ff_size", "share_embeddings"}
# The top-level fields and the selection's of a config.json written before the model families.
CONFIG_FIELDS = {"format", "format_version", "preset", "source_lang", "target_lang", "model", "source_vocab",
                 "target_vocab", "max_source_length", "max_target_length", "length_ratio", "selection", "training",
                 "data", "keras_compat"}
OLD_SELECTION_FIELDS = {"seed", "max_input_length", "max_target_length", "dedupe", "num_samples",
                        "validation_fraction", "test_fraction", "reverse", "source_lang", "target_lang",
                        "canonical_spaces", "min_char_count"}


def _selection(units: str):
    return replace(TINY_SELECTION, units=units, vocab_size=200)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _log(directory: Path) -> list[dict]:
    """log.jsonl without its wall-clock field."""
    records = [json.loads(line) for line in (directory / ckpt.LOG_FILE).read_text(encoding="utf-8").splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """150 demo pairs, in a file whose name says en -> fr."""
    return write_pairs(tmp_path_factory.mktemp("families") / "eng-fra.txt", LINES[:150])


@pytest.fixture(scope="module")
def models(data) -> dict[str, Path]:
    """{"char": dir, "subword": dir}: tiny Transformers. Treat them as read-only."""
    dirs = {}
    for units in UNITS:
        out = data.parent / f"transformer-{units}"
        result = train(data, out, model_config=TRANSFORMER, train_config=TRAINING, selection=_selection(units),
                       preset="transformer")
        assert result.stopped_because == "epochs"
        dirs[units] = out
    return dirs


@pytest.fixture(scope="module")
def translators(models) -> dict[str, Translator]:
    return {units: Translator.load(directory, device="cpu") for units, directory in models.items()}


# --- training ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("units", UNITS)
def test_train_arch_transformer_means_the_transformer_preset(data, tmp_path, capsys, units):
    out = tmp_path / "m"
    assert main(["-q", "train", str(data), "--out", str(out), "--arch", "transformer", "--hidden-size", "32",
                 "--layers", "2", "--heads", "4", "--ff-size", "64", "--epochs", "1", "--batch-size", "16",
                 "--eval-sentences", "10", "--validation-fraction", "0.15", "--units", units, "--vocab-size", "200",
                 "--device", "cpu", "--threads", "1"]) == 0
    capsys.readouterr()
    config = ckpt.read_json(out / ckpt.CONFIG_FILE)
    subword = units == "subword"
    assert set(config) == CONFIG_FIELDS
    assert config["preset"] == "transformer" and (config["source_lang"], config["target_lang"]) == ("en", "fr")
    vocab = config["model"]["src_vocab_size"]
    assert config["model"] == {"arch": "transformer", "src_vocab_size": vocab,
                               "tgt_vocab_size": vocab if subword else config["model"]["tgt_vocab_size"],
                               "hidden_size": 32, "num_layers": 2, "dropout": 0.1, "heads": 4, "ff_size": 64,
                               "share_embeddings": subword}  # one SentencePiece model for both languages
    # What the options did not name comes from the transformer preset.
    training = config["training"]
    assert (training["optimizer"], training["warmup_steps"], training["label_smoothing"], training["epochs"]) == (
        "adamw", 500, 0.1, 1)
    assert (config["selection"]["units"], config["selection"]["vocab_size"]) == (units, 200)
    names = {p.name for p in out.iterdir()}
    assert names == {ckpt.CONFIG_FILE, ckpt.WEIGHTS_FILE, ckpt.CHECKPOINT_FILE, ckpt.LOG_FILE, ckpt.SPLIT_FILE,
                     ckpt.CARD_FILE} | ({ckpt.SUBWORD_FILE} if subword else set())
    if subword:
        assert config["source_vocab"] == config["target_vocab"] == ckpt.SUBWORD_FILE
        assert len(Translator.load(out, device="cpu").source_vocab) == vocab
    else:
        assert isinstance(config["source_vocab"], list) and len(config["source_vocab"]) == vocab
    card = (out / ckpt.CARD_FILE).read_text(encoding="utf-8")
    kind = "subword Transformer" if subword else "character-level Transformer"
    embeddings = ("one embedding shared by both languages and the output layer" if subword else
                  "target embedding shared with the output layer")
    assert f"A {kind} trained with charmt" in card
    assert (f"| network | `transformer` preset: Transformer (pre-norm, sinusoidal positions) of 2 encoder and 2 "
            f"decoder layers, width 32, 4 heads, feed-forward 64, {embeddings}, dropout 0.1 |") in card
    assert "LSTM" not in card
    model, _ = ckpt.load_model(out)
    assert isinstance(model, Transformer)


def test_an_lstm_config_keeps_its_fields_and_names_its_family(tiny_model_dir):
    config = ckpt.read_json(tiny_model_dir / ckpt.CONFIG_FILE)
    assert set(config) == CONFIG_FIELDS
    assert set(config["model"]) == LSTM_FIELDS and config["model"]["arch"] == "lstm"
    assert set(config["selection"]) == OLD_SELECTION_FIELDS | {"units", "vocab_size"}
    assert config["selection"]["units"] == "char"
    assert isinstance(config["source_vocab"], list) and not (tiny_model_dir / ckpt.SUBWORD_FILE).exists()
    card = (tiny_model_dir / ckpt.CARD_FILE).read_text(encoding="utf-8")
    assert "A character-level LSTM encoder-decoder trained with charmt" in card and "Transformer" not in card


def test_an_lstm_model_from_before_the_families_loads_and_translates_as_today(tiny_model_dir, tmp_path):
    """A config.json without "arch", "units" and "vocab_size" (as every model before the Transformer has) is an
    LSTM of characters, and translates exactly as the same model with today's config.json; two loads agree."""
    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    config = ckpt.read_json(old / ckpt.CONFIG_FILE)
    del config["model"]["arch"], config["selection"]["units"], config["selection"]["vocab_size"]
    ckpt.write_json(old / ckpt.CONFIG_FILE, config)
    today, again, before = (Translator.load(d, device="cpu") for d in (tiny_model_dir, tiny_model_dir, old))
    assert isinstance(before.model, Seq2Seq) and before.info.model.arch == "lstm"
    assert before.info.model == today.info.model
    inputs = [*SENTENCES[:10], PARAGRAPH, ""]
    for beam in (1, 3):
        expected = today.translate(inputs, beam=beam)
        assert again.translate(inputs, beam=beam) == expected
        assert before.translate(inputs, beam=beam) == expected
    assert attention_weights(before, SENTENCES[0]) == attention_weights(today, SENTENCES[0])


class _Stop(Exception):
    pass


@pytest.mark.parametrize("units", UNITS)
def test_resume_is_bit_exact_on_the_cpu(data, tmp_path, units):
    # Dropout draws from the RNG, so the checkpoint's RNG state matters; a checkpoint after every step.
    model = replace(TRANSFORMER, dropout=0.1)
    config = replace(TRAINING, epochs=2, checkpoint_minutes=0, threads=1)

    def stop_at_epoch_2_step_3(event, info):  # after the step, before its checkpoint: the step is trained again
        if event == "step" and (info["epoch"], info["step"]) == (2, 3):
            raise _Stop

    with pytest.raises(_Stop):
        train(data, tmp_path / "resumed", model_config=model, train_config=config, selection=_selection(units),
              preset="transformer", callback=stop_at_epoch_2_step_3)
    resumed = train(data, tmp_path / "resumed", resume=True)
    straight = train(data, tmp_path / "straight", model_config=model, train_config=config,
                     selection=_selection(units), preset="transformer")
    assert (resumed.stopped_because, resumed.epochs_run) == (straight.stopped_because, straight.epochs_run) == (
        "epochs", 2)
    a, b = tmp_path / "resumed", tmp_path / "straight"
    assert (a / ckpt.WEIGHTS_FILE).read_bytes() == (b / ckpt.WEIGHTS_FILE).read_bytes()
    ta, tb = ckpt.load_tensors(a / ckpt.CHECKPOINT_FILE), ckpt.load_tensors(b / ckpt.CHECKPOINT_FILE)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)  # weights, optimizer, RNG
    assert _log(a) == _log(b)
    for name in (ckpt.CONFIG_FILE, ckpt.SPLIT_FILE) + ((ckpt.SUBWORD_FILE,) if units == "subword" else ()):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    # The tied target embedding / output projection is stored once and comes back as one tensor.
    loaded, _ = ckpt.load_model(a)
    assert loaded.decoder.output.weight is loaded.decoder.embedding.weight
    # Resuming the finished run changes nothing.
    before = _files(a)
    again = train(data, a, resume=True)
    assert (again.stopped_because, again.epochs_run) == ("already finished (epochs)", 2)
    assert _files(a) == before


@pytest.mark.parametrize("reason, options", [
    # A learning rate too small to change a greedy output: epoch 2 scores as epoch 1, so patience 1 stops there.
    ("early stopping", {"epochs": 5, "patience": 1, "learning_rate": 1e-12}),
    # 0.3 s: a few epochs of this model; the cosine schedule follows the clock (epochs 0: no step count to follow).
    ("time budget", {"epochs": 0, "time_budget_minutes": 0.005, "lr_schedule": "cosine"}),
])
def test_early_stopping_and_the_time_budget_stop_a_transformer(data, tmp_path, reason, options):
    lrs = []
    result = train(data, tmp_path / "m", model_config=TRANSFORMER, train_config=replace(TRAINING, **options),
                   selection=_selection("char"), preset="transformer",
                   callback=lambda event, info: lrs.append(info["lr"]) if event == "step" else None)
    assert result.stopped_because == reason
    log = _log(tmp_path / "m")
    assert len(log) == result.epochs_run
    if reason == "early stopping":
        assert result.epochs_run == 2 and log[1]["val_chrf"] == log[0]["val_chrf"] and result.best_epoch == 1
    else:
        # The budget ran out in the last epoch's steps (partial) or in its validation; never earlier.
        assert not any(record["partial"] for record in log[:-1])
        assert lrs[0] == TRAINING.learning_rate and lrs[-1] < lrs[0]
        assert all(later <= earlier for earlier, later in zip(lrs, lrs[1:]))  # the clock only moves forward
    state = json.loads(ckpt.load_tensors(tmp_path / "m" / ckpt.CHECKPOINT_FILE, with_metadata=True)[1]["state"])
    assert state["finished"] == reason


def test_bf16_autocast_runs_a_transformer_training_step_on_the_cpu(data, tmp_path):
    cpu = torch.device("cpu")
    try:
        precision = training_precision("bf16", cpu)
    except ConfigError as err:
        pytest.skip(f"this CPU runs no bf16: {err}")
    torch.manual_seed(0)
    model = Transformer(replace(TRANSFORMER, src_vocab_size=20, tgt_vocab_size=20))
    generator = torch.Generator().manual_seed(0)
    src = torch.randint(4, 20, (3, 7), generator=generator)
    lengths = torch.tensor([7, 5, 2])
    src[torch.arange(7)[None, :] >= lengths[:, None]] = PAD_ID
    tgt = torch.randint(4, 20, (3, 6), generator=generator)
    tgt_in = torch.cat([torch.full((3, 1), START_ID), tgt], dim=1)
    tgt_out = torch.cat([tgt, torch.full((3, 1), END_ID)], dim=1)
    with training_autocast(precision, cpu):
        logits, loss = model(src, lengths, tgt_in, tgt_out)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)
    # train() itself in bf16: the weights it writes stay float32.
    events = []
    train(data, tmp_path / "m", model_config=TRANSFORMER, train_config=replace(TRAINING, epochs=1, precision="bf16"),
          selection=_selection("char"), preset="transformer", callback=lambda event, info: events.append((event, info)))
    start = next(info for event, info in events if event == "start")
    assert start["precision"] == "bf16"
    assert math.isfinite(_log(tmp_path / "m")[0]["train_loss"])
    tensors = ckpt.load_tensors(tmp_path / "m" / ckpt.WEIGHTS_FILE)
    assert all(t.dtype == torch.float32 for t in tensors.values())


TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists() or not torch.distributed.is_gloo_available(),
                    reason="needs torchrun and the gloo backend")
def test_two_processes_train_a_transformer_with_identical_weights(data, tmp_path):
    from test_distributed import _rank_writes, _torchrun

    out = tmp_path / "model"
    done = _torchrun(tmp_path, data, out, "--arch", "transformer", "--hidden-size", "32", "--layers", "2",
                     "--heads", "4", "--ff-size", "64", "--epochs", "2", "--batch-size", "8", "--eval-sentences",
                     "10", "--validation-fraction", "0.15", "--vocab-size", "200")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Device: cpu x 2 processes" in done.stdout
    assert _rank_writes(tmp_path) == []
    rank0, rank1 = ((tmp_path / "ranks" / f"rank{r}.txt").read_text() for r in (0, 1))
    assert rank0 == rank1  # same weights (sha256), learning rate and step
    # ... the weights rank 0 saved in the checkpoint (the tied embedding and output layer stored once, as there).
    tensors = ckpt.load_tensors(out / ckpt.CHECKPOINT_FILE)
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    assert hashlib.sha256(save_safetensors_bytes(weights)).hexdigest() == rank0.split()[0]
    config = ckpt.read_json(out / ckpt.CONFIG_FILE)
    assert config["model"]["arch"] == "transformer" and config["selection"]["units"] == "subword"
    assert Translator.load(out, device="cpu").translate(SENTENCES[:3])


# --- translating ------------------------------------------------------------------------------------------


class _WithoutEnd:
    """A translator's engine that never lets END win: every output runs into its cap, or into a loop."""

    def __init__(self, engine):
        self.engine, self.name, self.device, self.model = engine, engine.name, engine.device, engine.model

    def encode(self, src, lengths):
        return self.engine.encode(src, lengths)

    def step(self, prev, state, attention=False):
        logits, state, weights = self.engine.step(prev, state, attention)
        logits = logits.copy()
        logits[:, END_ID] = -1e30
        return logits, state, weights

    def select(self, state, rows, sentences=None):
        return self.engine.select(state, rows, sentences)

    def memory_bytes(self):
        return self.engine.memory_bytes()


def _sources(translator: Translator, sentences: list[str]):
    src, lengths = translator._encode_sources(sentences)
    return src, lengths, translator._limits(lengths)


@pytest.mark.parametrize("units", UNITS)
def test_greedy_and_beam_give_each_sentence_what_it_gets_alone(translators, units):
    translator = translators[units]
    for beam in (1, 3):
        together = translator.translate(SENTENCES, beam=beam)
        assert together == [translator.translate([s], beam=beam)[0] for s in SENTENCES]
        assert sum(bool(t) for t in together) >= 0.9 * len(SENTENCES)
    # A beam of one is greedy search: the key/value caches follow their rows through both searches alike.
    src, lengths, limits = _sources(translator, SENTENCES)
    greedy = greedy_decode(translator.engine, src, lengths, limits)
    beam_of_one = beam_search(translator.engine, src, lengths, limits, beam=1)
    assert [hyps[0][0] for hyps in beam_of_one] == greedy


@pytest.mark.parametrize("units", UNITS)
def test_n_best_are_distinct_best_first_and_led_by_the_beam_translation(models, translators, capsys, units):
    translator = translators[units]
    results = translator.translate_n_best(SENTENCES, beam=3, n_best=3)
    assert main(["translate", str(models[units]), "--device", "cpu", "--n-best", "3", *SENTENCES[:4]]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{i}\t{h.score:.4f}\t{h.text}"
                                                    for i, hyps in enumerate(results[:4]) for h in hyps]
    assert [hyps[0].text for hyps in results] == translator.translate(SENTENCES, beam=3)
    for hyps in results:
        assert 1 <= len(hyps) <= 3
        texts = [collapse_whitespace(h.text) for h in hyps]
        assert len(set(texts)) == len(texts)
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True) and all(-math.inf < s <= 0 for s in scores)
    assert sum(len(hyps) == 3 for hyps in results) >= len(SENTENCES) // 2


@pytest.mark.parametrize("units", UNITS)
@pytest.mark.parametrize("beam", [1, 3])
def test_a_paragraph_is_its_sentences_translated_and_joined(translators, units, beam):
    translator = translators[units]
    sentences = split_sentences(PARAGRAPH, "en")
    assert sentences == ["He runs.", "She walks.", "I am cold."]
    assert translator.translate([PARAGRAPH], beam=beam) == [join_sentences(translator.translate(sentences, beam=beam),
                                                                           "fr")]


@pytest.mark.parametrize("units", UNITS)
def test_outputs_are_capped_by_the_models_length_ratio(translators, units):
    translator = translators[units]
    info = translator.info
    assert info.length_ratio is not None and info.length_ratio > 0  # measured on the training pairs, in units
    long = " ".join(SENTENCES)  # longer than any training sentence: the hard cap binds
    inputs = [*SENTENCES[:8], long]
    src, lengths, limits = _sources(translator, inputs)
    hard = max(2 * info.max_target_length, 64)
    assert limits.tolist() == output_limits(lengths, hard, info.length_ratio).tolist()
    assert limits[-1] == hard and (limits[:-1] < hard).all()
    # With END never winning and no repetition guard, every output is exactly as long as its cap allows ...
    engine = _WithoutEnd(translator.engine)
    greedy = greedy_decode(engine, src, lengths, limits, stop_repeats=False)
    assert [len(tokens) for tokens in greedy] == limits.tolist()
    for hyps, limit in zip(beam_search(engine, src, lengths, limits, beam=3, n_best=None, stop_repeats=False),
                           limits):
        assert hyps and all(len(tokens) == limit for tokens, _ in hyps)
    # ... and the model's own outputs are never longer (in characters: a character model's units).
    assert all(len(tokens) <= limit for tokens, limit in zip(greedy_decode(translator.engine, src, lengths, limits),
                                                             limits))
    if units == "char":
        for beam in (1, 3):
            outputs = translator.translate(inputs, beam=beam, split=False)
            assert all(len(text) <= limit for text, limit in zip(outputs, limits))


@pytest.mark.parametrize("units", UNITS)
def test_the_repetition_guard_cuts_a_loop_at_its_first_occurrence(translators, units):
    translator = translators[units]
    engine = _WithoutEnd(translator.engine)  # a model made to run on: it loops sooner or later
    src, lengths, limits = _sources(translator, SENTENCES)
    free = greedy_decode(engine, src, lengths, limits, stop_repeats=False)
    guarded = greedy_decode(engine, src, lengths, limits, stop_repeats=True)
    expected = []
    for tokens in free:
        looping = next((t for t in range(1, len(tokens) + 1) if _repeats(np.array([tokens[:t]]))[0]), None)
        expected.append(tokens if looping is None else _trim(tokens[:looping], True))
    assert guarded == expected
    cut = sum(len(g) < len(f) for g, f in zip(guarded, free))
    assert cut >= 3
    # Beam search stops looping hypotheses too: none of its outputs repeats a unit at its end.
    for hyps in beam_search(engine, src, lengths, limits, beam=3, n_best=None):
        assert not any(_repeats(np.array([tokens]))[0] for tokens, _ in hyps if tokens)


# --- evaluate ---------------------------------------------------------------------------------------------

# Second references for five sources (alternatives a person could have written).
SECOND_REFERENCES = {"I am fine, thank you.": "Ça va bien, merci.",
                     "Paul sees the map.": "Paul regarde la carte.",
                     "Have a good day!": "Passe une bonne journée !",
                     "The horse is big.": "Le cheval est gros.",
                     "You look for the key.": "Vous cherchez la clé."}


@pytest.fixture(scope="module")
def multi_reference_file(data) -> Path:
    lines = LINES[150:160]
    second = [f"{s}\t{ref}" for line in lines for s in [line.split("\t")[0]] if (ref := SECOND_REFERENCES.get(s))]
    assert len(second) == 5
    return write_pairs(data.parent / "eval-fra.txt", lines + second)


@pytest.mark.parametrize("units", UNITS)
def test_evaluate_reports_scores_the_human_baseline_and_masked_accuracy(models, translators, multi_reference_file,
                                                                       data, capsys, units):
    report = evaluate_file(models[units], multi_reference_file, device="cpu")
    assert (report.split, report.pairs, report.sentences, report.references_per_sentence) == ("file", 15, 10, 1.5)
    assert report.hypotheses == translators[units].translate(report.sources)
    assert 0 < report.chrf <= 100 and 0 <= report.bleu <= 100
    assert 0 < report.masked_accuracy < 1 and 0 < report.loss < math.inf  # teacher forcing over target units
    human = report.human_baseline
    assert human["sentences"] == 5 and human["human_chrf"] > human["model_chrf"]
    assert main(["evaluate", str(models[units]), str(multi_reference_file), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "pairs: 15 (file); sentences: 10; references per sentence: 1.50" in out
    assert (f"human baseline, 5 sentences with 2+ references, each scored against the others: a person chrF "
            f"{human['human_chrf']:.2f} / BLEU {human['human_bleu']:.2f}, the model chrF "
            f"{human['model_chrf']:.2f}") in out
    assert f"masked character accuracy (teacher forcing): {report.masked_accuracy:.4f}\n" in out
    # On its own training file, the model is evaluated on the test pairs it held out.
    held_out = evaluate_file(models[units], data, device="cpu")
    assert held_out.split == "test"
    assert held_out.pairs == len(ckpt.read_json(models[units] / ckpt.SPLIT_FILE)["test"])


# --- attention --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("units", UNITS)
@pytest.mark.parametrize("sentence", ["I want the newspaper.", "How many hats does Marie have?"])
def test_cross_attention_rows_sum_to_one_over_the_source_units(translators, units, sentence):
    translator = translators[units]
    source, output, weights = attention_weights(translator, sentence)
    assert "".join(output) == translator.translate([sentence], split=False)[0] != ""
    if units == "char":
        assert source == list(sentence)
    else:  # pieces, with SentencePiece's word-start mark written as a space
        assert "".join(source) == " " + sentence and len(source) < len(sentence)
    assert len(weights) == len(output)
    assert all(len(row) == len(source) for row in weights)
    np.testing.assert_allclose([sum(row) for row in weights], 1.0, atol=1e-5)
    assert all(w >= 0 for row in weights for w in row)


def test_the_attention_command_draws_a_transformers_heatmap(models, translators, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from charmt import plots

    titles = []
    real = plots.plot_attention
    monkeypatch.setattr(plots, "plot_attention", lambda *a, **k: titles.append(k["title"]) or real(*a, **k))
    png = tmp_path / "attention.png"
    sentence = SENTENCES[0]
    assert main(["attention", str(models["subword"]), sentence, "--png", str(png), "--device", "cpu"]) == 0
    assert capsys.readouterr().out == translators["subword"].translate([sentence], split=False)[0] + "\n"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert titles == [ATTENTION_SHOWN["transformer"]] == ["last decoder layer's cross-attention, mean of its heads"]


# --- ONNX -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory) -> dict[str, Path]:
    """`charmt export MODEL --onnx DIR` of each tiny Transformer (fp32)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("onnx")
    for units, directory in models.items():
        assert main(["export", str(directory), "--onnx", str(root / units)]) == 0
    return {units: root / units for units in models}


@pytest.mark.parametrize("units", UNITS)
def test_an_onnx_export_translates_exactly_as_pytorch(models, translators, exports, units):
    pytorch, exported = translators[units], Translator.load(exports[units])
    assert exported.engine.name == "onnx" and exported.engine.model is None
    config = ckpt.read_json(exports[units] / ckpt.CONFIG_FILE)
    assert config["export"]["row_states"] == ["self_k", "self_v"] and config["export"]["int8"] is False
    assert exported.info.to_json() == pytorch.info.to_json()
    subword = units == "subword"
    assert {p.name for p in exports[units].iterdir()} == {
        "encoder.onnx", "decoder_step.onnx", ckpt.CONFIG_FILE, ckpt.SPLIT_FILE, ckpt.CARD_FILE,
        *([ckpt.SUBWORD_FILE] if subword else [])}
    if subword:
        assert (exports[units] / ckpt.SUBWORD_FILE).read_bytes() == (models[units] / ckpt.SUBWORD_FILE).read_bytes()
    inputs = [*SENTENCES, PARAGRAPH]
    for beam in (1, 3):
        assert exported.translate(inputs, beam=beam) == pytorch.translate(inputs, beam=beam)
    n_best_a = pytorch.translate_n_best(SENTENCES[:10], beam=4, n_best=3)
    n_best_b = exported.translate_n_best(SENTENCES[:10], beam=4, n_best=3)
    assert [[h.text for h in hyps] for hyps in n_best_b] == [[h.text for h in hyps] for hyps in n_best_a]
    for hyps_a, hyps_b in zip(n_best_a, n_best_b):
        np.testing.assert_allclose([h.score for h in hyps_b], [h.score for h in hyps_a], atol=1e-4)
    source_a, output_a, weights_a = attention_weights(pytorch, SENTENCES[0])
    source_b, output_b, weights_b = attention_weights(exported, SENTENCES[0])
    assert (source_b, output_b) == (source_a, output_a)
    np.testing.assert_allclose(weights_b, weights_a, atol=1e-5)


@pytest.mark.parametrize("units", UNITS)
def test_an_int8_export_loads_and_translates(models, translators, tmp_path, units):
    pytest.importorskip("onnxruntime")
    from charmt.export import export_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = export_onnx(models[units], tmp_path / "int8", int8=True)
    translator = Translator.load(out)
    assert translator.engine.description == "onnxruntime int8"
    assert ckpt.read_json(out / ckpt.CONFIG_FILE)["export"]["int8"] is True
    outputs = translator.translate(SENTENCES)
    assert len(outputs) == len(SENTENCES) and sum(bool(o) for o in outputs) >= 0.9 * len(SENTENCES)
    # int8 weights move the logits a little: most greedy outputs stay those of float32.
    same = sum(a == b for a, b in zip(outputs, translators[units].translate(SENTENCES)))
    assert same >= 0.5 * len(SENTENCES)


# --- serve ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("units", UNITS)
def test_the_server_translates_with_a_transformer_as_the_translator_does(models, translators, units):
    pytest.importorskip("fastapi", reason="the server needs FastAPI (pip install 'charmt[serve]')")
    from fastapi.testclient import TestClient

    from charmt.server import create_app, load_models

    (served,) = load_models([str(models[units])], device="cpu")
    assert (served.source, served.target, served.has_attention) == ("en", "fr", True)
    texts = [*SENTENCES[:6], PARAGRAPH, ""]
    expected = translators[units].translate(texts)
    with TestClient(create_app([served])) as client:
        own = client.post("/api/translate", json={"texts": texts, "source": "en", "target": "fr"})
        libre = client.post("/translate", json={"q": texts, "source": "en", "target": "fr"})
        attention = client.post("/api/attention", json={"text": SENTENCES[0], "source": "en", "target": "fr"})
    assert own.status_code == libre.status_code == attention.status_code == 200
    assert own.json()["translations"] == expected
    assert libre.json()["translatedText"] == expected
    source, output, weights = attention_weights(translators[units], SENTENCES[0])
    body = attention.json()
    assert (body["source"], body["output"], body["translation"]) == (source, output, "".join(output))
    np.testing.assert_allclose(body["weights"], weights, atol=1e-4)  # rounded to 4 decimals


# --- the Keras import -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_keras_import_still_yields_an_lstm(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    keras = pytest.importorskip("keras", reason="the Keras import test needs keras (Keras 3)")
    if keras.backend.backend() != "torch":
        pytest.skip("keras was already imported with another backend than torch")
    from keras.layers import LSTM, Dense, Input

    from charmt.keras_import import import_keras

    source_chars, target_chars = " .abc", "\t\n .xyz"
    encoder_inputs = Input(shape=(None, len(source_chars)))
    _, state_h, state_c = LSTM(8, return_state=True)(encoder_inputs)
    decoder_inputs = Input(shape=(None, len(target_chars)))
    outputs, _, _ = LSTM(8, return_sequences=True, return_state=True)(decoder_inputs,
                                                                       initial_state=[state_h, state_c])
    keras.Model([encoder_inputs, decoder_inputs], Dense(len(target_chars), activation="softmax")(outputs)).save(
        tmp_path / "s2s_model.keras")
    import_keras(tmp_path / "s2s_model.keras", tmp_path / "m", source_chars=source_chars, target_chars=target_chars,
                 source_length=6, max_decode_length=8)
    config = ckpt.read_json(tmp_path / "m" / ckpt.CONFIG_FILE)
    assert config["model"]["arch"] == "lstm" and set(config["model"]) == LSTM_FIELDS
    model, info = ckpt.load_model(tmp_path / "m")
    assert isinstance(model, Seq2Seq) and info.keras_compat is not None
    assert len(Translator.load(tmp_path / "m", device="cpu").translate(["ab.", "c"])) == 2

