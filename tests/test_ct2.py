"""CTranslate2 exports (`charmt export --ctranslate2`, engine "ct2") and Argos Translate packages (`--argos`): what an
export holds, where it may be written, that it translates as PyTorch does (greedy, beam, n-best, length penalty),
decode.finish_tokens against greedy_decode, the command line, serving an export, and a package's files: metadata,
model, SentencePiece model and sentence splitter.

Exactness needs models whose outputs end by themselves: on a tiny model that has learnt nothing, outputs run into
their caps and loops, which charmt cuts inside its beam search and CTranslate2 only afterwards. So the two tiny
Transformers here are trained once per module (about 10 s each on 2 cores; with fewer steps they have not learnt) on
a task they learn: sentences of 2 to 5 words of the demo corpus (its English words, and its French words with
accents) and, as target, the sentence in upper case (characters: an alphabet of its own, so that a mix-up of the
source and target vocabularies shows) or the sentence itself (subword units: a tiny model learns to copy pieces in
seconds, not to change their case). The demo's English sentences are the held-out inputs: none is a training
sentence. `pytest -s` prints the exactness figures.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import charmt
from charmt import checkpoint as ckpt
from charmt.argos import export_argos, sentence_splitter, sentencepiece_model
from charmt.cli import main
from charmt.config import ModelConfig
from charmt.decode import Translator, attention_weights, beam_search, export_engine, finish_tokens, greedy_decode
from charmt.errors import ConfigError
from charmt.export import export_ctranslate2, export_onnx
from charmt.metrics import score_translations
from charmt.server import Limits, create_app, find_models, load_models
from charmt.training import train
from charmt.vocab import END_ID, UNK_ID, piece_strings

from conftest import DEMO, TINY_SELECTION, TINY_TRAIN, write_pairs

ctranslate2 = pytest.importorskip("ctranslate2", reason="the CTranslate2 tests need ctranslate2 (pip install "
                                                        "'charmt[ct2]')")

UNITS = ["char", "subword"]
DEMO_PAIRS = [line.split("\t") for line in DEMO.read_text(encoding="utf-8").splitlines()]
HELD_OUT = list(dict.fromkeys(source for source, _ in DEMO_PAIRS))  # 531 English sentences
TARGET_OF = {"char": str.upper, "subword": str}
EPOCHS = {"char": 5, "subword": 6}
TRANSFORMER = ModelConfig(arch="transformer", hidden_size=64, num_layers=2, heads=4, ff_size=128)
TRAINING = replace(TINY_TRAIN, batch_size=32)  # fp32, seed 1, adam 3e-3
SELECTION = replace(TINY_SELECTION, validation_fraction=0.02, test_fraction=0.0, vocab_size=200)
CT2_FILES = {"model.bin", "config.json", ckpt.CT2_CONFIG_FILE, ckpt.SPLIT_FILE, ckpt.CARD_FILE}
VOCABULARY_FILES = {"char": {"source_vocabulary.json", "target_vocabulary.json"},
                    "subword": {"shared_vocabulary.json", ckpt.SUBWORD_FILE}}


def _training_sentences(count: int, seed: int = 0) -> list[str]:
    """`count` distinct sentences of 2 to 5 demo words, none of them a demo sentence."""
    english = {word for source, _ in DEMO_PAIRS for word in re.findall(r"[A-Za-z']+", source)}
    accented = {word for _, target in DEMO_PAIRS for word in re.findall(r"[^\W\d_]+", target) if not word.isascii()}
    words = sorted(english | accented)
    rng = random.Random(seed)
    sentences: dict[str, None] = {}
    while len(sentences) < count:
        text = " ".join(rng.choice(words) for _ in range(rng.randint(2, 5)))
        sentence = text[0].upper() + text[1:] + rng.choice(".?!")
        if sentence not in HELD_OUT:
            sentences[sentence] = None
    return list(sentences)


def _names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def _same(a: list, b: list) -> int:
    return sum(x == y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """{"char": dir, "subword": dir}: tiny Transformers, en -> fr by their file's name. Treat them as read-only."""
    root = tmp_path_factory.mktemp("ct2")
    sentences = _training_sentences(2000)
    dirs = {}
    for units in UNITS:
        (root / units).mkdir()
        data = write_pairs(root / units / "eng-fra.txt", [f"{s}\t{TARGET_OF[units](s)}" for s in sentences])
        dirs[units] = root / f"transformer-{units}"
        result = train(data, dirs[units], model_config=TRANSFORMER, selection=replace(SELECTION, units=units),
                       train_config=replace(TRAINING, epochs=EPOCHS[units]), preset="transformer")
        assert result.stopped_because == "epochs"
    return dirs


@pytest.fixture(scope="module")
def translators(models) -> dict[str, Translator]:
    """The PyTorch translators of the models."""
    return {units: Translator.load(directory, device="cpu") for units, directory in models.items()}


