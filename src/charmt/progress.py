"""Showing how training goes: `charmt.train(..., callback=TrainingProgress())`.

One display for the command line and for notebooks: a progress bar per epoch from `tqdm.auto` (a widget in
Jupyter and Colab, a text bar in a terminal), then a line of metrics and a few decoded validation sentences.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from .explain import data_summary

log = logging.getLogger("charmt")


class TrainingProgress:
    """Renders the events of `charmt.train`: the data summary, the device, a bar per epoch, a line per epoch.

    Lines go to `file` (default: standard output, looked up when written); the bar too, where it is text.
    `quiet` leaves out the bar. Without a terminal or a notebook (a log file, CI) the bar turns itself off and a
    plain line comes once a minute instead. Warnings (e.g. collapsed outputs) go to the `charmt` logger.
    """

    def __init__(self, *, quiet: bool = False, file: TextIO | None = None):
        self.quiet = quiet
        self.file = file
        self.bar = None
        self.last_line = time.monotonic()

    def __call__(self, event: str, info: dict) -> None:
        if event == "selection":
            skipped = ", ".join(f"{n} {reason}" for reason, n in info["skipped"].items()) or "none"
            self._say(info["corpus"])
            self._say(data_summary(info))
            self._say(f"Skipped: {skipped}")
        elif event == "start":
            self._say(f"Device: {info['device']}"
                      + (f" x {info['world_size']} processes" if info["world_size"] > 1 else "")
                      + f" ({info['precision']}); {info['parameters']:,} parameters; "
                      f"{info['steps_per_epoch']} steps per epoch")
        elif event == "step":
            self._step(info)
        elif event == "epoch":
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            line = f"epoch {info['epoch']}: loss {info['train_loss']:.4f}, masked acc {info['train_accuracy']:.4f}"
            if "val_loss" in info:
                line += (f" | val loss {info['val_loss']:.4f}, masked acc {info['val_accuracy']:.4f}, "
                         f"chrF {info['val_chrf']:.1f}, BLEU {info['val_bleu']:.1f}")
            line += f" | {info['seconds']:.0f}s" + (" (best)" if info.get("best") else "")
            self._say(line)
            for sample in info.get("samples", []):
                self._say(f"    {sample['source']!r} -> {sample['output']!r} (reference {sample['reference']!r})")
        elif event == "warning":
            log.warning(info["message"])
        elif event == "end":
            self._say(f"Stopped after {info['epochs_run']} epochs ({info['stopped_because']}); best epoch "
                      f"{info['best_epoch']}; model written to {info['out_dir']}")

    def _step(self, info: dict) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=info["steps"], desc=f"epoch {info['epoch']}", unit="batch", leave=False,
                            disable=True if self.quiet else None, initial=info["step"] - 1, file=self._file())
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{info['loss']:.3f}", acc=f"{info['accuracy']:.3f}",
                             pairs_s=f"{info['pairs_per_s']:.0f}", refresh=False)
        if self.bar.disable and not self.quiet and time.monotonic() - self.last_line >= 60:
            # No terminal (a log file, CI): a plain line a minute instead of the bar.
            self.last_line = time.monotonic()
            left = (info["steps"] - info["step"]) / max(info["steps_per_s"], 1e-9)
            self._say(f"  epoch {info['epoch']} step {info['step']}/{info['steps']}: loss {info['loss']:.3f}, "
                      f"acc {info['accuracy']:.3f}, {info['pairs_per_s']:.0f} pairs/s, epoch ETA {left / 60:.1f} min")

    def _file(self) -> TextIO:
        return self.file or sys.stdout

    def _say(self, text: str) -> None:
        file = self._file()
        file.write(text + "\n")
        file.flush()
