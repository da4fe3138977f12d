"""Plots: training curves, scores by source length, and attention heatmaps.

Each `*_figure` function returns a matplotlib Figure (shown as an image in Jupyter); each `plot_*` function writes
one as a PNG. pyplot is never used, so no backend or other global state is switched.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint import atomic_write
from .errors import ConfigError, ModelFormatError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PANELS = (  # (title, [(log key, label)])
    ("loss (cross-entropy)", [("train_loss", "train"), ("val_loss", "validation")]),
    ("masked character accuracy", [("train_accuracy", "train"), ("val_accuracy", "validation")]),
    ("validation chrF", [("val_chrf", "chrF")]),
)


def read_log(log_path: str | os.PathLike) -> list[dict]:
    """The epoch records of a training log, one per epoch (the last one wins if an epoch appears twice)."""
    log_path = Path(log_path)
    try:
        lines = log_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ModelFormatError(f"{log_path} is missing: only models trained by `charmt train` have a training "
                               "log (imported models have none)") from None
    except (IsADirectoryError, UnicodeDecodeError) as err:
        raise ModelFormatError(f"{log_path} is not a training log ({err})") from None
    by_epoch: dict[int, dict] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            by_epoch[int(record["epoch"])] = record
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ModelFormatError(f"{log_path} line {number} is not an epoch record; is it charmt's log.jsonl?") \
                from None
    if not by_epoch:
        raise ModelFormatError(f"{log_path} holds no epoch yet; plot again once the first epoch has ended")
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_training(log_path: str | os.PathLike, png_path: str | os.PathLike) -> Path:
    """Draw the curves of `log_path` into the PNG `png_path` (written atomically) and return its path."""
    return _save(training_figure(read_log(log_path), title=Path(log_path).parent.name), png_path)


def training_figure(history: list[dict], title: str = "") -> Figure:
    """Loss, masked accuracy and validation chrF per epoch: the records of `log.jsonl` or `TrainResult.history`."""
    if not history:
        raise ConfigError("no epochs to plot")
    fig = _figure((4.2 * len(PANELS), 3.6))
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    best = [r["epoch"] for r in history if r.get("best")]
    axes = fig.subplots(1, len(PANELS))
    for ax, (panel_title, series) in zip(axes, PANELS):
        drawn = False
        for key, label in series:
            points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=label)
                drawn = True
        if best:
            ax.axvline(best[-1], color="grey", linestyle=":", linewidth=1, label=f"best (epoch {best[-1]})")
        if not drawn:
            ax.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(panel_title)
        ax.set_xlabel("epoch")
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if drawn or best:
            ax.legend(fontsize="small")
    fig.suptitle(f"{title}: {len(history)} epochs" if title else f"{len(history)} epochs")
    return fig


def plot_length_breakdown(rows: list[dict], png_path: str | os.PathLike, title: str = "") -> Path:
    """chrF and BLEU per bucket of source length (the rows of `evaluate.length_breakdown`) into a PNG."""
    return _save(length_figure(rows, title), png_path)


def length_figure(rows: list[dict], title: str = "") -> Figure:
    """chrF and BLEU per bucket of source length: the rows of `EvalReport.by_length`."""
    if not rows:
        raise ConfigError("no scores to plot")
    fig = _figure((6.4, 3.8))
    ax = fig.subplots()
    labels = [f"{r['lengths']}\n({r['sentences']})" for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["chrf"] for r in rows], width=0.4, label="chrF")
    ax.bar([i + 0.2 for i in x], [r["bleu"] for r in rows], width=0.4, label="BLEU")
    ax.set_xticks(list(x), labels)
    ax.set_xlabel("source length in characters (sentences)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    ax.set_title(title or "scores by source length")
    return fig


def plot_attention(source: list[str], output: list[str], weights: list[list[float]],
                   png_path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Heatmap of attention weights (`attention_figure`) into a PNG."""
    return _save(attention_figure(source, output, weights, title=title), png_path)


def attention_figure(source: list[str], output: list[str], weights: list[list[float]], *,
                     title: str | None = None) -> Figure:
    """Heatmap of attention weights, as `decode.attention_weights` returns them: one row per output unit (a
    character or a subword piece), one column per source unit. `title`: what the weights are (for a Transformer,
    `decode.ATTENTION_SHOWN` says how its layers and heads are combined)."""
    if not weights:
        raise ConfigError("the translation is empty: no attention to draw")
    fig = _figure((max(4.0, 0.32 * len(source) + 1.5), max(3.0, 0.32 * len(output) + 1.2)))
    ax = fig.subplots()
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    shown = lambda units: [u.replace(" ", "␣") for u in units]  # noqa: E731
    ax.set_xticks(range(len(source)), shown(source))
    ax.set_yticks(range(len(output)), shown(output))
    unit = "character" if all(len(u) == 1 for u in (*source, *output)) else "unit"
    ax.set_xlabel(f"source {unit}")
    ax.set_ylabel(f"output {unit}")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    return fig


def _figure(size: tuple[float, float]) -> Figure:
    try:  # the Agg canvas directly, not pyplot: no display needed and no global backend switched
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install 'charmt[plot]'") from None
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    # Jupyter shows a Figure as an image only once pyplot's inline backend is loaded; this shows ours without it.
    fig._repr_png_ = lambda: _png(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _save(fig: Figure, png_path: str | os.PathLike) -> Path:
    data = _png(fig)
    png_path = Path(png_path)
    if png_path.parent != Path(""):
        png_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(png_path, data)
    return png_path
