"""Crash-safe checkpoints and resume: a run killed with SIGKILL mid-epoch and resumed ends with exactly the
weights, optimizer state and log of a run that was never interrupted; a failed write never damages the
previous file; resume refuses a different data file or a directory without a checkpoint.

The subprocesses run with `--threads 1` so that CPU kernels reduce in one fixed order: bitwise equality is
the promise for a single-threaded CPU run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from charmt import checkpoint as ckpt
from charmt.cli import main
from charmt.config import TrainConfig
from charmt.errors import ModelFormatError
from charmt.training import make_optimizer, train

from conftest import TINY_MODEL, TINY_SELECTION, TINY_TRAIN, write_pairs

TRAIN_FLAGS = ["--preset", "tiny", "--hidden-size", "32", "--embedding-size", "16", "--epochs", "4",
               "--batch-size", "8", "--seed", "3", "--device", "cpu", "--threads", "1", "--eval-sentences", "20",
               "--dropout", "0.1", "--lr-schedule", "plateau",  # so the RNG and the best-epoch tracking matter
               "--checkpoint-minutes", "0"]  # 0: a checkpoint after every step, so the kill point is exact
STOP_AT = (3, 5)  # (epoch, step), 1-based: the child stops itself after this step, before its checkpoint

# Runs the real CLI, and SIGSTOPs itself when STOP_AT's step has been trained: the parent then sends SIGKILL to
# a stopped process, so the kill lands at the same place on every machine (no race with the training loop).
CHILD = """
import os, signal, sys
from charmt import cli
from charmt.progress import TrainingProgress
stop_at = tuple(map(int, os.environ["STOP_AT"].split(",")))
progress = TrainingProgress.__call__
def stopping(self, event, info):
    progress(self, event, info)
    if event == "step" and (info["epoch"], info["step"]) == stop_at:
        os.kill(os.getpid(), signal.SIGSTOP)
TrainingProgress.__call__ = stopping
sys.exit(cli.main(sys.argv[1:]))
"""
TIMEOUT = 120


def _charmt(*args: str) -> list[str]:
    return [sys.executable, "-m", "charmt", *args]


def _without_clock(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _log(path: Path) -> list[dict]:
    """log.jsonl without the wall-clock field."""
    return _without_clock([json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()])


def _train_state(path: Path) -> dict:
    """The checkpoint's training state without wall-clock times."""
    state = json.loads(ckpt.load_tensors(path, with_metadata=True)[1]["state"])
    return {**{k: v for k, v in state.items() if k != "elapsed"}, "history": _without_clock(state["history"])}


def _assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = ckpt.load_tensors(a), ckpt.load_tensors(b)
    assert sorted(ta) == sorted(tb)
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{a.name}: tensors differ after resume: {different[:5]}"


