"""charmt as a guest in someone else's process, and on machines it cannot fully use.

The library changes no logging configuration, environment variable, thread count, RNG state, umask or backend
flag of its host; a process group `train()` starts, it ends. A hardware request the machine cannot meet fails
before anything is written, in one line; a run that fails before its first checkpoint leaves nothing behind;
errors about the user's setup are one line with a remedy, and only real bugs show a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo  # noqa: F401  (PyTorch sets TORCHINDUCTOR_CACHE_DIR when this is first imported, as any
import torch.distributed as dist  # optimizer does; imported here so that only charmt's own doings are compared)

import charmt.training
from charmt import checkpoint as ckpt
from charmt.cli import main
from charmt.config import updated
from charmt.decode import Translator
from charmt.errors import explain_machine_error
from charmt.families.lstm import Seq2Seq
from charmt.training import _process_group, train

from conftest import TINY_MODEL, TINY_SELECTION, TINY_TRAIN

FAST = updated(TINY_TRAIN, epochs=1, eval_sentences=5)
FLAGS = ["--preset", "tiny", "--hidden-size", "16", "--embedding-size", "8", "--epochs", "1", "--device", "cpu",
         "--eval-sentences", "5"]


def _process_settings() -> dict:
    """Everything a library call must leave as it found it."""
    root, charmt_logger = logging.getLogger(), logging.getLogger("charmt")
    umask = os.umask(0o022)
    os.umask(umask)
    return {
        "root handlers": list(root.handlers), "root level": root.level,
        "charmt handlers": list(charmt_logger.handlers), "charmt level": charmt_logger.level,
        "charmt propagate": charmt_logger.propagate, "environment": dict(os.environ),
        "threads": torch.get_num_threads(), "rng": torch.get_rng_state(), "umask": umask,
        "mkldnn": torch.backends.mkldnn.enabled, "process group": dist.is_available() and dist.is_initialized(),
    }


def _assert_same_settings(before: dict, after: dict) -> None:
    changed = [k for k in before if not (torch.equal(before[k], after[k]) if k == "rng" else before[k] == after[k])]
    assert not changed, f"the call changed the process's {changed}"


def test_train_and_translate_leave_the_process_as_they_found_it(pair_file, tmp_path):
    torch.manual_seed(1234)  # any state: it must come back
    before = _process_settings()
    config = updated(FAST, threads=1 if torch.get_num_threads() > 1 else 2)  # a thread count other than ours
    train(pair_file, tmp_path / "m", model_config=TINY_MODEL, train_config=config, selection=TINY_SELECTION)
    Translator.load(tmp_path / "m", device="cpu").translate(["Hello.", "I am cold."], beam=2)
    _assert_same_settings(before, _process_settings())


def test_the_command_leaves_the_host_process_logging_alone(pair_file, tmp_path, capsys):
    before = _process_settings()
    assert main(["train", str(pair_file), "--out", str(tmp_path / "m"), *FLAGS]) == 0
    assert main(["translate", str(tmp_path / "m"), "Ω?"]) == 0
    _assert_same_settings({k: v for k, v in before.items() if k not in ("rng", "threads")},
                          {k: v for k, v in _process_settings().items() if k not in ("rng", "threads")})
    err = capsys.readouterr().err
    assert err.count("unknown character") == 1  # printed once, by the command's own handler
    logging.getLogger("charmt").warning("after the command")  # no handler left bound to a closed stream
    assert "Logging error" not in capsys.readouterr().err


def test_importing_charmt_sets_no_environment_variable():
    code = ("import os, json; before = dict(os.environ); import charmt; charmt.Translator; charmt.train; "
            "print(json.dumps(sorted(set(os.environ.items()) ^ set(before.items()))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


def test_files_follow_the_umask_and_the_umask_stays(pair_file, tmp_path):
    previous = os.umask(0o027)
    try:
        train(pair_file, tmp_path / "m", model_config=TINY_MODEL, train_config=FAST, selection=TINY_SELECTION)
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    assert set(modes.values()) == {0o640}, modes


# --- hardware gaps and early failures ---------------------------------------------------------------------


def test_bf16_on_a_cpu_without_bf16_fails_in_one_line_and_writes_nothing(pair_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(charmt.training, "cpu_runs_bf16_lstm", lambda: False)  # the missing feature, simulated
    out = tmp_path / "m"
    assert main(["train", str(pair_file), "--out", str(out), "--precision", "bf16", *FLAGS]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["charmt: error: --precision bf16: this CPU cannot run PyTorch's bf16 kernels "
                                "(oneDNN has them only on CPUs with AVX-512); use --precision fp32, or auto (bf16 "
                                "only where the hardware computes it natively)"]
    assert not out.exists()


def _fail_in_first_step(monkeypatch, error: Exception) -> None:
    def forward(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(Seq2Seq, "forward", forward)


def test_a_machine_error_in_the_first_step_is_one_line_and_the_rerun_works(pair_file, tmp_path, capsys,
                                                                          monkeypatch):
    out = tmp_path / "m"
    with monkeypatch.context() as patch:
        _fail_in_first_step(patch, RuntimeError("could not create a primitive descriptor for the LSTM forward "
                                                "propagation primitive. Run workload with ONEDNN_VERBOSE=all"))
        assert main(["train", str(pair_file), "--out", str(out), *FLAGS]) == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("charmt: error")] == [
        "charmt: error: this CPU cannot run that operation with oneDNN (could not create a primitive descriptor for "
        "the LSTM forward propagation primitive. Run workload with ONEDNN_VERBOSE=all): use --precision fp32"]
    assert not out.exists()  # nothing blocks the rerun
    assert main(["train", str(pair_file), "--out", str(out), *FLAGS]) == 0
    assert (out / ckpt.WEIGHTS_FILE).exists()


def test_a_config_left_by_a_run_killed_before_its_first_checkpoint_does_not_block(pair_file, tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / ckpt.CONFIG_FILE).write_text("{}")  # what an older charmt wrote before its first step
    assert main(["train", str(pair_file), "--out", str(out), *FLAGS]) == 0
    assert ckpt.load_info(out).preset == "tiny"


def test_a_bug_shows_its_traceback_and_asks_for_a_report(pair_file, tmp_path, capsys, monkeypatch):
    _fail_in_first_step(monkeypatch, ZeroDivisionError("division by zero"))
    assert main(["train", str(pair_file), "--out", str(tmp_path / "m"), *FLAGS]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError: division by zero" in err
    assert err.splitlines()[-1].startswith("charmt: internal error (ZeroDivisionError): this is a bug in charmt")


@pytest.mark.parametrize("switch", ["--debug", "CHARMT_DEBUG"])
def test_debug_shows_the_traceback_of_any_error(tmp_path, monkeypatch, switch):
    argv = ["translate", str(tmp_path / "missing"), "Hi."]
    if switch == "--debug":
        argv.insert(0, "--debug")
    else:
        monkeypatch.setenv("CHARMT_DEBUG", "1")
    with pytest.raises(charmt.errors.ModelFormatError, match="not a model directory"):
        main(argv)


@pytest.mark.parametrize(
    "error, message",
    [
        (AssertionError("Torch not compiled with CUDA enabled"), "this PyTorch has no CUDA support: use --device cpu"),
        (type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate 2.00 GiB"),
         "the GPU ran out of memory: lower --batch-size (or --beam), or use --device cpu"),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory"),
         "the machine ran out of memory"),
        (RuntimeError("CUDA error: no kernel image is available for execution on the device"),
         "CUDA failed (CUDA error: no kernel image is available for execution on the device): use --device cpu"),
        (RuntimeError("Found no NVIDIA driver on your system."), "CUDA failed (Found no NVIDIA driver"),
        (OSError(28, "No space left on device"), "the disk is full"),
    ],
)
def test_machine_errors_are_explained_with_a_remedy(error, message):
    assert str(explain_machine_error(error)).startswith(message)


@pytest.mark.parametrize("error", [ZeroDivisionError("x"), KeyError("model"), RuntimeError("shape mismatch")])
def test_other_errors_are_not_passed_off_as_machine_errors(error):
    assert explain_machine_error(error) is None


# --- multi-process training -------------------------------------------------------------------------------


@pytest.mark.parametrize("device, backend", [("cpu", "gloo"), ("cuda", "nccl")])
def test_the_process_group_backend_follows_the_device_used(monkeypatch, device, backend):
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, even with --device cpu
    monkeypatch.setattr(torch.cuda, "device", lambda device: __import__("contextlib").nullcontext())
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append(("destroy",)))
    with _process_group(torch.device(device)) as (rank, world, used):
        assert (rank, world, used.type) == (0, 2, device)
    assert calls == [("init", backend), ("destroy",)]


TORCHRUN_SCRIPT = """
import json, os, sys
import torch.distributed as dist
from charmt import train
from charmt.config import ModelConfig, SelectionConfig, TrainConfig
seen = {}
def callback(event, info):
    if event == "start":
        seen["backend"] = dist.get_backend()
