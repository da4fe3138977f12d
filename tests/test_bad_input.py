"""The bad-input catalogue, through the CLI: every bad file, path, text or model directory either works with
a counted skip or ends in exit code 1 and exactly one line `charmt: error: ...` that says what is wrong
(never a traceback); bad data never costs an existing model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from charmt import checkpoint as ckpt
from charmt.cli import main

from conftest import write_pairs

TINY = ["--preset", "tiny", "--hidden-size", "8", "--embedding-size", "4", "--epochs", "1", "--batch-size", "8",
        "--eval-sentences", "5", "--device", "cpu"]
PREFIX = "charmt: error: "


def _error(capsys, argv: list[str]) -> str:
    """Run the CLI, expecting exit code 1 and one error line on stderr; return the message."""
    code = main(["-q", *argv])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    assert err.startswith(PREFIX) and err.count("\n") == 1, err
    return err[len(PREFIX) : -1]


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


# --- data files ----------------------------------------------------------------------------------------------

GOOD = b"Go.\tVa !\n"

BAD_DATA = [
    (bytes(range(256)) * 4, "looks like a binary file, not a text file of tab-separated pairs"),
    ("Go.\tVa !\nCafé.\tCafé.\n".encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
    (GOOD + "Café.\tCafé.\n".encode("latin-1"), "is not UTF-8 text (bad byte at line 2); save it as UTF-8"),
    (b"", "holds no usable pair: expected lines of 'source<TAB>target[<TAB>attribution]'"),
    (b"\n  \n\r\n", "holds no usable pair: expected lines of 'source<TAB>target[<TAB>attribution]'"),
    (b"Go.  Va !\nHi.  Salut !\n", "holds no usable pair: expected lines of 'source<TAB>target[<TAB>attribution]' "
                                  "(2 malformed lines, first at line 1)"),
    (b"\nGo.\n\nHi.\tSalut !\tCC-BY\tsomething else\n", "(2 malformed lines, first at line 2)"),  # 1 and 4 columns
    (b"Go.\t\n\tVa !\n", "(2 malformed lines, first at line 1)"),  # an empty side
]
BAD_DATA_IDS = ["binary", "utf-16", "latin-1", "empty", "blank-lines", "no-tabs", "1-and-4-columns", "empty-side"]


@pytest.mark.parametrize("content, message", BAD_DATA, ids=BAD_DATA_IDS)
def test_bad_data_file_is_one_error_line(tmp_path, capsys, content, message):
    data = tmp_path / "data.txt"
    data.write_bytes(content)
    assert message in _error(capsys, ["train", str(data), "--out", str(tmp_path / "out"), *TINY])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", BAD_DATA[:4], ids=BAD_DATA_IDS[:4])
def test_bad_data_file_for_evaluate(tmp_path, tiny_model_dir, capsys, content, message):
    data = tmp_path / "data.txt"
    data.write_bytes(content)
    assert message in _error(capsys, ["evaluate", str(tiny_model_dir), str(data), "--device", "cpu"])


def test_missing_data_file_for_evaluate(tmp_path, tiny_model_dir, capsys):
    missing = tmp_path / "missing.txt"
    assert _error(capsys, ["evaluate", str(tiny_model_dir), str(missing)]) == f"{missing}: no such file"


def test_unreadable_data_file(tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_bytes(GOOD * 20)
    data.chmod(0)
    try:
        if os.access(data, os.R_OK):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): a mode-000 file is still readable")
        assert _error(capsys, ["train", str(data), "--out", str(tmp_path / "out"), *TINY]) == (
            f"{data}: permission denied")
    finally:
        data.chmod(0o644)


def test_malformed_and_too_long_lines_are_skipped_and_counted(tmp_path, demo_lines, capsys):
    lines = demo_lines[:40]
    lines[10:10] = ["just one column", "a\tb\tc\td", "x" * 5000 + "\tun", "Hi.\t" + "y" * 5000]
    data = write_pairs(tmp_path / "data.txt", lines)
    out = tmp_path / "out"
    assert main(["train", str(data), "--out", str(out), *TINY, "--max-input-length", "100",
                 "--max-target-length", "100"]) == 0
    err = capsys.readouterr().err
    assert f"42 pairs read from {data}; 2 malformed lines skipped (lines 11, 12)" in err
    assert "Skipped: 1 source too long, 1 target too long, 2 malformed line" in err
    config = json.loads((out / ckpt.CONFIG_FILE).read_text())
    assert config["data"]["skipped"] == {"source too long": 1, "target too long": 1, "malformed line": 2}
    assert config["data"]["samples"] == 40
    assert config["max_source_length"] <= 100 and config["max_target_length"] <= 100


def test_bom_and_crlf_train_like_plain_utf8(tmp_path, demo_lines, capsys):
    """A UTF-8 BOM and CRLF line ends (a file saved on Windows) train exactly as the plain file does."""
    plain = write_pairs(tmp_path / "plain.txt", demo_lines[:40])
    windows = tmp_path / "windows.txt"
    windows.write_bytes("\ufeff".encode() + plain.read_bytes().replace(b"\n", b"\r\n"))
    for data, out in ((plain, "plain"), (windows, "windows")):
        assert main(["-q", "train", str(data), "--out", str(tmp_path / out), *TINY]) == 0
    capsys.readouterr()
    a, b = (json.loads((tmp_path / out / ckpt.CONFIG_FILE).read_text()) for out in ("plain", "windows"))
    assert "\r" not in b["target_vocab"] and "\ufeff" not in b["source_vocab"]
    assert (a["source_vocab"], a["target_vocab"]) == (b["source_vocab"], b["target_vocab"])
    assert ckpt.load_tensors(tmp_path / "plain" / ckpt.WEIGHTS_FILE).keys() == \
        ckpt.load_tensors(tmp_path / "windows" / ckpt.WEIGHTS_FILE).keys()
    assert json.loads((tmp_path / "windows" / ckpt.SPLIT_FILE).read_text())["validation"] == \
        json.loads((tmp_path / "plain" / ckpt.SPLIT_FILE).read_text())["validation"]


# --- the model directory to write -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, extra, message",
    [
        (bytes(range(256)), [], "looks like a binary file"),
        (b"no tabs here\n", [], "holds no usable pair"),
        (GOOD * 5, ["--max-input-length", "1"], "passes the selection"),
        (GOOD, [], "none of its 1 selected pairs is left for training"),
    ],
    ids=["binary", "no-pairs", "nothing-selected", "nothing-to-train-on"],
)
def test_bad_data_never_overwrites_an_existing_model(tmp_path, tiny_model_dir, capsys, content, extra, message):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    before = _digest(model)
    data = tmp_path / "data.txt"
    data.write_bytes(content)
    assert message in _error(capsys, ["train", str(data), "--out", str(model), "--overwrite", *TINY, *extra])
    assert _digest(model) == before
    ckpt.load_model(model)


@pytest.mark.parametrize("out", ["file", "file/sub/model"])
def test_output_path_through_a_file(tmp_path, capsys, out):
    (tmp_path / "file").write_text("not a directory")
    data = write_pairs(tmp_path / "data.txt", ["Go.\tVa !"] * 20)
    assert _error(capsys, ["train", str(data), "--out", str(tmp_path / out), *TINY]) == (
        f"{tmp_path / out} cannot be a model directory: {tmp_path / 'file'} is a file; choose another --out")
    assert (tmp_path / "file").read_text() == "not a directory"


# --- texts to translate ----------------------------------------------------------------------------------------

ODD_TEXTS = ["", "   ", "\t", "Ça coûte 5 € — ß ħ ŋ.", "I ❤ 🍕 😀!", "a\x00b", "\x00", "x" * 10_000,
             "She eats the bread. " * 5]


@pytest.mark.parametrize("beam", ["1", "3"])
def test_odd_texts_get_one_output_line_each(tiny_model_dir, capsys, beam):
    assert main(["translate", str(tiny_model_dir), "--beam", beam, "--device", "cpu", *ODD_TEXTS]) == 0
    captured = capsys.readouterr()
    lines = captured.out.split("\n")
    assert lines.pop() == ""
    assert len(lines) == len(ODD_TEXTS)
    assert lines[:3] == ["", "", ""]  # nothing to translate, nothing out
    assert "error" not in captured.err and "unknown character" in captured.err


def test_odd_texts_on_stdin(tiny_model_dir, capsys, monkeypatch):
    import io
    import sys

    texts = [t for t in ODD_TEXTS if "\n" not in t]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n".join(texts).encode() + b"\n")))
    assert main(["translate", str(tiny_model_dir), "--device", "cpu"]) == 0
    assert len(capsys.readouterr().out.split("\n")) == len(texts) + 1


# --- model directories to read ----------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _newer(path: Path) -> None:
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "format_version": ckpt.FORMAT_VERSION + 1}))


@pytest.mark.parametrize(
    "file, damage, message",
    [
        (ckpt.WEIGHTS_FILE, Path.unlink, "is missing"),
        (ckpt.CONFIG_FILE, Path.unlink, "is missing"),
        (ckpt.WEIGHTS_FILE, _truncate, "is truncated or not a safetensors file"),
        (ckpt.CONFIG_FILE, _truncate, "is truncated or not JSON"),
        (ckpt.WEIGHTS_FILE, lambda p: p.write_bytes(b'{"weights": "JSON"}'), "is truncated or not a safetensors"),
        (ckpt.CONFIG_FILE, lambda p: p.write_text('{"model_type": "bert"}'), "is not a charmt model config"),
        (ckpt.CONFIG_FILE, _newer, "newer than this charmt reads"),
    ],
    ids=["no-weights", "no-config", "truncated-weights", "truncated-config", "foreign-weights", "foreign-config",
         "newer-format"],
)
@pytest.mark.parametrize("command", ["translate", "evaluate"])
def test_damaged_model_directory_error_names_the_file(tmp_path, tiny_model_dir, capsys, file, damage, message,
                                                      command):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    damage(model / file)
    args = ["Hi."] if command == "translate" else [str(tiny_model_dir.parent / "pairs.txt")]
    text = _error(capsys, [command, str(model), *args, "--device", "cpu"])
    assert text.startswith(str(model / file)) and message in text