def _kill_when_stopped(proc: subprocess.Popen) -> None:
    """Wait (bounded) for the child to stop itself, then kill -9 it."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        pid, status = os.waitpid(proc.pid, os.WNOHANG | os.WUNTRACED)
        if pid and os.WIFSTOPPED(status):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(TIMEOUT)
            return
        if pid:  # it ended without reaching STOP_AT
            pytest.fail(f"training ended before step {STOP_AT} with status {status}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"training did not reach step {STOP_AT} within {TIMEOUT} s")


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, demo_lines):
    data = write_pairs(tmp_path / "pairs.txt", demo_lines[:150])
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    with open(tmp_path / "reference.err", "wb") as ref_err, open(tmp_path / "killed.err", "wb") as killed_err:
        ref = subprocess.Popen(_charmt("train", str(data), "--out", str(reference), *TRAIN_FLAGS),
                               stdout=subprocess.DEVNULL, stderr=ref_err)
        killed = subprocess.Popen(
            [sys.executable, "-c", CHILD, "train", str(data), "--out", str(resumed), *TRAIN_FLAGS],
            stdout=subprocess.DEVNULL, stderr=killed_err, env={**os.environ, "STOP_AT": "{},{}".format(*STOP_AT)},
        )
        _kill_when_stopped(killed)
        assert ref.wait(TIMEOUT) == 0, (tmp_path / "reference.err").read_text()
    assert killed.returncode == -signal.SIGKILL

    # What the kill left: a checkpoint in the middle of epoch 2 (the step being trained is lost), the best
    # model of epoch 1, and the log of epoch 1.
    state = _train_state(resumed / ckpt.CHECKPOINT_FILE)
    assert (state["epoch"] + 1, state["step_in_epoch"]) == (STOP_AT[0], STOP_AT[1] - 1)
    assert len(_log(resumed / ckpt.LOG_FILE)) == STOP_AT[0] - 1
    assert (resumed / ckpt.WEIGHTS_FILE).exists()

    # A kill during a write leaves atomic_write's temporary file behind (its cleanup never runs): plant one.
    stray = resumed / f".{ckpt.CHECKPOINT_FILE}.k1ll3d.tmp"
    stray.write_bytes(b"half a checkpoint")
    done = subprocess.run(_charmt("train", str(data), "--out", str(resumed), "--resume", "--device", "cpu"),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert f"resuming {resumed} at epoch {STOP_AT[0]}, step {STOP_AT[1] - 1}" in done.stderr
    assert not stray.exists()

    _assert_same_tensors(reference / ckpt.WEIGHTS_FILE, resumed / ckpt.WEIGHTS_FILE)
    _assert_same_tensors(reference / ckpt.CHECKPOINT_FILE, resumed / ckpt.CHECKPOINT_FILE)  # weights, optimizer, RNG
    assert _train_state(resumed / ckpt.CHECKPOINT_FILE) == _train_state(reference / ckpt.CHECKPOINT_FILE)
    assert _log(resumed / ckpt.LOG_FILE) == _log(reference / ckpt.LOG_FILE)
    for name in (ckpt.CONFIG_FILE, ckpt.SPLIT_FILE):
        assert (resumed / name).read_bytes() == (reference / name).read_bytes()


# --- a crash while writing ----------------------------------------------------------------------------------


class _Crash(Exception):
    pass


def _fail_replace(monkeypatch):
    def replace(src, dst):
        raise _Crash("os.replace")
    monkeypatch.setattr(ckpt.os, "replace", replace)


def _fail_fsync(monkeypatch):
    def fsync(fd):
        raise _Crash("fsync")
    monkeypatch.setattr(ckpt.os, "fsync", fsync)


def _fail_half_written(monkeypatch):
    """The write stops half way (as a full disk or Ctrl-C would stop it)."""
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise KeyboardInterrupt

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    monkeypatch.setattr(ckpt.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))


@pytest.mark.parametrize("fail", [_fail_replace, _fail_fsync, _fail_half_written],
                         ids=["rename fails", "fsync fails", "interrupted half way"])
def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, tiny_model_dir, monkeypatch, fail):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    model, info = ckpt.load_model(model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # different weights, so a partial write would show
    fail(monkeypatch)
    with pytest.raises((_Crash, KeyboardInterrupt)):
        ckpt.save_model(model_dir, model, info)
    with pytest.raises((_Crash, KeyboardInterrupt)):
        ckpt.save_tensors(model_dir / ckpt.CHECKPOINT_FILE, model.state_dict())
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before  # same files, same bytes, no temp file
    ckpt.load_model(model_dir)


# --- what resume refuses ---------------------------------------------------------------------------------------


def _training_data(model_dir: Path) -> Path:
    return model_dir.parent / "pairs.txt"  # where conftest's tiny_model_dir was trained from


def test_resume_refuses_another_data_file(tmp_path, tiny_model_dir, demo_lines, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    other = write_pairs(tmp_path / "other.txt", demo_lines[:149])
    assert main(["train", str(other), "--out", str(model_dir), "--resume", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("charmt: error: ")
    assert f"{other} is not the file {model_dir} was trained on (its sha256 differs)" in err
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before


def test_resume_accepts_the_same_data_at_another_path(tmp_path, tiny_model_dir, capsys):
    """The data file is recognised by its content, not its path; a finished run resumes to nothing to do."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    moved = shutil.copy(_training_data(tiny_model_dir), tmp_path / "moved.txt")
    assert main(["-q", "train", str(moved), "--out", str(model_dir), "--resume", "--device", "cpu"]) == 0
    assert "error" not in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before


