"""`charmt plot`: training curves from log.jsonl into a PNG, without training anything."""

from __future__ import annotations

import json

import pytest

from charmt.cli import main
from charmt.errors import CharmtError
from charmt.plots import plot_training, read_log

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def record(epoch: int, *, validation: bool = True, best: bool = False) -> dict:
    """An epoch line with the keys train.py writes (its record plus _validate's)."""
    r = {"epoch": epoch, "steps": 10 * epoch, "train_loss": 2.0 / epoch, "train_accuracy": 0.5 + 0.05 * epoch,
         "lr": 1e-3, "partial": False, "seconds": 3.0 * epoch, "best": best}
    if validation:
        r.update(val_loss=2.2 / epoch, val_accuracy=0.45 + 0.05 * epoch, val_chrf=10.0 * epoch, val_bleu=5.0 * epoch,
                 val_exact_match=0.01 * epoch, samples=[{"source": "Hi.", "reference": "Salut.", "output": "Sa"}],
                 collapsed=False)
    return r


def write_log(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


@pytest.mark.parametrize("validation", [True, False])
def test_plot_writes_a_png(tmp_path, validation):
    log = tmp_path / "model" / "log.jsonl"
    log.parent.mkdir()
    write_log(log, [record(e, validation=validation, best=e == 3) for e in range(1, 5)])
    png = plot_training(log, tmp_path / "out" / "curves.png")
    data = png.read_bytes()
    assert png == tmp_path / "out" / "curves.png"
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_read_log_keeps_the_last_record_of_an_epoch(tmp_path):
    log = tmp_path / "log.jsonl"
    write_log(log, [record(1), record(2), {**record(2), "train_loss": 0.1}, record(3)])
    assert [(r["epoch"], r["train_loss"]) for r in read_log(log)] == [(1, 2.0), (2, 0.1), (3, 2.0 / 3)]


@pytest.mark.parametrize("content, message", [
    (None, "log.jsonl is missing: only models trained by `charmt train` have a training log"),
    ("", "log.jsonl holds no epoch yet; plot again once the first epoch has ended"),
    ('{"epoch": 1}\nnot json\n', "log.jsonl line 2 is not an epoch record"),
])
def test_bad_logs_are_refused(tmp_path, content, message):
    log = tmp_path / "log.jsonl"
    if content is not None:
        log.write_text(content, encoding="utf-8")
    with pytest.raises(CharmtError, match=message):
        plot_training(log, tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()


def test_cli_plot(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    write_log(model / "log.jsonl", [record(1), record(2, best=True)])
    assert main(["plot", str(model)]) == 0
    assert capsys.readouterr().out.strip() == str(model / "training.png")
    assert (model / "training.png").read_bytes().startswith(PNG_SIGNATURE)
    assert main(["plot", str(tmp_path / "nowhere")]) == 1
    assert "nowhere/log.jsonl is missing" in capsys.readouterr().err


def test_attention_command_draws_one_row_per_output_character(tiny_model_dir, tmp_path, capsys):
    from charmt.decode import Translator, attention_weights

    translator = Translator.load(tiny_model_dir, device="cpu")
    source, output, weights = attention_weights(translator, "I see the cat.")
    assert "".join(output) == translator.translate(["I see the cat."], split=False)[0]
    assert len(weights) == len(output) and all(len(row) == len(source) for row in weights)
    assert all(abs(sum(row) - 1.0) < 1e-4 for row in weights)
    png = tmp_path / "att.png"
    assert main(["attention", str(tiny_model_dir), "I see the cat.", "--png", str(png), "--device", "cpu"]) == 0
    assert capsys.readouterr().out == "".join(output) + "\n"
    assert png.read_bytes().startswith(PNG_SIGNATURE)


def test_evaluate_plot_writes_the_length_breakdown(tiny_model_dir, tmp_path, demo_lines):
    data = tmp_path / "pairs.txt"
    data.write_text("\n".join(demo_lines[150:190]) + "\n", encoding="utf-8")
    png = tmp_path / "lengths.png"
    assert main(["evaluate", str(tiny_model_dir), str(data), "--plot", str(png), "--device", "cpu"]) == 0
    assert png.read_bytes().startswith(PNG_SIGNATURE)


def test_length_breakdown_without_rows_is_an_error(tmp_path):
    from charmt.plots import plot_length_breakdown

    with pytest.raises(CharmtError, match="no scores"):
        plot_length_breakdown([], tmp_path / "x.png")


def test_figure_functions_return_figures_that_jupyter_shows_as_png():
    from matplotlib.figure import Figure

    from charmt.plots import attention_figure, length_figure, training_figure

    training = training_figure([record(e, best=e == 2) for e in range(1, 4)], title="tiny")
    assert [ax.get_title() for ax in training.axes] == ["loss (cross-entropy)", "masked character accuracy",
                                                        "validation chrF"]
    assert training.get_suptitle() == "tiny: 3 epochs"
    rows = [{"lengths": "1-10", "sentences": 3, "chrf": 50.0, "bleu": 20.0},
            {"lengths": "11-20", "sentences": 5, "chrf": 40.0, "bleu": 10.0}]
    lengths = length_figure(rows)
    assert [p.get_height() for p in lengths.axes[0].patches] == [50.0, 40.0, 20.0, 10.0]  # chrF bars, then BLEU
    attention = attention_figure(list("a b"), list("xy"), [[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]])
    image, _colorbar = attention.axes
    assert [t.get_text() for t in image.get_xticklabels()] == ["a", "␣", "b"]
    assert image.images[0].get_array().tolist() == [[0.5, 0.25, 0.25], [0.0, 0.0, 1.0]]
    for figure in (training, lengths, attention):
        assert isinstance(figure, Figure)
        assert figure._repr_png_().startswith(PNG_SIGNATURE)  # what IPython displays, without pyplot


@pytest.mark.parametrize("draw, message", [
    (lambda plots: plots.training_figure([]), "no epochs to plot"),
    (lambda plots: plots.length_figure([]), "no scores to plot"),
    (lambda plots: plots.attention_figure(["a"], [], []), "the translation is empty"),
])
def test_figures_of_nothing_are_refused(draw, message):
    from charmt import plots

    with pytest.raises(CharmtError, match=message):
        draw(plots)
