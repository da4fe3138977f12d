"""Speed and chrF of CTranslate2 beside PyTorch and onnxruntime on one Transformer, and of an LSTM, in one run
(issue: Argos/CTranslate2 export).

    charmt split fra.txt --out split
    charmt train split/fra.train.txt --arch transformer --time-budget 60 --out models/transformer
    charmt train split/fra.train.txt --preset base --time-budget 60 --out models/base
    .venv/bin/python benchmarks/bench_ct2.py --transformer models/transformer --lstm models/base \\
        --test split/fra.test.txt --out exports
    # quick look: --sentences 200 --one 50 --rounds 1 --process-runs 1

Rows (one engine each), on the first --sentences distinct held-out sources (all references of each kept):
- the Transformer with PyTorch fp32 (`Translator.load(DIR, device="cpu")`), PyTorch int8 (dynamic quantization of
  its linear layers, as `TorchEngine(int8=True)` does), onnxruntime fp32 and int8 (`export_onnx`), CTranslate2
  float32 and int8 (`export_ctranslate2`); the LSTM with PyTorch fp32 and onnxruntime int8. Exports are written
  under --out, or reused when an export of the same kind, newer than the model, is there.
Measured per row, the rows taking turns in every round (medians over the rounds):
- whole process: a fresh `python -m charmt -q translate DIR SENTENCE` (imports and model loading included), median
  of --process-runs, the directories taking turns; none for PyTorch int8 (it has no directory of its own);
- one sentence per call: greedy `translate([s])` over the first --one sources;
- batched greedy and beam 5: `translate(sources, beam=...)` at `translate`'s default batch size;
- quality, from the first round's outputs: chrF (and BLEU) against every reference (charmt.metrics), and the share
  of outputs identical to the same model's PyTorch fp32 ones (how exact each export and quantization is).
Threads: PyTorch's and onnxruntime's defaults (--threads to set both); CTranslate2 one intra-op thread, charmt's
default (--ct2-threads). Loading a CTranslate2 model lowers PyTorch's threads to CTranslate2's; the script sets them
back and records them in every round. Run it on an idle machine: under load PyTorch's spinning threads make its rows
meaningless (RESULTS.md, "The shared-machine finding").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    RESULTS_DIR,
    environment,
    export_once,
    load_now,
    median,
    print_environment,
    rate,
    run_process,
    write_json,
)

# The issue's targets for CTranslate2 int8 on 2 cores.
TARGET_BATCHED = 2000  # sentences/s, batched greedy
TARGET_ONE = 300  # sentences/s, one sentence per call
TARGET_ROW = "Transformer, CTranslate2 int8"
WORKLOADS = ("one sentence per call", "batched greedy", "beam 5")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--transformer", required=True, help="a charmt Transformer model directory")
    p.add_argument("--lstm", help="a charmt LSTM model directory (e.g. one of the base preset) to set beside it")
    p.add_argument("--test", required=True, help="held-out pair file (source TAB reference; a source on several "
                   "lines has several references), e.g. split/fra.test.txt of `charmt split`")
    p.add_argument("--sentences", type=int, default=2000, help="distinct held-out sources (default: %(default)s)")
    p.add_argument("--one", type=int, default=300, help="sources translated one per call (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every speed row (default: %(default)s)")
    p.add_argument("--process-runs", type=int, default=3, help="whole-process runs per directory "
                   "(default: %(default)s)")
    p.add_argument("--sentence", help="the whole-process sentence (default: the first held-out source)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "exports",
                   help="folder of the ONNX and CTranslate2 exports (default: %(default)s)")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "ct2.json", help="results file (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="PyTorch threads and onnxruntime intra-op threads "
                   "(0: each library's default)")
    p.add_argument("--ct2-threads", type=int, default=1, help="CTranslate2 intra-op threads (default: %(default)s, "
                   "charmt's)")
    p.add_argument("--chrf-tolerance", type=float, default=0.2, help="'equal chrF': CTranslate2 int8 within this "
                   "of PyTorch fp32, greedy (default: %(default)s)")
    args = p.parse_args()
    if min(args.sentences, args.one, args.rounds, args.process_runs) < 1:
        p.error("--sentences, --one, --rounds and --process-runs must be at least 1")
    return args


@dataclass
class Row:
    name: str  # "Transformer, CTranslate2 int8"
    family: str  # "Transformer" or "LSTM"
    translator: object  # charmt.decode.Translator
    directory: str | None  # what `charmt translate` loads; None: no directory of its own
    rates: dict[str, list[float]] = field(default_factory=lambda: {w: [] for w in WORKLOADS})
    process_seconds: list[float] = field(default_factory=list)
    outputs: dict[str, list[str]] = field(default_factory=dict)  # "greedy", "beam 5": the first round's


def transformer_rows(model: str, out: Path, threads: int, ct2_threads: int) -> list[Row]:
    import torch

    from charmt.ct2_engine import Ct2Engine
    from charmt.decode import Translator
    from charmt.onnx_engine import OnnxEngine
    from charmt.torch_engine import TorchEngine

    name = Path(model).resolve().name
    fp32 = Translator.load(model, device="cpu")
    if fp32.info.model.arch != "transformer":
        raise SystemExit(f"--transformer {model} is an {fp32.info.model.arch} model; give a Transformer's directory")
    rows = [Row("Transformer, PyTorch fp32", "Transformer", fp32, model),
            Row("Transformer, PyTorch int8", "Transformer",
                Translator(None, fp32.info, engine=TorchEngine(fp32.model, "cpu", int8=True)), None)]
    for kind in ("fp32", "int8"):
        folder = export_once(model, out / f"{name}-onnx-{kind}", "onnx", int8=kind == "int8")
        engine = OnnxEngine(folder, "cpu", threads=threads)
        rows.append(Row(f"Transformer, onnxruntime {kind}", "Transformer", Translator(None, engine.info, engine=engine),
                        str(folder)))
    torch_threads = torch.get_num_threads()
    for kind in ("float32", "int8"):
        folder = export_once(model, out / f"{name}-ct2-{kind}", "ct2", quantization=kind)
        engine = Ct2Engine(folder, "cpu", threads=ct2_threads)
        rows.append(Row(f"Transformer, CTranslate2 {kind}", "Transformer",
                        Translator(None, engine.info, engine=engine), str(folder)))
    # Loading a CTranslate2 model sets the calling thread's OpenMP threads to its intra_threads, and PyTorch's with
    # them (torch.get_num_threads() 2 -> 1 here); CTranslate2 translates in a worker thread of its own, unaffected.
    torch.set_num_threads(torch_threads)
    return rows


def lstm_rows(model: str, out: Path, threads: int) -> list[Row]:
    from charmt.decode import Translator
    from charmt.onnx_engine import OnnxEngine

    fp32 = Translator.load(model, device="cpu")
    if fp32.info.model.arch != "lstm":
        raise SystemExit(f"--lstm {model} is a {fp32.info.model.arch} model; give an LSTM's directory")
    folder = export_once(model, out / f"{Path(model).resolve().name}-onnx-int8", "onnx", int8=True)
    engine = OnnxEngine(folder, "cpu", threads=threads)
    return [Row("LSTM, PyTorch fp32", "LSTM", fp32, model),
            Row("LSTM, onnxruntime int8", "LSTM", Translator(None, engine.info, engine=engine), str(folder))]


def held_out(test: str, translator, sentences: int) -> tuple[list[str], list[list[str]], int]:
    """The first `sentences` distinct sources of the test file, every reference of each, and how many pairs
    they are; read in the model's direction (a model trained with --reverse reads the second column)."""
    from charmt.data import read_corpus, references_by_source

    pairs = read_corpus(test, reverse=bool(translator.info.selection.get("reverse", False))).pairs
    unique, references = references_by_source(pairs)
    references = references[:sentences]
    return [p.source for p in unique[:sentences]], references, sum(map(len, references))


