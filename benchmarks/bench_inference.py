"""Inference speed and quality of a trained model, every engine side by side in one run (issue 16).

    charmt split fra.txt --test-sentences 2000 --seed 1 --out heldout
    charmt train heldout/fra.train.txt --preset base --time-budget 30 --out models/fra-base-30m
    .venv/bin/python benchmarks/bench_inference.py --model models/fra-base-30m --test heldout/fra.test.txt
    # quick look: --rounds 1 --one 20 --batched 256 --beam-sentences 64 --no-quality

Rows, each measured in every round, the rounds interleaved (medians reported):
- whole process, as a user runs it: `charmt --help`; `charmt translate DIR "I am cold."` with the model directory
  (PyTorch) and with its ONNX exports (fp32, int8);
- translation with each engine (PyTorch fp32, PyTorch int8 = dynamic quantization of its LSTM and linear layers,
  onnxruntime fp32, onnxruntime int8 = `charmt export --int8`): greedy one sentence per call (`translate([s])`),
  greedy batched (batch 256), beam 5 batched (batch 256); sentences/s over the held-out sources, in file order.
Quality (after the rounds): chrF and BLEU of every engine on all held-out pairs, greedy and beam 5, and how many
outputs differ from PyTorch fp32's. Threads: each library's default (PyTorch: one per core; onnxruntime: its
default, without spinning), unless --threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _common import (
    RESULTS_DIR,
    environment,
    export_once,
    load_now,
    print_environment,
    rate,
    run_process,
    save_results,
)

ROOT = Path(__file__).resolve().parent.parent
CHARMT = str(Path(sys.executable).parent / "charmt")
ENGINES = ("PyTorch fp32", "PyTorch int8", "onnxruntime fp32", "onnxruntime int8")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a model directory trained by charmt (base preset, real data)")
    p.add_argument("--test", required=True, help="held-out pair file (charmt split)")
    p.add_argument("--exports", type=Path, default=RESULTS_DIR / "exports",
                   help="where the ONNX exports are written (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every speed row (default: 3)")
    p.add_argument("--process-runs", type=int, default=3, help="whole-process runs per round (default: 3)")
    p.add_argument("--one", type=int, default=100, help="sentences translated one at a time (default: 100)")
    p.add_argument("--batched", type=int, default=1000, help="sentences for batched greedy (default: 1000)")
    p.add_argument("--beam-sentences", type=int, default=256, help="sentences for batched beam 5 (default: 256)")
    p.add_argument("--no-quality", action="store_true", help="skip the chrF and agreement part")
    p.add_argument("--threads", type=int, default=0, help="torch threads and onnxruntime intra-op threads "
                   "(0: each library's default)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for inference.json")
    return p.parse_args()


def translators(model: str, exports: dict[str, Path], threads: int) -> dict:
    from charmt.decode import Translator
    from charmt.onnx_engine import OnnxEngine
    from charmt.torch_engine import TorchEngine

    fp32 = Translator.load(model, device="cpu")
    return {
        "PyTorch fp32": fp32,
        "PyTorch int8": Translator(None, fp32.info, engine=TorchEngine(fp32.model, "cpu", int8=True)),
        "onnxruntime fp32": Translator(None, fp32.info, engine=OnnxEngine(exports["fp32"], threads=threads)),
        "onnxruntime int8": Translator(None, fp32.info, engine=OnnxEngine(exports["int8"], threads=threads)),
    }


def main() -> None:
    args = parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    env = environment()
    print_environment(env)
    from charmt.data import read_corpus

    pairs = read_corpus(args.test).pairs
    sources = list(dict.fromkeys(p.source.strip() for p in pairs))
    exports = {kind: export_once(args.model, args.exports / f"{Path(args.model).name}-{kind}", "onnx",
                                 int8=kind == "int8") for kind in ("fp32", "int8")}
    engines = translators(args.model, exports, args.threads)
    for translator in engines.values():  # warm-up (first calls build the inference modules, onnxruntime's plans)
        translator.translate(sources[:8])
        translator.translate(sources[:8], beam=5)

    processes = {
        "charmt --help": [CHARMT, "--help"],
        "charmt translate, PyTorch model directory": [CHARMT, "-q", "translate", args.model, "I am cold."],
        "charmt translate, ONNX export fp32": [CHARMT, "-q", "translate", str(exports["fp32"]), "I am cold."],
        "charmt translate, ONNX export int8": [CHARMT, "-q", "translate", str(exports["int8"]), "I am cold."],
    }
    workloads = {
        "greedy, one sentence per call": (args.one, lambda t: [t.translate([s]) for s in sources[: args.one]]),
        "greedy, batch 256": (args.batched, lambda t: t.translate(sources[: args.batched], batch_size=256)),
        "beam 5, batch 256": (args.beam_sentences,
                              lambda t: t.translate(sources[: args.beam_sentences], beam=5, batch_size=256)),
    }
    seconds: dict[str, list[float]] = {name: [] for name in processes}
    rates: dict[str, dict[str, list[float]]] = {w: {e: [] for e in engines} for w in workloads}
    loads = [os.getloadavg()[0]]
    for round_ in range(args.rounds):
        for name, command in processes.items():
            seconds[name] += [run_process(command) for _ in range(args.process_runs)]
        for workload, (count, function) in workloads.items():
            for engine, translator in engines.items():
                rates[workload][engine].append(rate(function, translator, count))
        loads.append(os.getloadavg()[0])
        print(f"round {round_ + 1}: load {load_now()}; " + "; ".join(
            f"{w}: " + ", ".join(f"{e} {rates[w][e][-1]:.0f}" for e in engines) for w in workloads), flush=True)
        print("  " + "; ".join(f"{n}: {seconds[n][-1]:.2f} s" for n in processes), flush=True)

    results = {"environment": env, "model": args.model, "test": args.test, "sources": len(sources),
               "load_during_rounds": [round(x, 2) for x in loads], "process_seconds": seconds, "rates": rates,
               "arguments": {k: str(v) for k, v in vars(args).items()}}
    if not args.no_quality:
        results["quality"] = quality(engines, pairs)
    results["environment_end"] = environment()
    print_table(results)
    save_results(args.out, "inference", results)


def quality(engines: dict, pairs) -> dict:
    """chrF/BLEU per engine (greedy and beam 5) on every held-out pair, and outputs differing from PyTorch fp32."""
    from charmt.evaluate import evaluate

    scores, outputs = {}, {}
    for beam in (1, 5):
        for engine, translator in engines.items():
            start = time.perf_counter()
            report = evaluate(translator, pairs, beam=beam, batch_size=256)
            key = f"{engine}, {'greedy' if beam == 1 else 'beam 5'}"
            outputs[key] = report.hypotheses
            differ = [i for i, (a, b) in enumerate(zip(outputs[f"PyTorch fp32, {key.split(', ')[1]}"],
                                                       report.hypotheses)) if a != b]
            scores[key] = {"chrf": report.chrf, "bleu": report.bleu, "exact_match": report.exact_match,
                           "differ_from_pytorch_fp32": len(differ), "of": len(report.hypotheses),
                           "examples": [(report.sources[i], outputs[f"PyTorch fp32, {key.split(', ')[1]}"][i],
                                         report.hypotheses[i]) for i in differ[:5]],
                           "seconds": time.perf_counter() - start}
            print(f"{key}: chrF {report.chrf:.2f}, BLEU {report.bleu:.2f}, {len(differ)} of "
                  f"{len(report.hypotheses)} outputs differ from PyTorch fp32", flush=True)
    return scores


def print_table(results: dict) -> None:
    med = statistics.median
    print("\n| row | " + " | ".join(ENGINES) + " |\n|---|" + "---|" * len(ENGINES))
    for workload, by_engine in results["rates"].items():
        print(f"| {workload} (sentences/s) | " + " | ".join(f"{med(by_engine[e]):,.0f}" for e in ENGINES) + " |")
    for name, values in results["process_seconds"].items():
        print(f"| {name} | {med(values):.2f} s |")
    print(json.dumps({"load_during_rounds": results["load_during_rounds"]}))


if __name__ == "__main__":
    main()
