"""End to end: train a tiny model, translate in this process, then in a new `charmt translate` process, and the
same seed gives the same weights, through the library and through the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from charmt import checkpoint as ckpt
from charmt.cli import main
from charmt.config import ModelConfig, SelectionConfig, TrainConfig, preset_configs, updated
from charmt.decode import Translator
from charmt.training import train

from conftest import DEMO, write_pairs

# The installed console script; `python -m charmt` where the package is not installed with its scripts.
_SCRIPT = Path(sys.executable).parent / "charmt"
CHARMT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "charmt"]
MODEL = dict(hidden_size=16, embedding_size=8, bidirectional=True, attention="luong")
TRAINING = dict(epochs=2, batch_size=16, seed=7, device="cpu", eval_sentences=10)
SELECTION = dict(validation_fraction=0.15)
CLI_FLAGS = ["--preset", "tiny", "--hidden-size", "16", "--embedding-size", "8", "--epochs", "2",
             "--batch-size", "16", "--seed", "7", "--device", "cpu", "--eval-sentences", "10",
             "--validation-fraction", "0.15"]
SENTENCES = ["She eats the bread.", "", "Good evening!", "I see the ☃.", "   ", "He sees the bike. We have a big book.",
             "What time is it?"]


def _tiny_preset() -> tuple[ModelConfig, TrainConfig, SelectionConfig]:
    """The tiny preset with the options above: what CLI_FLAGS ask for."""
    model, training, selection = preset_configs("tiny")
    return updated(model, **MODEL), updated(training, **TRAINING), updated(selection, **SELECTION)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The pair file and two models trained from it with the same seed."""
    root = tmp_path_factory.mktemp("e2e")
    data = write_pairs(root / "pairs.txt", DEMO.read_text(encoding="utf-8").splitlines()[:80])
    model, training, selection = _tiny_preset()
    for name in ("a", "b"):
        train(data, root / name, model_config=model, train_config=training, selection=selection, preset="tiny")
    return data, root / "a", root / "b"


def _log_without_times(directory: Path) -> list[dict]:
    records = [json.loads(line) for line in (directory / ckpt.LOG_FILE).read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _assert_same_weights(first: Path, second: Path) -> None:
    for name in (ckpt.WEIGHTS_FILE, ckpt.CHECKPOINT_FILE):
        a, b = load_file(first / name), load_file(second / name)
        assert a.keys() == b.keys()
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{name}: {different[:5]} differ"


def test_seeded_training_twice_gives_identical_weights(runs):
    _, first, second = runs
    _assert_same_weights(first, second)
    assert _log_without_times(first) == _log_without_times(second)
    assert len(_log_without_times(first)) == 2


def test_the_command_line_trains_the_same_model_as_the_library(runs, tmp_path, capsys):
    data, first, _ = runs
    assert main(["-q", "train", str(data), "--out", str(tmp_path / "cli"), *CLI_FLAGS]) == 0
    capsys.readouterr()
    config, library = ckpt.read_json(tmp_path / "cli" / ckpt.CONFIG_FILE), ckpt.read_json(first / ckpt.CONFIG_FILE)
    assert (config["model"], config["training"], config["selection"]) == (
        library["model"], library["training"], library["selection"])
    _assert_same_weights(first, tmp_path / "cli")


def test_a_new_process_translates_exactly_as_after_training(runs):
    _, model_dir, _ = runs
    expected = Translator.load(model_dir, device="cpu").translate(SENTENCES)
    assert len(expected) == len(SENTENCES) and expected[1] == expected[4] == ""
    assert all(expected[i] for i in (0, 2, 3, 5, 6))
    # One thread, as in this process (tests/conftest.py), so both compute in the same order.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([*CHARMT, "-q", "translate", str(model_dir), "--device", "cpu"],
                         input="\n".join(SENTENCES) + "\n", capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n") == [*expected, ""]
    assert "'☃'" in run.stderr  # the unknown-character warning, on stderr only