def test_resume_refuses_options_that_would_change_the_stored_configuration(tmp_path, tiny_model_dir, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    data = _training_data(tiny_model_dir)
    args = ["train", str(data), "--out", str(model_dir), "--resume", "--device", "cpu", "--threads", "1"]
    assert main([*args, "--epochs", "9", "--layers", "2", "--shuffle-seed", "7"]) == 1
    assert capsys.readouterr().err == (
        "charmt: error: --resume continues with the configuration stored in the model directory; drop --layers, "
        "--epochs, --shuffle-seed (or start anew with --overwrite)\n")
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before


@pytest.mark.parametrize("setup", ["no directory", "empty directory", "model without checkpoint"])
def test_resume_refuses_without_checkpoint(tmp_path, tiny_model_dir, capsys, setup):
    model_dir = tmp_path / "model"
    if setup == "empty directory":
        model_dir.mkdir()
    elif setup == "model without checkpoint":
        shutil.copytree(tiny_model_dir, model_dir)
        (model_dir / ckpt.CHECKPOINT_FILE).unlink()
    data = _training_data(tiny_model_dir)
    assert main(["train", str(data), "--out", str(model_dir), "--resume", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err == (f"charmt: error: {model_dir} holds no resumable checkpoint ({ckpt.CHECKPOINT_FILE} is missing); "
                   "train again with --overwrite\n")


def test_resume_refuses_truncated_checkpoint(tmp_path, tiny_model_dir, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    path = model_dir / ckpt.CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:1000])
    assert main(["train", str(_training_data(tiny_model_dir)), "--out", str(model_dir), "--resume",
                 "--device", "cpu"]) == 1
    err = capsys.readouterr().err  # the data summary comes first: the checkpoint is read after the data
    assert err.splitlines()[-1].startswith(f"charmt: error: {path} is truncated or not a safetensors file")
    assert "Traceback" not in err


def test_checkpoint_without_training_state_is_refused(tmp_path, tiny_model_dir):
    """A weights-only file put in the checkpoint's place is named, not half-loaded."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    shutil.copy(model_dir / ckpt.WEIGHTS_FILE, model_dir / ckpt.CHECKPOINT_FILE)
    model, info = ckpt.load_model(model_dir)
    with pytest.raises(ModelFormatError, match="holds no training state"):
        optimizer = make_optimizer(model, TrainConfig(**info.training))
        ckpt.load_train_state(model_dir, model, optimizer, torch.device("cpu"))


# --- resuming a finished run ----------------------------------------------------------------------------------


@pytest.mark.parametrize("reason, options", [
    ("epochs", {"epochs": 2}),
    # A learning rate too small to change a greedy output: epoch 2 scores as epoch 1, so patience 1 stops there.
    ("early stopping", {"epochs": 5, "patience": 1, "learning_rate": 1e-12}),
    # 6 ms: spent within epoch 1's steps or its validation; either way the run ends after epoch 1.
    ("time budget", {"epochs": 0, "time_budget_minutes": 1e-4}),
])
def test_resume_of_a_finished_run_changes_nothing_and_says_why(tmp_path, demo_lines, capsys, reason, options):
    data = write_pairs(tmp_path / "pairs.txt", demo_lines[:150])
    model_dir = tmp_path / "model"
    first = train(data, model_dir, model_config=TINY_MODEL, train_config=replace(TINY_TRAIN, **options),
                  selection=TINY_SELECTION, preset="tiny")
    assert first.stopped_because == reason
    state = json.loads(ckpt.load_tensors(model_dir / ckpt.CHECKPOINT_FILE, with_metadata=True)[1]["state"])
    assert state["finished"] == reason
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    capsys.readouterr()
    assert main(["-q", "train", str(data), "--out", str(model_dir), "--resume", "--device", "cpu"]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"{model_dir} finished at epoch {first.epochs_run} ({reason}); nothing to resume — train with --overwrite "
        "to start anew")
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before
    again = train(data, model_dir, resume=True)
    assert (again.stopped_because, again.epochs_run) == (f"already finished ({reason})", first.epochs_run)
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before