@pytest.fixture(scope="module")
def ct2_exports(models, tmp_path_factory) -> dict[str, Path]:
    """The float32 CTranslate2 export of each model. Treat them as read-only."""
    root = tmp_path_factory.mktemp("ct2-exports")
    return {units: export_ctranslate2(directory, root / units) for units, directory in models.items()}


@pytest.fixture(scope="module")
def ct2_translators(ct2_exports) -> dict[str, Translator]:
    return {units: Translator.load(directory) for units, directory in ct2_exports.items()}


# --- the export -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("units", UNITS)
def test_an_export_is_ctranslate2s_model_folder_and_charmts_config(models, translators, ct2_exports, units):
    out, info = ct2_exports[units], translators[units].info
    assert _names(out) == CT2_FILES | VOCABULARY_FILES[units]
    assert ckpt.read_json(out / "config.json") == {
        "add_source_bos": False, "add_source_eos": False, "bos_token": "<s>", "decoder_start_token": "<s>",
        "eos_token": "</s>", "layer_norm_epsilon": 1e-6, "multi_query_attention": False, "unk_token": "<unk>"}
    if units == "char":  # two alphabets, the target's in upper case
        source, target = (ckpt.read_json(out / f"{side}_vocabulary.json") for side in ("source", "target"))
        assert source == piece_strings(info.source_vocab) and target == piece_strings(info.target_vocab)
        assert source != target and source[:5] == target[:5] == ["<pad>", "<unk>", "<s>", "</s>", "▁"]
    else:  # one joint vocabulary of SentencePiece pieces, and its model beside it
        shared = ckpt.read_json(out / "shared_vocabulary.json")
        assert shared == piece_strings(info.source_vocab) == info.source_vocab.tokens
        assert (out / ckpt.SUBWORD_FILE).read_bytes() == (models[units] / ckpt.SUBWORD_FILE).read_bytes()
    for name in (ckpt.SPLIT_FILE, ckpt.CARD_FILE):
        assert (out / name).read_bytes() == (models[units] / name).read_bytes()
    config = ckpt.read_json(out / ckpt.CT2_CONFIG_FILE)
    assert config == {**info.to_json(), "export": {
        "engine": "ct2", "quantization": "float32", "ctranslate2": ctranslate2.__version__,
        "from": models[units].name, "charmt": charmt.__version__}}
    assert export_engine(out) == "ct2" and export_engine(models[units]) is None
    translator = Translator.load(out)
    assert (translator.engine.name, translator.engine.description, translator.model) == (
        "ct2", "CTranslate2 float32", None)
    assert translator.info.to_json() == info.to_json()


@pytest.mark.parametrize("quantization, compute_type", [
    ("float32", "float32"), ("int8", "int8_float32"), ("int8_float32", "int8_float32")])
def test_quantizations(models, ct2_exports, tmp_path, quantization, compute_type):
    out = export_ctranslate2(models["char"], tmp_path / "export", quantization=quantization)
    assert ckpt.read_json(out / ckpt.CT2_CONFIG_FILE)["export"]["quantization"] == quantization
    translator = Translator.load(out)
    assert translator.engine.description == f"CTranslate2 {compute_type}"
    float32 = (ct2_exports["char"] / "model.bin").stat().st_size
    size = (out / "model.bin").stat().st_size
    assert translator.engine.memory_bytes() == size
    assert size == float32 if quantization == "float32" else size < 0.6 * float32  # int8 weights, float32 norms
    assert sum(bool(text) for text in translator.translate(HELD_OUT[:20])) == 20


def test_an_unknown_quantization_is_refused(models, tmp_path):
    with pytest.raises(ConfigError) as err:
        export_ctranslate2(models["char"], tmp_path / "export", quantization="float16")
    assert str(err.value) == "--quantization must be one of float32, int8, int8_float32, got 'float16'"
    assert not (tmp_path / "export").exists()


def test_an_lstm_is_refused_with_a_remedy(tiny_model_dir, tmp_path, capsys):
    message = (f"{tiny_model_dir} is an LSTM model, and CTranslate2 runs Transformer models only (its converters "
               "reject recurrent networks): export it with --onnx, or train a Transformer (charmt train FILE --arch "
               "transformer)")
    with pytest.raises(ConfigError) as err:
        export_ctranslate2(tiny_model_dir, tmp_path / "export")
    assert str(err.value) == message
    assert main(["export", str(tiny_model_dir), "--ctranslate2", str(tmp_path / "export")]) == 1
    assert capsys.readouterr().err == f"charmt: error: {message}\n"
    # An Argos package of it is refused alike (once its languages are known).
    named = tmp_path / "named"
    shutil.copytree(tiny_model_dir, named)
    config = ckpt.read_json(named / ckpt.CONFIG_FILE)
    ckpt.write_json(named / ckpt.CONFIG_FILE, {**config, "source_lang": "en", "target_lang": "fr"})
    with pytest.raises(ConfigError, match=re.escape(f"{named} is an LSTM model, and CTranslate2 runs Transformer")):
        export_argos(named, tmp_path / "lstm.argosmodel")
    assert not (tmp_path / "export").exists() and not (tmp_path / "lstm.argosmodel").exists()


