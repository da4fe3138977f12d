"""Importing the Keras example's model: a small model built, trained and saved the example's way in Keras 3
(torch backend) must give the same per-step probabilities and the same greedy translations in charmt.

The data preparation and `decode_sequence` below are ported from the example notebook (cells 6, 9, 23, 24)
so that charmt's selection and vocabulary are checked against the example's own code, not against themselves.
"""

from __future__ import annotations

import os
import random
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from charmt import checkpoint as ckpt
from charmt.cli import main
from charmt.config import SelectionConfig
from charmt.decode import Translator
from charmt.errors import ConfigError, ModelFormatError
from charmt.keras_import import import_keras

from conftest import write_pairs

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")  # keras's own numpy 2 warnings

LATENT = 16
MAX_INPUT_LENGTH = 15
SUBJECTS = [("I see", "Je vois"), ("You see", "Tu vois"), ("We see", "Nous voyons"), ("I like", "J'aime"),
            ("He has", "Il a"), ("She eats", "Elle mange")]
OBJECTS = [("a cat.", "un chat."), ("the dog.", "le chien."), ("a pear!", "une poire !"), ("bread.", "du pain."),
           ("a key.", "une clé."), ("it.", "ça.")]


def example_pairs() -> list[str]:
    """3-column lines as in fra.txt, plus what the example skips: a too-long source, a duplicate, a blank."""
    lines = [f"{s} {o}\t{ts} {to}\tCC-BY 2.0 (France) #{i}"
             for i, ((s, ts), (o, to)) in enumerate((s, o) for s in SUBJECTS for o in OBJECTS)]
    lines += ["I see a cat!\tJe vois un chat !\tCC-BY", "She eats the big bread.\tElle mange le gros pain.\tCC-BY", ""]
    return lines


def example_tables(path: Path, num_samples: int):
    """The example's cell 6, verbatim in substance."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    random.seed(42)
    random.shuffle(lines)
    input_texts, target_texts, input_characters, target_characters, seen = [], [], set(), set(), set()
    for line in lines:
        try:
            input_text, target_text, _ = line.split("\t")
        except ValueError:
            continue
        if len(input_text) > MAX_INPUT_LENGTH:
            continue
        unq = re.sub(r"[\W_]+", "", input_text)
        if unq in seen:
            continue
        seen.add(unq)
        target_text = "\t" + target_text + "\n"
        input_texts.append(input_text)
        target_texts.append(target_text)
        input_characters.update(input_text)
        target_characters.update(target_text)
        if len(input_texts) >= num_samples:
            break
    return input_texts, target_texts, sorted(input_characters), sorted(target_characters)


def one_hot(texts: list[str], chars: list[str], length: int) -> np.ndarray:
    """The example's cell 9 encoding: one-hot, padded with the space character."""
    index = {c: i for i, c in enumerate(chars)}
    out = np.zeros((len(texts), length, len(chars)), dtype="float32")
    for i, text in enumerate(texts):
        for t, char in enumerate(text):
            out[i, t, index[char]] = 1.0
        out[i, len(text):, index[" "]] = 1.0
    return out


