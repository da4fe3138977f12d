"""Shared fixtures: small pair files and a tiny model trained once per test session (a few seconds)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import torch

from charmt.config import ModelConfig, SelectionConfig, TrainConfig
from charmt.training import train

DEMO = resources.files("charmt") / "demo" / "eng-fra.txt"

# Tiny test models gain nothing from intra-op threads; on a shared 2-core machine the threads wait on each
# other and make the suite several times slower.
torch.set_num_threads(1)


def write_pairs(path: Path, lines: list[str], *, encoding: str = "utf-8", newline: str = "\n") -> Path:
    """Write `lines` joined by `newline` (with a final newline) and return the path."""
    path.write_bytes((newline.join(lines) + newline).encode(encoding))
    return path


@pytest.fixture
def demo_lines() -> list[str]:
    return DEMO.read_text(encoding="utf-8").splitlines()


@pytest.fixture
def pair_file(tmp_path, demo_lines) -> Path:
    """The first 150 pairs of the built-in demo corpus, as a 2-column file."""
    return write_pairs(tmp_path / "pairs.txt", demo_lines[:150])


TINY_MODEL = ModelConfig(hidden_size=32, embedding_size=16, bidirectional=True, attention="luong")
TINY_TRAIN = TrainConfig(epochs=3, batch_size=16, optimizer="adam", learning_rate=3e-3, seed=1, device="cpu",
                         eval_sentences=20, show_samples=1, precision="fp32")
TINY_SELECTION = SelectionConfig(max_input_length=None, dedupe=False, num_samples=None, validation_fraction=0.15,
                                 test_fraction=0.1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, request) -> Path:
    """A tiny attention model trained for 3 epochs on 150 demo pairs. Treat it as read-only."""
    root = tmp_path_factory.mktemp("tiny")
    lines = DEMO.read_text(encoding="utf-8").splitlines()[:150]
    data = write_pairs(root / "pairs.txt", lines)
    torch.manual_seed(0)
    train(data, root / "model", model_config=TINY_MODEL, train_config=TINY_TRAIN, selection=TINY_SELECTION,
          preset="tiny")
    return root / "model"