def test_where_an_export_may_not_be_written(models, tmp_path):
    model = models["char"]
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError) as err:
        export_ctranslate2(model, occupied)
    assert str(err.value) == f"{occupied} is not empty; choose another directory or add --overwrite"
    assert _names(occupied) == {"notes.txt"}
    export_ctranslate2(model, occupied, overwrite=True)
    assert _names(occupied) == CT2_FILES | VOCABULARY_FILES["char"] | {"notes.txt"}  # not its own: kept
    # Never into a model directory, --overwrite or not: its config.json would be rewritten as an export's.
    with pytest.raises(ConfigError) as err:
        export_ctranslate2(model, model, overwrite=True)
    assert str(err.value) == f"{model} is the model directory itself; write the export to another directory"
    with pytest.raises(ConfigError) as err:
        export_ctranslate2(model, models["subword"], overwrite=True)
    assert str(err.value) == (f"{models['subword']} holds a trained model (model.safetensors or "
                              "checkpoint.safetensors); an export never writes into a model directory: choose another "
                              "directory")
    assert ckpt.load_info(models["subword"]).selection["units"] == "subword"


def test_overwriting_an_export_leaves_nothing_of_the_one_before(models, translators, ct2_exports, tmp_path):
    out = tmp_path / "export"
    export_ctranslate2(models["subword"], out)
    # CTranslate2 reads shared_vocabulary.json before source_ and target_vocabulary.json: one left over would pair
    # the character model's weights with the subword vocabulary.
    export_ctranslate2(models["char"], out, overwrite=True)
    assert _names(out) == _names(ct2_exports["char"])
    assert Translator.load(out).translate(HELD_OUT[:20]) == translators["char"].translate(HELD_OUT[:20])
    # An ONNX export over it is an ONNX export: a charmt.json left over would make it this CTranslate2 export.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes
        export_onnx(models["subword"], out, overwrite=True)
    assert _names(out) == {"encoder.onnx", "decoder_step.onnx", ckpt.CONFIG_FILE, ckpt.SPLIT_FILE, ckpt.CARD_FILE,
                           ckpt.SUBWORD_FILE}
    assert export_engine(out) == "onnx"
    assert Translator.load(out).translate(HELD_OUT[:20]) == translators["subword"].translate(HELD_OUT[:20])


# --- translating as PyTorch does --------------------------------------------------------------------------


@pytest.mark.parametrize("units", UNITS)
def test_greedy_and_beam_outputs_are_pytorchs(translators, ct2_translators, units):
    pytorch, exported = translators[units], ct2_translators[units]
    greedy = pytorch.translate(HELD_OUT, warn=False)
    # The task is learnt enough: nearly every held-out output ends with END (before its cap, unguarded), and many
    # are right.
    src, lengths = pytorch._encode_sources(HELD_OUT)
    limits = pytorch._limits(lengths)
    unguarded = greedy_decode(pytorch.engine, src, lengths, limits, stop_repeats=False)
    ended = sum(len(tokens) < limit for tokens, limit in zip(unguarded, limits))
    right = _same(greedy, [TARGET_OF[units](s) for s in HELD_OUT])
    print(f"\n{units}: of {len(HELD_OUT)} held-out sentences, {ended} end by themselves, {right} are right (greedy)")
    assert ended >= 0.95 * len(HELD_OUT) and right >= 0.1 * len(HELD_OUT)
    for beam, needed in ((1, 0.995), (5, 0.98)):  # near-ties of tiny models differ by CPU
        expected = greedy if beam == 1 else pytorch.translate(HELD_OUT, beam=beam, warn=False)
        same = _same(exported.translate(HELD_OUT, beam=beam, warn=False), expected)
        print(f"{units}, beam {beam}: CTranslate2 float32 = PyTorch on {same}/{len(HELD_OUT)} held-out sentences")
        assert same >= needed * len(HELD_OUT)