def main() -> None:
    args = parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment()
    print_environment(env)
    rows = transformer_rows(args.transformer, args.out, args.threads, args.ct2_threads)
    if args.lstm:
        rows += lstm_rows(args.lstm, args.out, args.threads)
    data = {family: held_out(args.test, next(r for r in rows if r.family == family).translator, args.sentences)
            for family in dict.fromkeys(r.family for r in rows)}
    sources = {family: d[0] for family, d in data.items()}
    sentence = args.sentence or sources["Transformer"][0]
    print(f"{len(sources['Transformer'])} held-out sources ({data['Transformer'][2]} pairs) of {args.test}; "
          f"whole-process sentence {sentence!r}", flush=True)

    # Whole processes first, the directories taking turns.
    for _ in range(args.process_runs):
        for row in rows:
            if row.directory:
                row.process_seconds.append(run_process([sys.executable, "-m", "charmt", "-q", "translate",
                                                        row.directory, sentence]))
    print("whole process: " + "; ".join(f"{r.name} {median(r.process_seconds):.2f} s" for r in rows
                                        if r.directory), flush=True)

    for row in rows:  # warm-up: the first calls quantize (PyTorch int8) and plan (onnxruntime)
        row.translator.translate(sources[row.family][:8], warn=False)
        row.translator.translate(sources[row.family][:8], beam=5, warn=False)
    loads, torch_threads = [os.getloadavg()[0]], []
    for round_ in range(args.rounds):
        for row in rows:
            measure(row, sources[row.family], args.one, keep_outputs=round_ == 0)
        loads.append(os.getloadavg()[0])
        torch_threads.append(torch.get_num_threads())
        print(f"round {round_ + 1}/{args.rounds}, load {load_now()}: " + "; ".join(
            f"{r.name} " + " / ".join(f"{r.rates[w][-1]:.0f}" for w in WORKLOADS) for r in rows), flush=True)

    results = {"environment": env, "arguments": {k: str(v) for k, v in vars(args).items()},
               "process_sentence": sentence, "load_during_rounds": [round(x, 2) for x in loads],
               "torch_threads_during_rounds": torch_threads,
               "held_out": {family: {"sources": len(d[0]), "pairs": d[2]} for family, d in data.items()},
               "rows": {row.name: row_results(row, rows, *data[row.family][:2]) for row in rows}}
    results["targets"] = targets(results["rows"], args.chrf_tolerance)
    results["environment_end"] = environment()
    print_table(results)
    print_environment(results["environment_end"])
    write_json(args.json, results)


