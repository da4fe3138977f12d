"""Translation throughput of a seed-size model: charmt greedy (batch 1 and batched), beam 5, and the reference.

    .venv-bench/bin/python benchmarks/bench_translate.py        # about 2-4 minutes on 2 cores

The weights are random (speed does not depend on them), so two things are fixed to give every decoder the same
work: END is never the argmax (its output bias is -1e9, in charmt and in the reference), and each sentence
decodes exactly as many characters as its reference translation has, plus END. charmt's repetition guard still
runs its checks at every step (its cost is measured) but is not allowed to stop a sentence early, since random
weights repeat themselves at once. The sentences are the seed selection's validation sources.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch
from _common import (
    environment,
    load_now,
    load_seed_selection,
    median,
    parser,
    print_environment,
    save_results,
    setup_threads,
)

import charmt.decode
from charmt.config import ModelConfig
from charmt.decode import beam_search, greedy_decode
from charmt.families.lstm import Seq2Seq
from charmt.torch_engine import TorchEngine
from charmt.vocab import END_ID, PAD_ID


@contextmanager
def guard_checked_but_never_stopping():
    """Run the repetition guard's checks (their cost is real) but never stop a sentence for them."""
    real = charmt.decode._Outputs.push

    def checked(self, token):
        real(self, token)
        return np.zeros(token.shape[0], dtype=bool)

    charmt.decode._Outputs.push = checked
    try:
        yield
    finally:
        charmt.decode._Outputs.push = real


def charmt_translate(model, source_vocab, target_vocab, sources: list[str], steps: list[int], batch_size: int,
                     beam: int) -> dict:
    """Translate as Translator does (text -> ids, batches sorted by length, ids -> text), with fixed budgets."""
    engine = TorchEngine(model)
    start = time.perf_counter()
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    chars = 0
    with guard_checked_but_never_stopping():
        for s in range(0, len(order), batch_size):
            index = order[s : s + batch_size]
            ids = [source_vocab.encode(sources[i]) for i in index]
            lengths = torch.tensor([len(x) for x in ids])
            src = torch.full((len(ids), int(lengths.max())), PAD_ID, dtype=torch.long)
            for row, x in enumerate(ids):
                src[row, : len(x)] = torch.tensor(x, dtype=torch.long)
            src, lengths, limits = src.numpy(), lengths.numpy(), np.array([steps[i] for i in index])
            if beam == 1:
                outs = greedy_decode(engine, src, lengths, limits)
            else:
                outs = [hyps[0][0] for hyps in beam_search(engine, src, lengths, limits, beam=beam)]
            chars += sum(len(target_vocab.decode(t)) + 1 for t in outs)
    seconds = time.perf_counter() - start
    return {"sentences_per_s": len(sources) / seconds, "chars_per_s": chars / seconds, "seconds": seconds,
            "sentences": len(sources), "chars": chars}


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sentences", type=int, default=1000, help="sentences for the batched runs")
    p.add_argument("--batch1-sentences", type=int, default=200, help="sentences for charmt at batch 1")
    p.add_argument("--beam-sentences", type=int, default=500, help="sentences for beam search")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--reference-sentences", type=int, default=20, help="reference sentences in all rounds together")
    p.add_argument("--no-reference", action="store_true", help="charmt only (no Keras installed)")
    args = p.parse_args()
    setup_threads(args.threads)
    env = environment()
    print_environment(env)

    selection, source_vocab, target_vocab = load_seed_selection(args.data)
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(src_vocab_size=len(source_vocab), tgt_vocab_size=len(target_vocab))).eval()
    with torch.no_grad():
        model.decoder.output.bias[END_ID] = -1e9
    pairs = selection.validation[: args.sentences]
    sources = [p.source for p in pairs]
    steps = [len(target_vocab.encode(p.target)) + 1 for p in pairs]
    print(f"{len(pairs)} validation sentences, {sum(map(len, sources)) / len(pairs):.1f} source characters and "
          f"{sum(steps) / len(pairs):.1f} decoder steps on average; random weights", flush=True)

    def run(n, batch_size, beam):
        return charmt_translate(model, source_vocab, target_vocab, sources[:n], steps[:n], batch_size, beam)

    modes = {
        "charmt greedy batch 1": (args.batch1_sentences, 1, 1),
        f"charmt greedy batch {args.batch_size}": (args.sentences, args.batch_size, 1),
        f"charmt beam 5 batch {args.batch_size}": (args.beam_sentences, args.batch_size, 5),
    }
    reference = None
    if not args.no_reference:
        from keras_reference import ReferenceProcess

        reference = ReferenceProcess([(p.source, p.target) for p in selection.all_pairs], model.config.hidden_size)
        reference.call("suppress_end")
        first_row = len(selection.train)  # all_pairs lists train, then validation
        per_round = max(1, args.reference_sentences // args.rounds)

    # Warm-up.
    for n, batch_size, beam in modes.values():
        run(min(n, 2 * batch_size, 32), batch_size, beam)
    if reference:
        reference.call("decode", rows=[first_row], steps=[steps[0]])
        reference.call("decode", rows=[first_row], steps=[steps[0]], direct_call=True)

    blocks: dict[str, list[dict]] = {name: [] for name in modes}
    if reference:
        blocks["reference predict batch 1 (the example)"] = []
        blocks["reference direct call batch 1"] = []
    for r in range(args.rounds):
        for name, (n, batch_size, beam) in modes.items():
            blocks[name].append(run(n, batch_size, beam))
        if reference:
            index = list(range(r * per_round, (r + 1) * per_round))
            rows, budget = [first_row + i for i in index], [steps[i] for i in index]
            for name, direct in (("reference predict batch 1 (the example)", False),
                                 ("reference direct call batch 1", True)):
                out = reference.call("decode", rows=rows, steps=budget, direct_call=direct)
                blocks[name].append({"sentences_per_s": out["sentences"] / out["seconds"],
                                     "chars_per_s": out["chars"] / out["seconds"], "seconds": out["seconds"],
                                     "sentences": out["sentences"], "chars": out["chars"]})
        print(f"round {r + 1}/{args.rounds}: " + " | ".join(
            f"{name} {b[-1]['sentences_per_s']:.1f} sent/s" for name, b in blocks.items()) + f" | load {load_now()}",
            flush=True)
    if reference:
        reference.close()

    results = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}, "modes": {}}
    for name, bs in blocks.items():
        results["modes"][name] = {"sentences_per_s": median([b["sentences_per_s"] for b in bs]),
                                  "chars_per_s": median([b["chars_per_s"] for b in bs]), "blocks": bs}
        print(f"{name}: {results['modes'][name]['sentences_per_s']:.1f} sentences/s, "
              f"{results['modes'][name]['chars_per_s']:.0f} characters/s (median of {len(bs)})")
    results["environment_end"] = environment()
    save_results(args.out, "translate", results)


if __name__ == "__main__":
    main()