@pytest.mark.parametrize("units", UNITS)
def test_n_best_lists_and_the_length_penalty_are_pytorchs(translators, ct2_translators, units):
    pytorch, exported = translators[units], ct2_translators[units]
    inputs = HELD_OUT[:150]
    n_best_a = pytorch.translate_n_best(inputs, beam=4, n_best=3, warn=False)
    n_best_b = exported.translate_n_best(inputs, beam=4, n_best=3, warn=False)
    texts_a, texts_b = ([[h.text for h in hyps] for hyps in results] for results in (n_best_a, n_best_b))
    same = _same(texts_b, texts_a)
    print(f"\n{units}: n-best lists (beam 4, 3 best) equal on {same}/{len(inputs)}")
    assert same >= 0.97 * len(inputs)
    assert all(len(hyps) == 3 for hyps in n_best_b[:20])
    # The same hypothesis (the same units, ended by END before the sentence's cap) has the same score in both
    # searches, within float32. Equal texts are not enough: hypotheses cut at their cap and trimmed by the
    # repetition guard can read alike; and PyTorch's search ends a hypothesis at its cap where CTranslate2's, held
    # only to the batch's longest cap, goes on and may write END, with END's probability in its score.
    src, lengths = pytorch._encode_sources(inputs)
    limits = pytorch._limits(lengths)
    found_a = beam_search(pytorch.engine, src, lengths, limits, beam=4, n_best=None, stop_repeats=False)
    found_b = exported.engine.search(src, lengths, limits, beam=4)
    compared = 0
    for hyps_a, hyps_b, limit in zip(found_a, found_b, limits):
        scores_a = {tuple(tokens): score for tokens, score in hyps_a if len(tokens) < limit}
        for tokens, score in hyps_b:
            if tokens[-1:] == [END_ID] and tuple(tokens[:-1]) in scores_a:
                assert score == pytest.approx(scores_a[tuple(tokens[:-1])], abs=5e-3)
                compared += 1
    assert compared >= len(inputs)
    # Argos Translate's search: beam 4, length penalty 0.2.
    argos_a = pytorch.translate(inputs, beam=4, length_penalty=0.2, warn=False)
    argos_b = exported.translate(inputs, beam=4, length_penalty=0.2, warn=False)
    assert _same(argos_b, argos_a) >= 0.99 * len(inputs)
    assert argos_a != pytorch.translate(inputs, beam=4, warn=False)  # the penalty changed something


def test_an_empty_translation_and_a_very_long_source_are_pytorchs(models, translators, ct2_translators, tmp_path):
    """CTranslate2's defaults would differ: it ends no output at its first step and cuts sources at 1024 units."""
    long = " ".join(s.rstrip(".?!") for s in HELD_OUT[:80])  # one sentence, unsplit
    assert len(long) > 1024
    for beam in (1, 2):
        expected = translators["char"].translate([long], beam=beam, split=False, warn=False)
        assert ct2_translators["char"].translate([long], beam=beam, split=False, warn=False) == expected
    # A model whose END wins every first step translates everything to nothing.
    model, info = ckpt.load_model(models["char"])
    with torch.no_grad():
        model.decoder.output.bias[END_ID] += 100.0
    ckpt.save_model(tmp_path / "silent", model, info)
    exported = Translator.load(export_ctranslate2(tmp_path / "silent", tmp_path / "silent-ct2"))
    pytorch = Translator.load(tmp_path / "silent", device="cpu")
    for beam in (1, 3):
        assert pytorch.translate(HELD_OUT[:5], beam=beam) == exported.translate(HELD_OUT[:5], beam=beam) == [""] * 5


def test_an_int8_export_scores_nearly_as_float32(models, ct2_translators, tmp_path):
    inputs = HELD_OUT[:200]
    references = [[TARGET_OF["char"](s)] for s in inputs]
    int8 = Translator.load(export_ctranslate2(models["char"], tmp_path / "int8", quantization="int8"))
    float32_outputs = ct2_translators["char"].translate(inputs, warn=False)
    int8_outputs = int8.translate(inputs, warn=False)
    float32_chrf = score_translations(float32_outputs, references).chrf
    int8_chrf = score_translations(int8_outputs, references).chrf
    same = _same(int8_outputs, float32_outputs)
    print(f"\nchrF: float32 {float32_chrf:.2f}, int8 {int8_chrf:.2f}; same outputs: {same}/{len(inputs)}")
    assert float32_chrf > 50 and abs(int8_chrf - float32_chrf) < 5
    assert same >= 0.5 * len(inputs)


def test_attention_is_refused_for_an_engine_without_steps(ct2_translators):
    with pytest.raises(ConfigError) as err:
        attention_weights(ct2_translators["char"], HELD_OUT[0])
    assert str(err.value) == ("the ct2 engine runs its own search and shows no attention here: show it with the model "
                              "directory, or its ONNX export")


# --- finish_tokens: what greedy_decode makes of a search's argmax tokens -----------------------------------


class _Streams:
    """A decode.Engine whose decoder writes given token streams, one per sentence, whatever it is fed: greedy_decode
    over it stops each stream where charmt's greedy search stops the argmax tokens of a model."""

    name, device, model = "streams", "cpu", None

    def __init__(self, streams: np.ndarray, vocab_size: int):
        self.streams, self.vocab_size = streams, vocab_size

    def encode(self, src, lengths):
        return np.arange(len(src)), 0  # the stream of each decoder row, the step

    def step(self, prev, state, attention=False):
        rows, step = state
        logits = np.zeros((len(rows), self.vocab_size), dtype=np.float32)
        logits[np.arange(len(rows)), self.streams[rows, step]] = 1.0
        return logits, (rows, step + 1), None

    def select(self, state, rows, sentences=None):
        return state[0][rows], state[1]

    def memory_bytes(self):
        return 0


