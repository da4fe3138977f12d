"""Multi-process training under torchrun (gloo on the CPU): the processes end with identical weights, only
rank 0 writes into the model directory, and a run that cannot give every process a batch fails instead of
hanging. Each run has a 120 s limit, after which torchrun is told to stop its workers."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from safetensors.torch import save as save_safetensors_bytes

from charmt import checkpoint as ckpt

from conftest import write_pairs

TORCHRUN = Path(sys.executable).parent / "torchrun"
TIMEOUT = 120

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not TORCHRUN.exists() or not dist.is_gloo_available(),
                                                   reason="needs torchrun and the gloo backend")]

# Imported by every Python process started with this directory on PYTHONPATH: in the processes of rank > 0 it
# logs every write, rename, removal or directory creation under CHARMT_TEST_WATCH (Python audit events).
SITECUSTOMIZE = """
import os, sys
_rank, _watch = os.environ.get("RANK"), os.environ.get("CHARMT_TEST_WATCH")
if _rank not in (None, "0") and _watch:
    _log = open(os.path.join(os.environ["CHARMT_TEST_AUDIT"], f"rank{_rank}.log"), "a", buffering=1)
    _log.write("armed\\n")
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _hook(event, args):
        if event not in ("open", "os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.chmod", "os.truncate"):
            return
        path = args[0]
        if isinstance(path, int) or path is None:
            return
        if not os.path.abspath(os.fsdecode(path)).startswith(_watch):
            return
        if event == "open" and not (any(c in (args[1] or "") for c in "wax+") or (args[2] or 0) & _WRITE):
            return
        _log.write(f"{event} {os.fsdecode(path)}\\n")

    sys.addaudithook(_hook)
"""


def _torchrun(tmp_path: Path, data: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    site, audit, ranks = tmp_path / "site", tmp_path / "audit", tmp_path / "ranks"
    for d in (site, audit):
        d.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "CHARMT_DEBUG_RANK_DUMP": str(ranks), "CHARMT_TEST_WATCH": str(out), "CHARMT_TEST_AUDIT": str(audit),
           "OMP_NUM_THREADS": "1"}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "charmt", "train", str(data),
           "--out", str(out), "--device", "cpu", *flags]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        # The workers run in sessions of their own: SIGTERM makes torchrun stop them (SIGKILL would orphan them).
        proc.terminate()
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        pytest.fail(f"torchrun hung for {TIMEOUT} s:\n{output[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, output)


def _rank_writes(tmp_path: Path) -> list[str]:
    """What the rank-1 process wrote under the model directory (the log's first line shows the hook was on)."""
    lines = (tmp_path / "audit" / "rank1.log").read_text().splitlines()
    assert lines[0] == "armed"
    return lines[1:]


@pytest.mark.parametrize(
    "flags, stopped",
    [
        # A learning rate so small that validation chrF stalls: the plateau schedule then halves the rate after
        # epoch 2, a decision only rank 0 (which validates) can take and every process must apply.
        (["--epochs", "3", "--lr-schedule", "plateau", "--learning-rate", "1e-6"], "epochs"),
        # Too many epochs for a 3 s budget: the cosine schedule follows the clock, and each process has its own.
        (["--epochs", "1000", "--lr-schedule", "cosine", "--time-budget", "0.05"], "time budget"),
    ],
    ids=["plateau", "time-budget"],
)
def test_two_processes_train_identical_weights_and_only_rank0_writes(tmp_path, demo_lines, flags, stopped):
    data = write_pairs(tmp_path / "pairs.txt", demo_lines[:150])
    out = tmp_path / "model"
    done = _torchrun(tmp_path, data, out, "--preset", "tiny", "--hidden-size", "16", "--embedding-size", "8",
                     "--batch-size", "8", "--eval-sentences", "10", *flags)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Device: cpu x 2 processes" in done.stdout

    assert sorted(p.name for p in out.iterdir()) == sorted(
        [ckpt.CONFIG_FILE, ckpt.WEIGHTS_FILE, ckpt.CHECKPOINT_FILE, ckpt.LOG_FILE, ckpt.SPLIT_FILE, ckpt.CARD_FILE])
    assert _rank_writes(tmp_path) == []

    rank0, rank1 = ((tmp_path / "ranks" / f"rank{r}.txt").read_text() for r in (0, 1))
    assert rank0 == rank1  # same weights (sha256), learning rate and step on both processes
    assert f"epochs ({stopped}); best epoch" in done.stdout
    digest, lr, step = rank0.split()
    if stopped == "epochs":
        assert lr == "lr=5e-07"  # the plateau halving happened, so the check above covers it
        assert step == "step=24"  # 17 batches of 8 -> 8 per process per epoch
    else:
        assert float(lr.removeprefix("lr=")) < 1e-3  # the clock, not the step count, drove the schedule

    # The weights rank 0 saved in the checkpoint are the ones both processes ended with.
    tensors = ckpt.load_tensors(out / ckpt.CHECKPOINT_FILE)
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    assert hashlib.sha256(save_safetensors_bytes(weights)).hexdigest() == digest
    ckpt.load_model(out)


def test_fewer_batches_than_processes_fails_instead_of_hanging(tmp_path, demo_lines):
    data = write_pairs(tmp_path / "pairs.txt", demo_lines[:20])
    out = tmp_path / "model"
    done = _torchrun(tmp_path, data, out, "--preset", "tiny", "--hidden-size", "16", "--embedding-size", "8",
                     "--epochs", "1", "--batch-size", "64")
    assert done.returncode != 0
    assert ("charmt: error: 18 training pairs make fewer batches of 64 than the 2 processes; lower --batch-size "
            "or start fewer processes") in done.stdout
    assert not out.exists()
    assert _rank_writes(tmp_path) == []