def measure(row: Row, sources: list[str], one: int, *, keep_outputs: bool) -> None:
    """One round of a row: one sentence per call, batched greedy, batched beam 5."""
    first = sources[:one]
    row.rates["one sentence per call"].append(
        rate(lambda t: [t.translate([s], warn=False) for s in first], row.translator, len(first)))
    for workload, search, beam in (("batched greedy", "greedy", 1), ("beam 5", "beam 5", 5)):
        start = time.perf_counter()
        outputs = row.translator.translate(sources, beam=beam, warn=False)
        row.rates[workload].append(len(sources) / (time.perf_counter() - start))
        if keep_outputs:
            row.outputs[search] = outputs


def row_results(row: Row, rows: list[Row], sources: list[str], references: list[list[str]]) -> dict:
    """Speeds, quality and agreement with the same model's PyTorch fp32 outputs, of one row."""
    from charmt.languages import bleu_tokenizer
    from charmt.metrics import score_translations

    info = row.translator.info
    tokenize, _ = bleu_tokenizer(info.target_lang)
    baseline = next(r for r in rows if r.family == row.family)  # PyTorch fp32, listed first
    result = {"family": row.family, "engine": getattr(row.translator.engine, "description", row.translator.engine.name),
              "directory": row.directory, "weights_mb": row.translator.engine.memory_bytes() / 2**20,
              "process_seconds": row.process_seconds,
              "sentences_per_s": {w: {"median": median(v), "rounds": v} for w, v in row.rates.items()}}
    for search, outputs in row.outputs.items():
        scores = score_translations(outputs, references, tokenize=tokenize)
        reference = baseline.outputs[search]
        differ = [i for i, (a, b) in enumerate(zip(reference, outputs)) if a != b]
        result[search] = {**scores.to_dict(), "identical_to_pytorch_fp32": 1 - len(differ) / len(outputs),
                          "differing_examples": [(sources[i], reference[i], outputs[i]) for i in differ[:5]]}
    return result


def targets(rows: dict, tolerance: float) -> dict:
    """The issue's targets, read on CTranslate2 int8 against the Transformer's PyTorch fp32."""
    row, fp32 = rows[TARGET_ROW], rows["Transformer, PyTorch fp32"]
    batched = row["sentences_per_s"]["batched greedy"]["median"]
    one = row["sentences_per_s"]["one sentence per call"]["median"]
    chrf_gap = row["greedy"]["chrf"] - fp32["greedy"]["chrf"]
    return {f"batched greedy >= {TARGET_BATCHED:,}/s": {"value": batched, "met": batched >= TARGET_BATCHED},
            f"one sentence per call >= {TARGET_ONE}/s": {"value": one, "met": one >= TARGET_ONE},
            f"greedy chrF within {tolerance} of PyTorch fp32": {"value": chrf_gap, "met": abs(chrf_gap) <= tolerance}}


def _speed(values: list[float]) -> str:
    """'median (round 1 / round 2 / ...)' for the table."""
    return f"{median(values):,.0f}" + (f" ({' / '.join(f'{v:,.0f}' for v in values)})" if len(values) > 1 else "")


def print_table(results: dict) -> None:
    print("\n| engine | whole process, one sentence (s) | one sentence per call (sentences/s) | batched greedy "
          "(sentences/s) | beam 5 (sentences/s) | chrF greedy / beam 5 | identical to PyTorch fp32, greedy / "
          "beam 5 | weights (MB) |\n|---|---|---|---|---|---|---|---|")
    for name, row in results["rows"].items():
        seconds = row["process_seconds"]
        process = f"{median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f})" if seconds else "–"
        speeds = " | ".join(_speed(row["sentences_per_s"][w]["rounds"]) for w in WORKLOADS)
        chrf = f"{row['greedy']['chrf']:.2f} / {row['beam 5']['chrf']:.2f}"
        same = " / ".join(f"{row[s]['identical_to_pytorch_fp32']:.1%}" for s in ("greedy", "beam 5"))
        print(f"| {name} | {process} | {speeds} | {chrf} | {same} | {row['weights_mb']:.1f} |")
    print(f"\n{TARGET_ROW}, the issue's targets:")
    for target, value in results["targets"].items():
        print(f"- {target}: {value['value']:,.2f} ({'met' if value['met'] else 'not met'})")
    print(f"load during the rounds: {results['load_during_rounds']}; PyTorch threads: "
          f"{results['torch_threads_during_rounds']}")


if __name__ == "__main__":
    main()