train(sys.argv[1], sys.argv[2], model_config=ModelConfig(hidden_size=16, embedding_size=8),
      train_config=TrainConfig(epochs=1, batch_size=8, device="cpu", eval_sentences=5),
      selection=SelectionConfig(max_input_length=None, num_samples=None), preset="tiny", callback=callback)
seen["initialized after train"] = dist.is_initialized()
with open(os.path.join(sys.argv[3], "report" + os.environ["RANK"] + ".json"), "w") as f:
    json.dump(seen, f)
"""


@pytest.mark.slow
@pytest.mark.skipif(not (Path(sys.executable).parent / "torchrun").exists() or not dist.is_gloo_available(),
                    reason="needs torchrun and the gloo backend")
def test_train_under_torchrun_uses_gloo_on_the_cpu_and_ends_its_process_group(tmp_path, pair_file):
    script = tmp_path / "run.py"
    script.write_text(TORCHRUN_SCRIPT)
    done = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2",
                           str(script), str(pair_file), str(tmp_path / "m"), str(tmp_path)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    reports = [json.loads((tmp_path / f"report{rank}.json").read_text()) for rank in (0, 1)]
    assert all(report["initialized after train"] is False for report in reports)
    assert [r["backend"] for r in reports if "backend" in r] == ["gloo"]  # rank 0 reports "start" events
