"""The model directory: round trip, and every damaged or foreign file rejected with its name in the message."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from charmt.checkpoint import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    ModelInfo,
    atomic_write,
    load_info,
    load_model,
    save_model,
)
from charmt.config import ModelConfig
from charmt.decode import Translator
from charmt.errors import ModelFormatError
from charmt.families.lstm import Seq2Seq
from charmt.vocab import START_ID, Vocab

SOURCE_VOCAB = Vocab.build(["Go.", "Hi there!"])
TARGET_VOCAB = Vocab.build(["Va !", "Salut à toi !"])


def _info(**model_options) -> ModelInfo:
    config = ModelConfig(src_vocab_size=len(SOURCE_VOCAB), tgt_vocab_size=len(TARGET_VOCAB), hidden_size=8,
                         embedding_size=4, bidirectional=True, attention="luong", **model_options)
    return ModelInfo(model=config, source_vocab=SOURCE_VOCAB, target_vocab=TARGET_VOCAB, preset="custom",
                     max_source_length=9, max_target_length=13, selection={"seed": 42}, training={"epochs": 1})


@pytest.fixture
def model_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    info = _info()
    save_model(tmp_path / "model", Seq2Seq(info.model), info)
    return tmp_path / "model"


def _outputs(model: Seq2Seq) -> torch.Tensor:
    src = torch.tensor([SOURCE_VOCAB.encode("Hi there!"), SOURCE_VOCAB.encode("Go.") + [0] * 6])
    tgt = torch.tensor([[START_ID] + TARGET_VOCAB.encode("Salut")] * 2)
    with torch.no_grad():
        return model(src, torch.tensor([9, 3]), tgt)[0]


def test_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(3)
    info = _info(num_layers=2, encoder_hidden_size=5)
    model = Seq2Seq(info.model).eval()
    save_model(tmp_path / "m", model, info)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]  # no temporary left
    loaded, loaded_info = load_model(tmp_path / "m")
    assert loaded_info.to_json() == info.to_json()
    assert not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert torch.equal(_outputs(model), _outputs(loaded))


def test_trained_model_directory_loads_the_same_twice(tiny_model_dir):
    first, second = Translator.load(tiny_model_dir, "cpu"), Translator.load(tiny_model_dir, "cpu")
    sentences = ["She eats the bread.", "Good evening!"]
    assert first.translate(sentences) == second.translate(sentences)
    assert first.info.to_json() == second.info.to_json()


def _set(path: Path, obj) -> None:
    path.write_text(json.dumps(obj), encoding="utf-8")


def _config(directory: Path) -> dict:
    return json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))


def _edit_config(**changes):
    def edit(directory: Path) -> None:
        _set(directory / CONFIG_FILE, {**_config(directory), **changes})
    return edit


def _edit_model(**changes):
    def edit(directory: Path) -> None:
        config = _config(directory)
        _set(directory / CONFIG_FILE, {**config, "model": {**config["model"], **changes}})
    return edit


def _truncate(name: str, keep: float = 0.5):
    def edit(directory: Path) -> None:
        data = (directory / name).read_bytes()
        (directory / name).write_bytes(data[: int(len(data) * keep)])
    return edit


def _other_shape_weights(directory: Path) -> None:
    info = replace(_info(), model=replace(_info().model, hidden_size=16))
    save_model(directory, Seq2Seq(info.model), _info())  # config says 8, the weights are 16 wide


def _missing_weight(directory: Path) -> None:
    tensors = Seq2Seq(_info().model).state_dict()
    del tensors["decoder.output.bias"]
    save_file(tensors, directory / WEIGHTS_FILE)


@pytest.mark.parametrize(
    "damage, file, message",
    [
        (lambda d: (d / CONFIG_FILE).unlink(), CONFIG_FILE, "is missing: {dir} is not a charmt model directory"),
        (lambda d: (d / WEIGHTS_FILE).unlink(), WEIGHTS_FILE, "is missing"),
        (_truncate(WEIGHTS_FILE), WEIGHTS_FILE, "is truncated or not a safetensors file"),
        (_truncate(WEIGHTS_FILE, 0.001), WEIGHTS_FILE, "is truncated or not a safetensors file"),
        (_truncate(CONFIG_FILE), CONFIG_FILE, "is truncated or not JSON"),
        (lambda d: (d / CONFIG_FILE).write_bytes(b"\xff\xfe{\x00"), CONFIG_FILE, "is truncated or not JSON"),
        (lambda d: _set(d / CONFIG_FILE, {"architectures": ["BertModel"]}), CONFIG_FILE,
         'is not a charmt model config (no "format": "charmt-model")'),
        (lambda d: _set(d / CONFIG_FILE, [1, 2]), CONFIG_FILE, "is not a charmt model config"),
        (_edit_config(format_version=FORMAT_VERSION + 1), CONFIG_FILE,
         f"has format version {FORMAT_VERSION + 1}, newer than this charmt reads ({FORMAT_VERSION}); upgrade charmt"),
        (_edit_config(format_version="1"), CONFIG_FILE, "has no valid format_version ('1'); was it written by charmt?"),
        (_edit_config(model=None), CONFIG_FILE, "is malformed (TypeError"),
        (_edit_model(colour="red"), CONFIG_FILE, "is malformed (TypeError"),
        (_edit_model(attention="bahdanau"), CONFIG_FILE, "attention must be one of"),
        (_edit_config(source_vocab=["a", "b"]), CONFIG_FILE, "is malformed (ValueError"),
        (_edit_model(src_vocab_size=99), CONFIG_FILE, "vocabulary sizes do not match the model's"),
        (_other_shape_weights, WEIGHTS_FILE, "does not match config.json: wrong shape"),
        (_missing_weight, WEIGHTS_FILE, "does not match config.json: missing ['decoder.output.bias']"),
    ],
    ids=["no-config", "no-weights", "truncated-weights", "tiny-weights", "truncated-config", "binary-config",
         "foreign-json", "json-list", "newer-version", "version-string", "no-model", "unknown-option", "bad-option",
         "bad-vocab", "vocab-size", "weights-shape", "weights-missing"],
)
def test_damaged_model_directories_raise_model_format_error_naming_the_file(model_dir, damage, file, message):
    damage(model_dir)
    with pytest.raises(ModelFormatError) as err:
        load_model(model_dir)
    text = str(err.value)
    assert text.startswith(str(model_dir / file)), text
    assert message.format(dir=model_dir) in text


def test_not_a_directory(tmp_path):
    with pytest.raises(ModelFormatError, match="is not a model directory \\(no such directory\\)"):
        load_info(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelFormatError, match="is not a model directory"):
        load_info(tmp_path / "file")


class _Exploit:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_pickle_named_model_safetensors_is_rejected_and_never_run(model_dir, tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"encoder.lstm.weight_ih_l0": _Exploit(marker)}
    if writer == "pickle":
        (model_dir / WEIGHTS_FILE).write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, model_dir / WEIGHTS_FILE)
    # The payload is live: plain unpickling would run it (checked here on a copy, then removed).
    pickle.loads(pickle.dumps(_Exploit(marker)))
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ModelFormatError, match="model.safetensors is truncated or not a safetensors file"):
        load_model(model_dir)
    with pytest.raises(ModelFormatError):
        Translator.load(model_dir, "cpu")
    assert not marker.exists()


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
