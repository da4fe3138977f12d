"""Where one-sentence decoding spends its time (issue 16, item 3): the engine's calls against the search around them.

    .venv/bin/python benchmarks/profile_decode.py --model models/fra-base-30m --test heldout/fra.test.txt

For each engine (PyTorch fp32, and onnxruntime fp32 when the export exists or can be written), translates sentences
one per call, greedy and beam 5, and times every `encode`, `step` and `select` call the search makes. What is left
of the wall time is the search itself (argmax or top-k, the repetition guard, bookkeeping) and `Translator`'s text
handling (cleaning, sentence splitting, encoding, turning ids back into text).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

from _common import RESULTS_DIR, environment, print_environment, save_results


class TimedEngine:
    """Wraps an engine and adds up the seconds spent in each of its methods."""

    def __init__(self, engine):
        self.engine, self.seconds, self.calls = engine, defaultdict(float), defaultdict(int)
        self.name, self.device, self.model = engine.name, engine.device, engine.model

    def _timed(self, method: str, *args, **kwargs):
        start = time.perf_counter()
        result = getattr(self.engine, method)(*args, **kwargs)
        self.seconds[method] += time.perf_counter() - start
        self.calls[method] += 1
        return result

    def encode(self, *args, **kwargs):
        return self._timed("encode", *args, **kwargs)

    def step(self, *args, **kwargs):
        return self._timed("step", *args, **kwargs)

    def select(self, *args, **kwargs):
        return self._timed("select", *args, **kwargs)

    def memory_bytes(self) -> int:
        return self.engine.memory_bytes()


def profile(translator, sentences: list[str], beam: int) -> dict:
    from charmt.decode import Translator

    timed = TimedEngine(translator.engine)
    wrapped = Translator(None, translator.info, engine=timed)
    wrapped.translate(sentences[:5], beam=beam)  # warm-up
    timed.seconds.clear()
    timed.calls.clear()
    start = time.perf_counter()
    for sentence in sentences:
        wrapped.translate([sentence], beam=beam, warn=False)
    wall = time.perf_counter() - start
    engine_s = sum(timed.seconds.values())
    row = {"sentences_per_s": len(sentences) / wall, "wall_s": wall,
           "share": {m: timed.seconds[m] / wall for m in ("encode", "step", "select")},
           "search_and_text_share": (wall - engine_s) / wall, "calls": dict(timed.calls),
           "step_ms": 1000 * timed.seconds["step"] / max(timed.calls["step"], 1)}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a model directory trained by charmt")
    p.add_argument("--test", required=True, help="held-out pair file (its sources are translated)")
    p.add_argument("--export", type=Path, help="its ONNX export (default: written under benchmarks/results)")
    p.add_argument("--sentences", type=int, default=200)
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args()
    env = environment()
    print_environment(env)

    from charmt.data import read_corpus
    from charmt.decode import Translator
    from charmt.export import export_onnx

    sources = list(dict.fromkeys(p.source.strip() for p in read_corpus(args.test).pairs))[: args.sentences]
    export = args.export or RESULTS_DIR / "exports" / f"{Path(args.model).name}-fp32"
    if not (export / "config.json").is_file():
        export_onnx(args.model, export, overwrite=True)
    engines = {"PyTorch fp32": Translator.load(args.model, device="cpu"), "onnxruntime fp32": Translator.load(export)}
    results = {"environment": env, "model": args.model, "sentences": len(sources), "rows": {}}
    print("\n| engine, search | sentences/s | encode | step | select | search + text | ms per step |")
    print("|---|---|---|---|---|---|---|")
    for engine, translator in engines.items():
        for beam in (1, 5):
            row = profile(translator, sources, beam)
            key = f"{engine}, {'greedy' if beam == 1 else 'beam 5'}"
            results["rows"][key] = row
            share = row["share"]
            print(f"| {key} | {row['sentences_per_s']:.0f} | {share['encode']:.0%} | {share['step']:.0%} | "
                  f"{share['select']:.0%} | {row['search_and_text_share']:.0%} | {row['step_ms']:.3f} |", flush=True)
    save_results(args.out, "profile_decode", results)


if __name__ == "__main__":
    main()
