"""TrainingProgress: the display of train()'s events that the command line and notebooks share."""

from __future__ import annotations

import io
import logging
import time

from charmt.progress import TrainingProgress

SELECTION = {"corpus": "150 pairs read from pairs.txt", "samples": 150, "train": 110, "validation": 25, "test": 15,
             "max_input_length": 35, "max_target_length": 47, "skipped": {"source too long": 3},
             "source_vocab": 40, "target_vocab": 50}
START = {"device": "cpu", "precision": "fp32", "parameters": 242398, "world_size": 1, "steps_per_epoch": 7,
         "epochs": 2, "start_epoch": 1}
STEP = {"epoch": 1, "step": 3, "steps": 7, "loss": 2.5, "accuracy": 0.25, "pairs_per_s": 120.0, "lr": 1e-3,
        "steps_per_s": 2.0}
EPOCH = {"epoch": 1, "steps": 7, "train_loss": 2.25, "train_accuracy": 0.3, "lr": 1e-3, "partial": False,
         "val_loss": 2.0, "val_accuracy": 0.35, "val_chrf": 12.34, "val_bleu": 1.5, "seconds": 4.2, "best": True,
         "samples": [{"source": "Hi.", "reference": "Salut !", "output": "Sa"}]}
END = {"out_dir": "models/m", "best_chrf": 12.34, "best_epoch": 1, "epochs_run": 1, "stopped_because": "epochs",
       "history": [EPOCH]}


def test_events_become_the_command_lines_text(caplog):
    out = io.StringIO()
    progress = TrainingProgress(quiet=True, file=out)
    with caplog.at_level(logging.WARNING, logger="charmt"):
        for event, info in [("selection", SELECTION), ("start", START), ("step", STEP), ("epoch", EPOCH),
                            ("warning", {"message": "outputs collapsed"}), ("end", END)]:
            progress(event, info)
    assert out.getvalue().splitlines() == [
        "150 pairs read from pairs.txt",
        "Number of samples: 150 (train 110, validation 25, test 15)",
        "Number of unique input tokens: 36 (+4 special)",
        "Number of unique output tokens: 46 (+4 special)",
        "Max sequence length for inputs: 35",
        "Max sequence length for outputs: 47 (with start and end)",
        "Skipped: 3 source too long",
        "Device: cpu (fp32); 242,398 parameters; 7 steps per epoch",
        "epoch 1: loss 2.2500, masked acc 0.3000 | val loss 2.0000, masked acc 0.3500, chrF 12.3, BLEU 1.5 | 4s (best)",
        "    'Hi.' -> 'Sa' (reference 'Salut !')",
        "Stopped after 1 epochs (epochs); best epoch 1; model written to models/m",
    ]
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("charmt", logging.WARNING, "outputs collapsed")]


def test_without_a_terminal_a_plain_line_replaces_the_bar_once_a_minute():
    out = io.StringIO()  # not a terminal: tqdm turns the bar off
    progress = TrainingProgress(file=out)
    progress("step", STEP)
    assert out.getvalue() == ""
    progress.last_line = time.monotonic() - 61
    progress("step", {**STEP, "step": 4})
    assert out.getvalue() == ("  epoch 1 step 4/7: loss 2.500, acc 0.250, 120 pairs/s, epoch ETA 0.0 min\n")
    progress("epoch", {**EPOCH, "samples": []})  # closes the epoch's bar; the next step opens a new one
    assert progress.bar is None


def test_lines_go_to_standard_output_by_default(capsys):
    TrainingProgress()("end", END)
    captured = capsys.readouterr()
    assert captured.out.startswith("Stopped after 1 epochs") and captured.err == ""