@pytest.fixture(scope="module")
def keras_example(tmp_path_factory):
    """The example's model, trained for 30 (full-batch) epochs on the pairs above and saved as s2s_model.keras."""
    root = tmp_path_factory.mktemp("keras")
    os.environ["KERAS_BACKEND"] = "torch"
    os.environ.setdefault("KERAS_HOME", str(root / "keras-home"))  # keras writes its settings file there
    try:
        import keras
    except ImportError as err:
        pytest.skip(f"keras (Keras 3) cannot be imported ({err}): pip install keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras was already imported with another backend than torch")
    from keras.layers import LSTM, Dense, Input

    data = write_pairs(root / "pairs.txt", example_pairs())
    inputs, targets, input_chars, target_chars = example_tables(data, num_samples=10_000)
    enc_len, dec_len = max(map(len, inputs)), max(map(len, targets))
    encoder_input_data = one_hot(inputs, input_chars, enc_len)
    decoder_input_data = one_hot(targets, target_chars, dec_len)
    decoder_target_data = one_hot([t[1:] for t in targets], target_chars, dec_len)

    keras.utils.set_random_seed(0)
    encoder_inputs = Input(shape=(None, len(input_chars)))
    _, state_h, state_c = LSTM(LATENT, return_state=True)(encoder_inputs)
    decoder_inputs = Input(shape=(None, len(target_chars)))
    decoder_outputs, _, _ = LSTM(LATENT, return_sequences=True, return_state=True)(
        decoder_inputs, initial_state=[state_h, state_c])
    decoder_outputs = Dense(len(target_chars), activation="softmax")(decoder_outputs)
    model = keras.Model([encoder_inputs, decoder_inputs], decoder_outputs)
    # Full-batch Adam learns in a few seconds what the example's rmsprop would take minutes for.
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.05), loss="categorical_crossentropy")
    model.fit([encoder_input_data, decoder_input_data], decoder_target_data, batch_size=len(inputs), epochs=30,
              verbose=0)
    model.save(root / "s2s_model.keras")

    # The example's cell 23: inference models from the reloaded model.
    model = keras.models.load_model(root / "s2s_model.keras")
    encoder_model = keras.Model(model.input[0], list(model.layers[2].output[1:]))
    state_in = [keras.Input(shape=(LATENT,)), keras.Input(shape=(LATENT,))]
    out, h, c = model.layers[3](model.input[1], initial_state=state_in)
    decoder_model = keras.Model([model.input[1]] + state_in, [model.layers[4](out), h, c])
    return {
        "root": root, "data": data, "path": root / "s2s_model.keras", "keras": keras, "model": model,
        "encoder_model": encoder_model, "decoder_model": decoder_model, "inputs": inputs, "targets": targets,
        "input_chars": input_chars, "target_chars": target_chars, "max_decoder_seq_length": dec_len,
        "encoder_input_data": encoder_input_data, "decoder_input_data": decoder_input_data,
    }


@pytest.fixture(scope="module")
def imported(keras_example):
    out = keras_example["root"] / "imported"
    import_keras(keras_example["path"], out, data=keras_example["data"])
    return out


def decode_sequence(ex, input_seq) -> str:
    """The example's cell 24, calling the models directly instead of through .predict (same numbers, faster)."""
    to_numpy = ex["keras"].ops.convert_to_numpy
    target_index = {c: i for i, c in enumerate(ex["target_chars"])}
    states_value = [to_numpy(s) for s in ex["encoder_model"](input_seq)]
    target_seq = np.zeros((1, 1, len(target_index)), dtype="float32")
    target_seq[0, 0, target_index["\t"]] = 1.0
    decoded_sentence = ""
    while True:
        output_tokens, h, c = (to_numpy(x) for x in ex["decoder_model"]([target_seq] + states_value))
        sampled_token_index = int(np.argmax(output_tokens[0, -1, :]))
        sampled_char = ex["target_chars"][sampled_token_index]
        decoded_sentence += sampled_char
        if sampled_char == "\n" or len(decoded_sentence) > ex["max_decoder_seq_length"]:
            return decoded_sentence
        target_seq = np.zeros((1, 1, len(target_index)), dtype="float32")
        target_seq[0, 0, sampled_token_index] = 1.0
        states_value = [h, c]


def test_vocabulary_and_settings_match_the_example(keras_example, imported):
    info = ckpt.load_info(imported)
    assert info.source_vocab.chars == [c for c in keras_example["input_chars"] if c not in "\t\n"]
    assert info.target_vocab.chars == [c for c in keras_example["target_chars"] if c not in "\t\n"]
    assert info.keras_compat == {"source_length": max(map(len, keras_example["inputs"])), "pad_char": " ",
                                 "max_decode_length": keras_example["max_decoder_seq_length"]}
    assert info.model.embedding_size == 0 and info.model.attention == "none" and info.model.hidden_size == LATENT
    split = ckpt.read_json(imported / ckpt.SPLIT_FILE)  # Keras's validation_split=0.2: the last 20%
    assert len(split["validation"]) == len(keras_example["inputs"]) - int(len(keras_example["inputs"]) * 0.8)


def test_teacher_forced_probabilities_match_keras(keras_example, imported):
    ex = keras_example
    expected = ex["keras"].ops.convert_to_numpy(ex["model"]([ex["encoder_input_data"], ex["decoder_input_data"]]))
    translator = Translator.load(imported, device="cpu")
    src_ids = [translator.source_vocab.index[c] for c in ex["input_chars"]]
    tgt_ids = [translator.target_vocab.index[c] for c in ex["target_chars"]]
    src = torch.tensor(np.array(src_ids)[ex["encoder_input_data"].argmax(-1)])
    tgt_in = torch.tensor(np.array(tgt_ids)[ex["decoder_input_data"].argmax(-1)])
    with torch.inference_mode():
        logits, _ = translator.model(src, torch.full((len(src),), src.shape[1]), tgt_in)
    probs = torch.softmax(logits, dim=-1)[:, :, tgt_ids].numpy()  # in the example's column order
    assert probs.shape == expected.shape
    assert float(np.abs(probs - expected).max()) <= 1e-5
    assert float(torch.softmax(logits, -1)[:, :, :2].max()) == 0.0  # <pad> and <unk> are never predicted


