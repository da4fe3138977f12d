"""The `charmt` command: help, one-line errors, translate's line contract, inspect, evaluate, train's guard."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from charmt.checkpoint import load_info
from charmt.cli import _configs_from_args, build_parser, main
from charmt.decode import Translator
from charmt.evaluate import evaluate_file

from conftest import write_pairs

# The installed console script; `python -m charmt` where the package is not installed with its scripts.
_SCRIPT = Path(sys.executable).parent / "charmt"
CHARMT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "charmt"]
FOUNDATION_COMMANDS = {"train", "translate", "evaluate", "inspect", "demo", "download"}


@pytest.fixture(scope="module")
def translator(tiny_model_dir) -> Translator:
    return Translator.load(tiny_model_dir, device="cpu")


def _commands() -> list[str]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("charmt: error:")]


def test_every_foundation_command_exists():
    assert FOUNDATION_COMMANDS <= set(_commands())


@pytest.mark.parametrize("command", [[], *([c] for c in _commands())], ids=lambda c: " ".join(c) or "charmt")
def test_help_exits_zero(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: charmt{' ' if command else ''}{' '.join(command)}")


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert re.fullmatch(r"charmt \d+\.\d+\.\d+\n", capsys.readouterr().out)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "{tmp}/missing.txt", "--out", "{tmp}/out"], "{tmp}/missing.txt: no such file"),
        (["train", "{tmp}", "--out", "{tmp}/out"], "{tmp} is a directory, not a pair file"),
        (["translate", "{tmp}/nope", "Hi."], "{tmp}/nope is not a model directory (no such directory)"),
        (["translate", "{tmp}", "Hi."], "{tmp}/config.json is missing: {tmp} is not a charmt model directory"),
        (["evaluate", "{tmp}/nope", "{tmp}/missing.txt"], "{tmp}/nope is not a model directory (no such directory)"),
        (["inspect", "{tmp}/missing.txt", "Hi."], "{tmp}/missing.txt: no such file"),
        (["translate", "{tmp}", "--device", "tpu", "Hi."], "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["download", "FR", "--dir", "{tmp}"],
         "'FR' is not a language code like 'fra' or 'deu' (see manythings.org/anki)"),
    ],
)
def test_errors_are_one_line_with_exit_code_1(tmp_path, capsys, argv, message):
    code = main(["-q", *(a.format(tmp=tmp_path) for a in argv)])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err == f"charmt: error: {message.format(tmp=tmp_path)}\n"
    assert captured.out == ""


def test_option_errors_in_a_loaded_model_are_one_line_too(tiny_model_dir, capsys):
    assert main(["translate", str(tiny_model_dir), "--beam", "0", "Hi."]) == 1
    err = capsys.readouterr().err
    assert _error_lines(err) == ["charmt: error: --beam and --n-best must be at least 1"]
    assert err.endswith("charmt: error: --beam and --n-best must be at least 1\n") and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["translate", "{model}", "--batch-size", "0", "Hi."],
        ["evaluate", "{model}", "{data}", "--output", "{tmp}/no/such/dir/out.txt"],
    ],
    ids=["batch-size-0", "output-dir-missing"],
)
def test_bad_options_are_one_line_errors_too(tiny_model_dir, tmp_path, capsys, argv):
    values = {"model": tiny_model_dir, "data": tiny_model_dir.parent / "pairs.txt", "tmp": tmp_path}
    assert main(["-q", *(a.format(**values) for a in argv)]) == 1
    err = capsys.readouterr().err
    assert len(_error_lines(err)) == 1 and err.count("\n") == 1


def test_a_bad_model_dir_in_a_new_process(tmp_path):
    (tmp_path / "config.json").write_text('{"format": "charmt-model", "format_version": 1}')
    run = subprocess.run([*CHARMT, "translate", str(tmp_path), "Hi."], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1
    assert run.stderr == f"charmt: error: {tmp_path}/config.json is malformed (KeyError: 'model')\n"
    assert run.stdout == ""


@pytest.mark.parametrize(
    "stdin, inputs",
    [
        (b"She eats the bread.\n\nGood evening!\n", ["She eats the bread.", "", "Good evening!"]),
        (b"\xef\xbb\xbfShe eats the bread.\r\n\r\nGood evening!\r\n", ["She eats the bread.", "", "Good evening!"]),
        (b"Hi.\nShe eats the bread. Good evening!", ["Hi.", "She eats the bread. Good evening!"]),
        (b"\n", [""]),
        (b"  \n\t\n", ["", ""]),
        (b"", []),
    ],
    ids=["lf", "bom-crlf", "no-final-newline", "one-empty-line", "blank-lines", "nothing"],
)
def test_translate_from_stdin_gives_one_line_per_input_line(tiny_model_dir, translator, monkeypatch, capsys,
                                                            stdin, inputs):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    assert main(["-q", "translate", str(tiny_model_dir)]) == 0
    expected = translator.translate(inputs)
    assert capsys.readouterr().out == "".join(line + "\n" for line in expected)
    assert all(expected[i] == "" for i, text in enumerate(inputs) if not text.strip())


@pytest.mark.parametrize(
    "argv",
    [
        ["translate", "{model}", "--beam", "2", "She eats the bread.", "Good evening!"],
        ["translate", "{model}", "She eats the bread.", "Good evening!", "--beam", "2"],
        ["translate", "{model}", "She eats the bread.", "--beam", "2", "Good evening!"],
        ["translate", "--beam", "2", "{model}", "She eats the bread.", "Good evening!"],
    ],
)
def test_translate_arguments_before_or_after_options(tiny_model_dir, translator, capsys, argv):
    assert main(["-q", *(a.format(model=tiny_model_dir) for a in argv)]) == 0
    expected = translator.translate(["She eats the bread.", "Good evening!"], beam=2)
    assert capsys.readouterr().out.splitlines() == expected


def test_translate_n_best_prints_index_score_text(tiny_model_dir, translator, capsys):
    assert main(["-q", "translate", str(tiny_model_dir), "--beam", "3", "--n-best", "2", "Hi.", ""]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    hyps = translator.translate_n_best(["Hi."], beam=3, n_best=2)[0]
    assert rows == [["0", f"{h.score:.4f}", h.text] for h in hyps] + [["1", "", ""]]


CELL = re.compile(r"\((\d+), (\d+)\) '(.*)'")


def _table(text: str) -> list[list[tuple[int, int, str] | None]]:
    """The (step, id, char) cells of the encoder input, decoder input and decoder target columns of `inspect`."""
    rows = []
    for line in text.splitlines():
        if re.match(r"\s*\d+  ", line):
            cells = [CELL.fullmatch(line[start:end].strip()) for start, end in ((6, 24), (26, 44), (46, None))]
            rows.append([(int(m[1]), int(m[2]), m[3]) if m else None for m in cells])
    return rows


def _check_shifted_table(out: str, source: str, target: str) -> None:
    assert re.search(r"step\s+encoder input\s+decoder input\s+decoder target", out)
    rows = _table(out)
    assert len(rows) == max(len(source), len(target) + 1)
    encoder, decoder_in, decoder_out = ([row[k] for row in rows if row[k]] for k in range(3))
    assert [c[0] for c in encoder] == list(range(len(source))) and "".join(c[2] for c in encoder) == source
    assert len(decoder_in) == len(decoder_out) == len(target) + 1
    assert decoder_in[0][1:] == (2, "\\t")  # the start character
    assert decoder_out[-1][1:] == (3, "\\n")  # the end character
    # The target is the input shifted one step to the left.
    assert [c[1:] for c in decoder_out[:-1]] == [c[1:] for c in decoder_in[1:]]
    assert "".join(c[2] for c in decoder_out[:-1]) == target


def test_inspect_a_model_dir(tiny_model_dir, capsys):
    assert main(["inspect", str(tiny_model_dir), "She eats the bread.", "Elle mange."]) == 0
    out = capsys.readouterr().out
    info = load_info(tiny_model_dir)
    assert out.startswith(f"source vocabulary: {len(info.source_vocab)} tokens; target vocabulary: "
                          f"{len(info.target_vocab)} tokens")
    _check_shifted_table(out, "She eats the bread.", "Elle mange.")


def test_inspect_a_data_file_and_unknown_characters(tmp_path, demo_lines, capsys):
    short = [line for line in demo_lines if len(line.split("\t")[0]) <= 15][:40]
    path = write_pairs(tmp_path / "pairs.txt", short + ["Hi.\tSalut !"])
    assert main(["inspect", str(path), "Hi.", "Salut !"]) == 0
    out = capsys.readouterr().out
    _check_shifted_table(out, "Hi.", "Salut !")
    assert main(["inspect", str(path), "Hi☃."]) == 0
    out = capsys.readouterr().out
    assert "characters not in the vocabulary (shown as <unk>): '☃'" in out
    encoder = [row[0] for row in _table(out)]
    assert [c[2] for c in encoder] == ["H", "i", "<unk>", "."] and encoder[2][1] == 1


def test_evaluate_prints_the_scores(tiny_model_dir, capsys):
    data = tiny_model_dir.parent / "pairs.txt"  # its training file: evaluates on the recorded test split
    assert main(["-q", "evaluate", str(tiny_model_dir), str(data)]) == 0
    out = capsys.readouterr().out.splitlines()
    report = evaluate_file(tiny_model_dir, data, device="cpu")
    assert report.split == "test"
    assert [line for line in out[:8] if not line.startswith("human baseline")] == [
        "model: unknown -> unknown (? -> ?)",  # pairs.txt does not say its languages
        f"pairs: {report.pairs} (test); sentences: {report.sentences}; references per sentence: "
        f"{report.references_per_sentence:.2f}",
        f"chrF: {report.chrf:.2f} (first reference only: {report.single_reference['chrf']:.2f})",
        f"BLEU: {report.bleu:.2f} (first reference only: {report.single_reference['bleu']:.2f}; tokenizer 13a)",
        f"exact match: {100 * report.exact_match:.1f}%",
        f"output length / reference length: {report.length_ratio:.2f}",
        f"masked character accuracy (teacher forcing): {report.masked_accuracy:.4f}",
    ]
    assert main(["-q", "evaluate", str(tiny_model_dir), str(data), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"chrf", "bleu", "exact_match", "masked_accuracy", "pairs", "split"} <= set(summary)
    assert summary["chrf"] == pytest.approx(report.chrf)


def test_evaluate_searches_with_the_length_penalty_translate_uses(tiny_model_dir, tmp_path, capsys):
    data = tiny_model_dir.parent / "pairs.txt"
    translator = Translator.load(tiny_model_dir, device="cpu")
    outputs = {}
    for alpha in ("0", "10"):
        hypotheses = tmp_path / f"alpha{alpha}.txt"
        assert main(["-q", "evaluate", str(tiny_model_dir), str(data), "--beam", "3", "--length-penalty", alpha,
                     "--output", str(hypotheses), "--device", "cpu"]) == 0
        outputs[alpha] = hypotheses.read_text(encoding="utf-8").splitlines()
        report = evaluate_file(tiny_model_dir, data, beam=3, length_penalty=float(alpha), device="cpu")
        assert outputs[alpha] == translator.translate(report.sources, beam=3, length_penalty=float(alpha))
    assert outputs["0"] != outputs["10"]  # the penalty reached the search: sums favour short outputs, ALPHA 10 long
    capsys.readouterr()
    assert main(["-q", "evaluate", str(tiny_model_dir), str(data), "--beam", "3", "--length-penalty", "-1"]) == 1
    assert "--length-penalty must be a number from 0 to 10, got -1.0" in capsys.readouterr().err


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_train_refuses_an_existing_model_without_overwrite(tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    before = _digest(model)
    data = tiny_model_dir.parent / "pairs.txt"
    tiny = ["--preset", "tiny", "--hidden-size", "8", "--embedding-size", "4", "--epochs", "1",
            "--eval-sentences", "5", "--device", "cpu"]
    assert main(["-q", "train", str(data), "--out", str(model), *tiny]) == 1
    assert capsys.readouterr().err == (f"charmt: error: {model} already holds a model; pass --overwrite to replace "
                                       "it, or --resume\n")
    assert _digest(model) == before
    assert main(["-q", "train", str(data), "--out", str(model), "--overwrite", *tiny]) == 0
    assert Translator.load(model, "cpu").model.config.hidden_size == 8


def test_train_options_reach_their_config_fields_including_renamed_ones():
    args = build_parser().parse_args([
        "train", "data.txt", "--preset", "base", "--layers", "2", "--time-budget", "5", "--shuffle-seed", "7",
        "--seed", "3", "--encoder-hidden-size", "64", "--lr", "0.001", "--max-input-length", "0"])
    model, training, selection = _configs_from_args(args)
    assert (model.num_layers, model.encoder_hidden_size, model.hidden_size) == (2, 64, 256)  # 256: the preset's
    assert (training.time_budget_minutes, training.seed, training.learning_rate) == (5, 3, 0.001)
    assert (selection.seed, selection.max_input_length) == (7, None)


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_export_never_writes_into_a_model_directory(tiny_model_dir, tmp_path, capsys, overwrite):
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    for target, message in [
        (tiny_model_dir, f"{tiny_model_dir} is the model directory itself; write the export to another directory"),
        (other, f"{other} holds a trained model (model.safetensors or checkpoint.safetensors); an export never "
                "writes into a model directory: choose another directory"),
    ]:
        before = {p.name: p.read_bytes() for p in target.iterdir()}
        capsys.readouterr()
        assert main(["export", str(tiny_model_dir), "--onnx", str(target), *overwrite]) == 1
        assert capsys.readouterr().err == f"charmt: error: {message}\n"
        assert {p.name: p.read_bytes() for p in target.iterdir()} == before
