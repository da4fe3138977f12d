"""The language table's rows for both families, side by side on one machine (issue 23): for each direction,
`charmt split` holds out 2,000 sentences (seed 1; `--reverse` for X -> English), then `base` and the `transformer`
preset each train on the rest for the same wall-clock budget, and `charmt evaluate` scores the held-out file
greedy and with beam 5.

    .venv/bin/python benchmarks/bench_language_rows.py --work /tmp/rows                # the six European rows
    .venv/bin/python benchmarks/bench_language_rows.py --work /tmp/rows --files jpn cmn
    .venv/bin/python benchmarks/bench_language_rows.py --work /tmp/rows --table-only   # the table again
    .venv/bin/python benchmarks/bench_language_rows.py --work /tmp/rows --files fra --directions from-english \
        --presets transformer --variant vocab4k --train-args="--vocab-size 4000"   # an attempt at a preset change

Each (direction, preset) is one JSON file in WORK/results, written as soon as it is measured; a rerun skips what
is there, so an interrupted run goes on where it stopped (a half-trained model is trained again from scratch, as a
budget cannot be split). Run it on an otherwise idle machine: the budget is wall-clock time. Six directions, two
presets: about 2.5 hours on 2 cores. A `--variant` passes `--train-args` to every training it runs and keeps its
models and results apart from the presets' own.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from _common import environment

PRESETS = ("base", "transformer")
DATA_ROOT = Path("/work/shared/data")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def charmt(*args: str) -> str:
    """Runs the CLI in a process of its own (as a user would), returning its standard output."""
    done = subprocess.run([sys.executable, "-m", "charmt", "-q", *args], check=True, stdout=subprocess.PIPE, text=True)
    return done.stdout


def split(data: Path, reverse: bool, work: Path) -> Path:
    folder = work / f"split-{data.stem}{'-rev' if reverse else ''}"
    if not (folder / f"{data.stem}.test.txt").exists():
        charmt("split", str(data), "--test-sentences", "2000", "--seed", "1", "--out", str(folder),
               *(["--reverse"] if reverse else []))
    return folder


def run_name(code: str, reverse: bool, preset: str, variant: str, minutes: float) -> str:
    return f"{code}{'-rev' if reverse else ''}-{preset}{f'-{variant}' if variant else ''}-{minutes:g}min"


def measure(data: Path, reverse: bool, preset: str, minutes: float, work: Path, variant: str = "",
            train_args: list[str] = ()) -> dict:
    folder = split(data, reverse, work)
    train_file, test_file = folder / f"{data.stem}.train.txt", folder / f"{data.stem}.test.txt"
    model = work / "models" / run_name(data.stem, reverse, preset, variant, minutes)
    started = time.perf_counter()
    charmt("train", str(train_file), *(["--reverse"] if reverse else []), "--preset", preset,
           "--time-budget", str(minutes), *train_args, "--out", str(model), "--overwrite")
    train_seconds = time.perf_counter() - started
    history = [json.loads(line) for line in (model / "log.jsonl").read_text().splitlines() if line.strip()]
    config = json.loads((model / "config.json").read_text())
    result = {"file": data.name, "reverse": reverse, "preset": preset, "variant": variant,
              "train_args": list(train_args), "minutes": minutes, "model": str(model),
              "batch_size": config["training"]["batch_size"], "train_pairs": config["data"]["train"],
              "train_process_seconds": round(train_seconds, 1), "last_epoch": history[-1], "environment": environment()}
    for beam in (1, 5):
        started = time.perf_counter()
        scores = json.loads(charmt("evaluate", str(model), str(test_file), "--json", "--beam", str(beam)))
        result[f"beam{beam}"] = scores | {"seconds": round(time.perf_counter() - started, 1)}
    return result


def row_name(result: dict) -> str:
    first = result["beam1"]
    return f"{first['source_lang']} → {first['target_lang']}"


def preset_label(result: dict) -> str:
    variant = result.get("variant")
    return f"`{result['preset']}`" + (f" {variant} (`{' '.join(result['train_args'])}`)" if variant else "")


def table(results: list[dict]) -> str:
    """The README's rows: passes are steps x batch / training pairs (base's short sentences, shown twice, once)."""
    lines = ["| direction | test sentences (pairs) | preset | training in the budget | chrF / BLEU, greedy "
             "| chrF / BLEU, beam 5 | human / model greedy / model beam 5, chrF (sentences) | exact match, beam 5 "
             "| output ÷ reference length, greedy / beam 5 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        g, b, steps = r["beam1"], r["beam5"], r["last_epoch"]["steps"]
        passes = steps * r["batch_size"] / r["train_pairs"]
        human, human_greedy = b.get("human_baseline") or {}, g.get("human_baseline") or {}
        lines.append(
            f"| {row_name(r)} | {g['sentences']:,} ({g['pairs']:,}) | {preset_label(r)} | {steps:,} steps "
            f"(≈ {passes:.1f} passes) | {g['chrf']:.1f} / {g['bleu']:.1f} | {b['chrf']:.1f} / {b['bleu']:.1f} "
            f"| {human.get('human_chrf', float('nan')):.1f} / {human_greedy.get('model_chrf', float('nan')):.1f} / "
            f"{human.get('model_chrf', float('nan')):.1f} ({human.get('sentences', 0)}) "
            f"| {100 * b['exact_match']:.1f}% | {g['length_ratio']:.2f} / {b['length_ratio']:.2f} |")
    by_run: dict[str, list[float]] = {}
    for r in results:
        by_run.setdefault(f"{preset_label(r)}, {r['minutes']:g} min", []).append(r["beam5"]["chrf"])
    for run, scores in by_run.items():
        lines.append(f"\nmean chrF with beam 5, {run}: {sum(scores) / len(scores):.2f} over {len(scores)} rows")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="splits, models and results go here")
    p.add_argument("--files", nargs="+", default=["fra", "spa", "deu"],
                   help="pair files by language code (default: %(default)s)")
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    p.add_argument("--directions", choices=("both", "from-english", "to-english"), default="both",
                   help="English -> X, X -> English (--reverse) or both (default: %(default)s)")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget (default: %(default)s)")
    p.add_argument("--variant", default="", help="a name for --train-args, in the result and model names")
    p.add_argument("--train-args", default="", help='more `charmt train` options, e.g. "--vocab-size 4000"')
    p.add_argument("--table-only", action="store_true", help="print the table of what is measured and stop")
    args = p.parse_args()
    train_args = shlex.split(args.train_args)
    if bool(train_args) != bool(args.variant):
        p.error("--variant and --train-args go together: name the options that make the variant")
    reverses = {"both": (False, True), "from-english": (False,), "to-english": (True,)}[args.directions]
    results_dir = args.work / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    for code in [] if args.table_only else args.files:
        data = DATA_ROOT / f"{code}-eng" / f"{code}.txt"
        for reverse in reverses:
            for preset in args.presets:
                out = results_dir / f"{run_name(code, reverse, preset, args.variant, args.minutes)}.json"
                if out.exists():
                    continue
                log(f"{code}{' reversed' if reverse else ''}: {preset} {args.variant}, {args.minutes:g} minutes")
                result = measure(data, reverse, preset, args.minutes, args.work, args.variant, train_args)
                out.write_text(json.dumps(result, indent=2))
                log(f"  chrF {result['beam1']['chrf']:.1f} greedy, {result['beam5']['chrf']:.1f} beam 5")
    results = [json.loads(f.read_text()) for f in results_dir.glob("*.json")]
    order = ["fra", "spa", "deu", "jpn", "cmn"]  # the README's
    results.sort(key=lambda r: (order.index(code) if (code := Path(r["file"]).stem) in order else len(order), code,
                                r["reverse"], r["minutes"], PRESETS.index(r["preset"]), r.get("variant", "")))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