def test_greedy_translations_match_decode_sequence(keras_example, imported):
    ex = keras_example
    translator = Translator.load(imported, device="cpu")
    sentences = ex["inputs"]  # all 33 selected pairs
    expected = [decode_sequence(ex, ex["encoder_input_data"][i : i + 1]) for i in range(len(sentences))]
    assert any(e.endswith("\n") for e in expected), "the tiny model should learn to stop"
    assert [e.removesuffix("\n") for e in expected] == translator.translate(sentences)


def test_tab_output_and_length_limit_as_in_the_example(keras_example, tmp_path):
    """A model whose argmax is always the start tab: the example writes it out until it passes the length limit."""
    ex = keras_example
    dense = ex["model"].layers[4]
    kernel, bias = dense.get_weights()
    boosted = bias.copy()
    boosted[ex["target_chars"].index("\t")] += 100.0
    dense.set_weights([kernel, boosted])
    try:
        ex["model"].save(tmp_path / "tab.keras")
        expected = decode_sequence(ex, ex["encoder_input_data"][:1])
    finally:
        dense.set_weights([kernel, bias])
    assert expected == "\t" * (ex["max_decoder_seq_length"] + 1)
    import_keras(tmp_path / "tab.keras", tmp_path / "m", data=ex["data"])
    assert Translator.load(tmp_path / "m", device="cpu").translate(ex["inputs"][:1]) == [expected]


def test_vocabulary_size_mismatch_is_refused(keras_example, tmp_path):
    with pytest.raises(ConfigError) as err:  # fewer samples: fewer characters than the model was trained on
        import_keras(keras_example["path"], tmp_path / "m", data=keras_example["data"],
                     selection=SelectionConfig(num_samples=3))
    assert "the Keras model's encoder has" in str(err.value) and "too few" in str(err.value)
    assert "--num-samples (3)" in str(err.value)
    chars = "".join(keras_example["input_chars"])
    with pytest.raises(ConfigError, match=r"decoder has \d+ output characters, but --source-chars/--target-chars "
                                          r"has \d+ \(1 too many\)"):
        import_keras(keras_example["path"], tmp_path / "m", source_chars=chars,
                     target_chars="".join(keras_example["target_chars"]) + "\u00e6", max_decode_length=30)
    assert not (tmp_path / "m").exists()


def test_explicit_characters_and_cli(keras_example, tmp_path, capsys):
    ex = keras_example
    source = "".join(ex["input_chars"]).replace("\\", "\\\\")
    target = "".join(ex["target_chars"]).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    out = tmp_path / "m"
    args = ["import-keras", str(ex["path"]), "--out", str(out), "--source-chars", source, "--target-chars", target,
            "--source-length", str(max(map(len, ex["inputs"]))),
            "--max-decode-length", str(ex["max_decoder_seq_length"])]
    assert main(args) == 0
    assert Translator.load(out, device="cpu").translate(ex["inputs"][:5]) == \
        [decode_sequence(ex, ex["encoder_input_data"][i : i + 1]).removesuffix("\n") for i in range(5)]
    assert main(args) == 1  # the directory holds a model now
    assert "already holds a model; pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    (b"not a zip", "is not a Keras 3 .keras file (not a zip archive, or a truncated one)"),
    (b"\x89HDF\r\n\x1a\n", "but a legacy HDF5 model; load it in Keras 3 and save it again"),
    ("zip-without-weights", "the archive lacks model.weights.h5"),
])
def test_not_a_keras_file(tmp_path, content, message):
    path = tmp_path / "s2s_model.keras"
    if content == "zip-without-weights":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("config.json", "{}")
            archive.writestr("metadata.json", "{}")
    else:
        path.write_bytes(content)
    data = write_pairs(tmp_path / "pairs.txt", example_pairs())
    with pytest.raises(ModelFormatError, match=re.escape(message)):
        import_keras(path, tmp_path / "m", data=data)
    with pytest.raises(ModelFormatError, match="no such file"):
        import_keras(tmp_path / "missing.keras", tmp_path / "m", data=data)