def _random_streams(rng: np.random.Generator, count: int, length: int) -> np.ndarray:
    """Token streams of the kinds a search meets: random tokens of a small alphabet (chance repeats), a unit of
    1 to 12 tokens looping after a prefix (from a few times to past the guard's count), END anywhere or nowhere."""
    streams = rng.integers(4, 8, size=(count, length))
    for row in streams:
        if rng.random() < 0.6:
            unit = rng.integers(4, 10, size=rng.integers(1, 13))
            start = rng.integers(0, 20)
            row[start:] = np.resize(unit, length - start)
        if rng.random() < 0.5:
            row[rng.integers(0, length)] = END_ID
    return streams


@pytest.mark.parametrize("stop_repeats", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_finish_tokens_stops_a_search_as_greedy_decode_does(seed, stop_repeats):
    rng = np.random.default_rng(seed)
    count, length = 400, 80
    streams = _random_streams(rng, count, length)
    limits = rng.integers(1, length + 1, size=count)
    expected = greedy_decode(_Streams(streams, vocab_size=10), np.zeros((count, 1), dtype=np.int64),
                             np.ones(count, dtype=np.int64), limits, stop_repeats=stop_repeats)
    # What CTranslate2 returns for the batch: each stream up to its END (kept), at most the longest cap long.
    outputs = []
    for row in streams.tolist():
        end = row.index(END_ID) + 1 if END_ID in row else length
        outputs.append(row[: min(end, int(limits.max()))])
    assert finish_tokens(outputs, limits.tolist(), stop_repeats) == expected
    # Every way of stopping was met: END, the cap, and (with the guard) a loop.
    ended = sum(END_ID in row[:limit] for row, limit in zip(streams.tolist(), limits))
    capped = sum(len(tokens) == limit for tokens, limit in zip(expected, limits))
    cut = sum(len(tokens) < limit and END_ID not in row[:limit]
              for tokens, row, limit in zip(expected, streams.tolist(), limits))
    assert ended >= 50 and capped >= 50 and (cut >= 50 if stop_repeats else cut == 0)
    assert finish_tokens([], [], stop_repeats) == []


# --- the command line -------------------------------------------------------------------------------------


SENTENCES = ["I am cold.", "She eats the bread. He runs.", "", "Where is the key?"]


@pytest.mark.parametrize("options", [[], ["--beam", "4", "--length-penalty", "0.2"], ["--beam", "3", "--n-best", "2"]])
def test_translate_prints_what_the_model_directory_prints(models, ct2_exports, capsys, options):
    assert main(["translate", str(models["char"]), "--device", "cpu", *options, *SENTENCES]) == 0
    expected = capsys.readouterr().out
    assert main(["translate", str(ct2_exports["char"]), "--device", "cpu", *options, *SENTENCES]) == 0
    printed = capsys.readouterr().out
    if "--n-best" not in options:
        assert printed == expected and len(printed.splitlines()) == 4
        return
    # "input TAB score TAB text" lines: the scores are CTranslate2's, in float32 (the 4th decimal may differ).
    rows, expected_rows = ([line.split("\t") for line in text.splitlines()] for text in (printed, expected))
    assert [(i, text) for i, _, text in rows] == [(i, text) for i, _, text in expected_rows]
    assert [i for i, _, _ in rows] == ["0", "0", "1", "2", "3", "3"]  # two sentences: their best, joined
    scored = [(float(a), float(b)) for (_, a, _), (_, b, _) in zip(rows, expected_rows) if a]
    np.testing.assert_allclose(*zip(*scored), atol=2e-4)


def test_evaluate_an_export(models, ct2_exports, tmp_path, capsys):
    data = write_pairs(tmp_path / "eval-fra.txt", [f"{s}\t{s.upper()}" for s in HELD_OUT[:40]])
    assert main(["evaluate", str(models["char"]), str(data), "--device", "cpu"]) == 0
    expected = capsys.readouterr().out.splitlines()
    assert main(["evaluate", str(ct2_exports["char"]), str(data), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.splitlines()
    masked = "masked character accuracy (teacher forcing): "
    assert [line for line in printed if line.startswith(masked)] == [
        f"{masked}unavailable for an export (evaluate the model directory for it)"]
    assert [line for line in printed if not line.startswith(masked)] == [
        line for line in expected if not line.startswith(masked)]
    assert "pairs: 40 (file); sentences: 40; references per sentence: 1.00" in printed


@pytest.mark.parametrize("options, message", [
    ([], "name one export: --onnx DIR, --ctranslate2 DIR or --argos FILE.argosmodel"),
    (["--onnx", "{out}", "--ctranslate2", "{out}"], "name one export: --onnx DIR, --ctranslate2 DIR or --argos "
                                                    "FILE.argosmodel"),
    (["--ctranslate2", "{out}", "--int8"], "--int8 is for --onnx; CTranslate2 exports take --quantization int8"),
    (["--argos", "{out}.argosmodel", "--int8"], "--int8 is for --onnx; CTranslate2 exports take --quantization int8"),
    (["--onnx", "{out}", "--quantization", "int8"], "--quantization is for --ctranslate2 and --argos; ONNX exports "
                                                    "take --int8"),
    (["--argos", "{out}.zip"], "an Argos Translate package is a .argosmodel file (argostranslate installs no other), "
                               "got out.zip"),
])
def test_export_options_that_are_refused(models, tmp_path, capsys, options, message):
    out = tmp_path / "out"
    assert main(["export", str(models["char"]), *(o.format(out=out) for o in options)]) == 1
    assert capsys.readouterr().err == f"charmt: error: {message}\n"
    assert list(tmp_path.iterdir()) == []


def test_export_quantization_choices_are_checked_by_the_parser(models, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(models["char"]), "--ctranslate2", str(tmp_path / "out"), "--quantization", "float16"])
    assert exit_.value.code == 2
    assert "argument --quantization: invalid choice: 'float16'" in capsys.readouterr().err


def test_export_from_the_command_line(models, tmp_path, capsys):
    out = tmp_path / "ct2"
    assert main(["export", str(models["char"]), "--ctranslate2", str(out), "--quantization", "int8"]) == 0
    assert capsys.readouterr().err == (f"Exported {models['char']} to {out} (CTranslate2, int8); translate with: "
                                       f"charmt translate {out} \"...\" (needs only ctranslate2: pip install "
                                       "'charmt[ct2]')\n")
    assert ckpt.read_json(out / ckpt.CT2_CONFIG_FILE)["export"]["quantization"] == "int8"
    package = tmp_path / "en-fr.argosmodel"
    assert main(["export", str(models["subword"]), "--argos", str(package)]) == 0
    assert capsys.readouterr().err == (f"Wrote the Argos Translate package {package}; install it with argostranslate "
                                       "(python -c \"import argostranslate.package as p; p.install_from_path("
                                       f"'{package}')\"), and LibreTranslate serves it\n")  # no warning: subword units
    with zipfile.ZipFile(package) as archive:
        assert json.loads(archive.read("translate-en_fr-1_0/model/charmt.json"))["export"]["quantization"] == "int8"
        assert "(int8 weights)" in archive.read("translate-en_fr-1_0/README.md").decode()
    assert main(["export", str(models["subword"]), "--argos", str(package)]) == 1
    assert capsys.readouterr().err == f"charmt: error: {package} exists; choose another name or add --overwrite\n"


# --- serving an export ------------------------------------------------------------------------------------


def test_a_served_export_translates_as_pytorch_and_shows_no_attention(translators, ct2_exports):
    (served,) = load_models([str(ct2_exports["char"])], device="cpu")
    assert (served.name, served.source, served.target, served.has_attention) == ("char", "en", "fr", False)
    texts = [*SENTENCES, *HELD_OUT[:6]]
    pytorch = translators["char"]
    # LibreTranslate's requests get the server's beam and length penalty (Argos Translate's here).
    with TestClient(create_app([served], limits=Limits(beam=4, length_penalty=0.2))) as client:
        own = client.post("/api/translate", json={"texts": texts, "source": "en", "target": "fr"})
        libre = client.post("/translate", json={"q": texts, "source": "en", "target": "fr"})
        attention = client.post("/api/attention", json={"text": HELD_OUT[0], "source": "en", "target": "fr"})
        health = client.get("/health").json()
    assert own.status_code == libre.status_code == 200
    assert own.json()["translations"] == pytorch.translate(texts)
    assert libre.json()["translatedText"] == pytorch.translate(texts, beam=4, length_penalty=0.2)
    assert attention.status_code == 409
    assert "model 'char' has no attention weights to show" in attention.json()["detail"]
    (model,) = health["models"]
    assert (model["name"], model["source"], model["target"], model["attention"], model["device"]) == (
        "char", "en", "fr", False, "cpu")
    assert model["memory_mb"] == round((ct2_exports["char"] / "model.bin").stat().st_size / 2**20, 2)


def test_a_directory_of_models_skips_an_incomplete_export(ct2_exports, tmp_path, caplog):
    root = tmp_path / "models"
    shutil.copytree(ct2_exports["char"], root / "en-fr")
    (root / "half").mkdir()  # an export that stopped before its model.bin
    shutil.copyfile(ct2_exports["char"] / ckpt.CT2_CONFIG_FILE, root / "half" / ckpt.CT2_CONFIG_FILE)
    with caplog.at_level(logging.WARNING, logger="charmt"):
        assert find_models([str(root)]) == [(root / "en-fr", ("en", "fr"))]
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping {root / 'half'}: an incomplete CTranslate2 export (no model.bin)"]
    (served,) = load_models([str(root)], device="cpu")
    assert served.translator.engine.name == "ct2" and served.name == "en-fr"


# --- Argos Translate packages -----------------------------------------------------------------------------

FOLDER = "translate-en_fr-1_0"
PACKAGE_FILES = {f"{FOLDER}/{name}" for name in ("metadata.json", "sentencepiece.model", "README.md", "minisbd/",
                                                 "minisbd/en.onnx", "model/")}


@pytest.fixture(scope="module")
def packages(models, tmp_path_factory) -> dict[str, Path]:
    """{"char": folder, "subword": folder}: each model's float32 package, written and unzipped."""
    root = tmp_path_factory.mktemp("argos")
    folders = {}
    for units, directory in models.items():
        package = export_argos(directory, root / f"{units}.argosmodel", quantization="float32")
        with zipfile.ZipFile(package) as archive:
            archive.extractall(root / units)
        folders[units] = root / units / FOLDER
    return folders


@pytest.mark.parametrize("units", UNITS)
def test_a_package_is_one_folder_of_what_argos_reads(models, packages, units):
    package = packages[units].parent.parent / f"{units}.argosmodel"
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
    model_files = CT2_FILES | VOCABULARY_FILES[units]
    assert names == PACKAGE_FILES | {f"{FOLDER}/model/{name}" for name in model_files}
    assert json.loads((packages[units] / "metadata.json").read_text(encoding="utf-8")) == {
        "package_version": "1.0", "argos_version": "1.11", "type": "translate", "from_code": "en",
        "from_name": "English", "to_code": "fr", "to_name": "French", "code": FOLDER,
        "description": "charmt English → French Transformer"}
    readme = (packages[units] / "README.md").read_text(encoding="utf-8")
    assert readme.startswith((models[units] / ckpt.CARD_FILE).read_text(encoding="utf-8"))
    assert "## In this Argos Translate package" in readme and "(float32 weights)" in readme


@pytest.mark.parametrize("units", UNITS)
def test_a_packages_model_translates_as_the_model(translators, packages, units):
    packaged = Translator.load(packages[units] / "model")
    assert packaged.engine.name == "ct2"
    inputs = HELD_OUT[:100]
    # As Argos Translate decodes: beam 4, length penalty 0.2.
    expected = translators[units].translate(inputs, beam=4, length_penalty=0.2, warn=False)
    assert _same(packaged.translate(inputs, beam=4, length_penalty=0.2, warn=False), expected) >= 0.99 * len(inputs)


def test_a_subword_package_cuts_text_with_the_models_own_sentencepiece_model(models, packages):
    assert (packages["subword"] / "sentencepiece.model").read_bytes() == (
        models["subword"] / ckpt.SUBWORD_FILE).read_bytes()


# Texts whose characters charmt cleans first: composed and decomposed accents, typographic spaces (U+00A0, U+202F,
# U+3000), tabs, newlines and repeated spaces, characters the model does not know.
TEXTS = ["Le café est là.", "Le cafe\u0301 est la\u0300.", "I\u00a0am cold\u202f!", "Go\u3000now.",
         "He\truns.\t\tShe  walks.", "  Go on \n now.\u2028  ", "Snow ☃ and Ω!", "Œufs, sœurs, À bientôt.", ""]


def _argos_ids(processor, info: ckpt.ModelInfo, text: str) -> list[int]:
    """The ids CTranslate2 gives the pieces SentencePiece cuts `text` into (a piece it does not know: <unk>)."""
    index = {piece: i for i, piece in enumerate(piece_strings(info.source_vocab))}
    return [index.get(piece, UNK_ID) for piece in processor.encode(text, out_type=str)]


def test_a_character_packages_sentencepiece_model_cuts_text_into_charmts_characters(translators, packages):
    import sentencepiece as spm

    translator = translators["char"]
    info = translator.info
    assert "é" in info.source_vocab.chars and "É" in info.target_vocab.chars
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto((packages["char"] / "sentencepiece.model").read_bytes())
    for text in TEXTS:
        assert _argos_ids(processor, info, text) == info.source_vocab.encode(translator._clean(text)), text
    # A model trained with canonical spaces cleans its inputs alike, and its package cuts them alike.
    assert info.selection["canonical_spaces"] is False
    canonical = replace(info, selection={**info.selection, "canonical_spaces": True})
    cleaning = Translator(None, canonical, engine=translator.engine)
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(sentencepiece_model(canonical))
    for text in TEXTS:
        assert _argos_ids(processor, info, text) == info.source_vocab.encode(cleaning._clean(text)), text
    # Where SentencePiece's own rules differ (known; not the package's to change): it gives a run of unknown
    # characters as one piece, one <unk> where charmt reads one per character, and reads a "▁" in a text as a space
    # (for charmt, an unknown character).
    assert processor.encode("☃☃ a▁b", out_type=str) == ["☃☃", "▁", "a", "▁", "b"]
    assert [info.source_vocab.encode(text) for text in ("☃☃", "▁")] == [[UNK_ID, UNK_ID], [UNK_ID]]


def _sentences(splitter: bytes, paragraphs: list[str]) -> list[list[str]]:
    """The sentences MiniSBD would cut `paragraphs` into with `splitter` (run as one batch, padded)."""
    import onnx
    import onnxruntime

    props = {p.key: p.value for p in onnx.load_from_string(splitter).metadata_props}
    unit_ids = json.loads(props["vocab"])["_unit2id"]
    longest = max(len(p) for p in paragraphs)
    units = np.zeros((len(paragraphs), longest), dtype=np.int64)  # 0: <PAD>
    for row, paragraph in enumerate(paragraphs):
        units[row, : len(paragraph)] = [unit_ids.get(c, unit_ids["<UNK>"]) for c in paragraph]
    session = onnxruntime.InferenceSession(splitter, providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {"units": units, "features": np.zeros((*units.shape, 0), dtype=np.float32)})
    assert scores.shape == (*units.shape, 3)
    found = []
    for paragraph, labels in zip(paragraphs, scores.argmax(axis=2)):
        start, sentences = 0, []
        for end in np.flatnonzero(labels[: len(paragraph)] == 2):
            sentences.append(paragraph[start : end + 1].strip())
            start = end + 1
        found.append(sentences + ([paragraph[start:].strip()] if paragraph[start:].strip() else []))
    return found


SPLITS = [
    ("Tom is here. Mary is not.", ["Tom is here.", "Mary is not."]),
    ("We saw e.g. this one.", ["We saw e.g. this one."]),
    ('He said "Go." Then he left.', ['He said "Go."', "Then he left."]),
    ("Is it (really?) Yes!", ["Is it (really?)", "Yes!"]),
    ("Really?! Yes… Fine", ["Really?!", "Yes…", "Fine"]),
    ("It costs 3.50 euros. Ok.", ["It costs 3.50 euros.", "Ok."]),
    ("我很好。你呢？好」。", ["我很好。", "你呢？", "好」。"]),
    ("「好。」他说。", ["「好。」", "他说。"]),
]


def test_a_packages_sentence_splitter_ends_sentences_at_their_punctuation(packages):
    import onnx

    splitter = (packages["char"] / "minisbd" / "en.onnx").read_bytes()
    paragraphs = [paragraph for paragraph, _ in SPLITS]
    assert _sentences(splitter, paragraphs) == [sentences for _, sentences in SPLITS]
    assert [_sentences(splitter, [p])[0] for p in paragraphs] == [sentences for _, sentences in SPLITS]  # unpadded
    props = {p.key: p.value for p in onnx.load_from_string(splitter).metadata_props}
    assert set(props) == {"lang_code", "config", "vocab", "lexicon"}
    assert props["lang_code"] == "en" and props["lexicon"] == "null"
    vocab = json.loads(props["vocab"])
    assert vocab["lang"] == "en" and vocab["_id2unit"][:3] == ["<PAD>", "<UNK>", " "]
    assert json.loads(props["config"])["max_seqlen"] == 1000
    # The subword package's knows the lower-case letters its model's pieces hold.
    subword = sentence_splitter("en", ckpt.load_info(packages["subword"] / "model").source_vocab)
    assert _sentences(subword, paragraphs[:2]) == [SPLITS[0][1], SPLITS[1][1]]


def test_package_refusals(models, tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError) as err:
        export_argos(models["subword"], tmp_path / "en-fr.zip")
    assert str(err.value) == ("an Argos Translate package is a .argosmodel file (argostranslate installs no other), "
                              "got en-fr.zip")
    existing = tmp_path / "en-fr.argosmodel"
    existing.write_bytes(b"earlier")
    with pytest.raises(ConfigError) as err:
        export_argos(models["subword"], existing)
    assert str(err.value) == f"{existing} exists; choose another name or add --overwrite"
    assert existing.read_bytes() == b"earlier"
    export_argos(models["subword"], existing, overwrite=True)
    assert zipfile.is_zipfile(existing)
    with pytest.raises(ConfigError) as err:  # trained on pairs.txt: no language codes
        export_argos(tiny_model_dir, tmp_path / "tiny.argosmodel")
    assert str(err.value) == (f"{tiny_model_dir} does not say which languages it translates (its training file's name "
                              "did not say them), and an Argos package must: train it with --source-lang and "
                              "--target-lang")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["en-fr.argosmodel"]


def test_a_character_package_warns_that_argos_joins_its_sentences_without_spaces(models, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="charmt"):
        export_argos(models["char"], tmp_path / "char.argosmodel")
    assert [r.getMessage() for r in caplog.records] == [
        f"{models['char']} translates characters: Argos Translate and LibreTranslate will join the sentences of a "
        "paragraph without a space between them (subword models, --units subword, do not have this problem)"]
