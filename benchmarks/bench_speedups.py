"""Candidate speedups, each measured against charmt as it is, interleaved (seed-size model, random weights).

    .venv/bin/python benchmarks/bench_speedups.py               # about 3-5 minutes on 2 cores

1. threads: training steps and batch-1 greedy decoding in three processes that take turns: PyTorch's default
   (2 OpenMP threads that spin while waiting), 1 thread, and 2 threads with OMP_WAIT_POLICY=PASSIVE.
2. decoding: charmt's greedy_decode; the same with oneDNN (mkldnn) turned off, so that nn.LSTM's single steps take
   PyTorch's native path instead of re-packing the weights at every call; and a prototype loop for the seed
   network (an embedding-style lookup of the input weights instead of a one-hot matmul, one addmm per step,
   incremental repetition check, preallocated history); and greedy_decode under bfloat16 autocast. All but the
   first round differently from it, so the share of sentences decoded identically (by a model trained for a
   couple of epochs, END allowed, guard on) is reported with them.
3. precision: training steps in float32 (charmt now), under torch.autocast("cpu", bfloat16) (what train() does
   on CUDA) and in float32 with oneDNN off (PyTorch's native LSTM), interleaved, and the validation loss of a
   model trained the same way in each.
4. optimizer: RMSprop with foreach=True vs the default, and whether the weights stay bitwise equal.
5. padding: the share of computed LSTM steps that are real characters with train()'s bucketing and with batches
   sorted by target length first.
6. compile: the prototype's decoder step (lookup, addmm, gates, output, argmax) eager vs torch.compile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import nullcontext

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
from bench_train import CharmtTrainer
from bench_translate import guard_checked_but_never_stopping

from charmt.batching import collate, encode_pairs, make_batches
from charmt.config import ModelConfig, TrainConfig
from charmt.decode import MAX_REPEAT_UNIT, _trim
from charmt.decode import greedy_decode as greedy_search
from charmt.families.lstm import Seq2Seq
from charmt.torch_engine import TorchEngine
from charmt.training import make_optimizer
from charmt.vocab import END_ID, PAD_ID, START_ID

# --- a prototype greedy decoder for the seed network ---------------------------------------------------------


_ENGINES: dict[int, TorchEngine] = {}


def greedy_decode(model: Seq2Seq, src, src_lengths, max_lengths, *, stop_repeats: bool = True):
    """charmt's greedy search with its PyTorch engine, on tensors as this script's experiments call it."""
    engine = _ENGINES.setdefault(id(model), TorchEngine(model))
    return greedy_search(engine, src.numpy(), src_lengths.numpy(), np.asarray(max_lengths),
                         stop_repeats=stop_repeats)


@torch.inference_mode()
def lookup_greedy_decode(model: Seq2Seq, src, src_lengths, max_lengths, *, stop_repeats: bool = True):
    """greedy_decode for a one-layer, one-hot, attention-free model (the seed network), with the same stopping
    rules. The input weights' columns are looked up (what a one-hot matmul computes), the recurrent matmul and
    the gates are computed by hand, and the repetition check keeps one run length per unit instead of
    re-comparing the whole tail at every step."""
    lstm, out = model.decoder.lstm, model.decoder.output
    table = (lstm.weight_ih_l0.t() + lstm.bias_ih_l0 + lstm.bias_hh_l0).contiguous()  # (V, 4H)
    w_hh, w_out = lstm.weight_hh_l0.t().contiguous(), out.weight.t().contiguous()
    state = model.encode(src, src_lengths)
    h, c = state.h[0], state.c[0]
    B, steps = src.shape[0], int(max_lengths.max())
    units = torch.arange(1, MAX_REPEAT_UNIT + 1)
    need = torch.tensor([u * (8 if u == 1 else 4) - u for u in units.tolist()])  # run length that means a loop
    runs = torch.zeros(B, MAX_REPEAT_UNIT, dtype=torch.long)
    history = torch.zeros(B, steps, dtype=torch.long)
    lengths = torch.zeros(B, dtype=torch.long)
    active = torch.arange(B)
    prev = torch.full((B,), START_ID, dtype=torch.long)
    limits = max_lengths.clone()
    for step in range(steps):
        gates = torch.addmm(table[prev], h, w_hh)
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        token = torch.addmm(out.bias, h, w_out).argmax(dim=-1)
        history[active, step] = token
        done = (token == END_ID) | (step + 1 >= limits[active])
        if stop_repeats:
            back = step - units  # the position each unit compares the new character with
            same = (back >= 0) & (history[active[:, None], back.clamp(min=0)[None, :]] == token[:, None])
            runs = (runs + 1) * same
            done |= (runs >= need).any(dim=1)
        if done.any():
            lengths[active[done]] = step + 1
            keep = (~done).nonzero()[:, 0]
            if keep.numel() == 0:
                break
            active, h, c, token, runs = active[keep], h[keep], c[keep], token[keep], runs[keep]
        prev = token
    return [_trim(history[b, : int(lengths[b])].tolist(), stop_repeats) for b in range(B)]


# --- 1. threads, in worker processes -------------------------------------------------------------------------

WORKERS = {"2 threads (default)": ({}, 0), "1 thread": ({}, 1),
           "2 threads, OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0)}


def worker(args) -> None:
    """Answers 'train N' and 'greedy N' with a JSON line of throughput."""
    setup_threads(args.threads)
    selection, source_vocab, target_vocab = load_seed_selection(args.data)
    config = ModelConfig(src_vocab_size=len(source_vocab), tgt_vocab_size=len(target_vocab))
    data = encode_pairs(selection.train, source_vocab, target_vocab)
    trainer = CharmtTrainer(config, TrainConfig(), data, precision="fp32")
    epoch = make_batches(data, 64, torch.Generator().manual_seed(0), True)
    model = Seq2Seq(config).eval()
    with torch.no_grad():
        model.decoder.output.bias[END_ID] = -1e9
    sources = [source_vocab.encode(p.source) for p in selection.validation]
    steps = [len(p.target) + 2 for p in selection.validation]
    trainer.run(epoch[:2])
    position = {"train": 2, "greedy": 0}
    print(json.dumps({"threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        what, n = line.split()
        n, start = int(n), position[line.split()[0]]
        position[what] += n
        if what == "train":
            block = trainer.run([epoch[i % len(epoch)] for i in range(start, start + n)])
            print(json.dumps({"pairs_per_s": block["pairs"] / block["seconds"]}), flush=True)
        else:
            t0 = time.perf_counter()
            with guard_checked_but_never_stopping():
                for i in range(start, start + n):
                    k = i % len(sources)
                    greedy_decode(model, torch.tensor([sources[k]]), torch.tensor([len(sources[k])]),
                                  torch.tensor([steps[k]]))
            print(json.dumps({"sentences_per_s": n / (time.perf_counter() - t0)}), flush=True)


def threads_experiment(args) -> dict:
    procs = {}
    for name, (env, threads) in WORKERS.items():
        command = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(threads),
                   "--data", args.data]
        procs[name] = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                       env={**os.environ, **env})
        procs[name].stdout.readline()

    def ask(proc, command):
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    results = {name: {"train_pairs_per_s": [], "greedy1_sentences_per_s": []} for name in procs}
    for r in range(args.rounds):
        for name, proc in procs.items():
            results[name]["train_pairs_per_s"].append(ask(proc, f"train {args.train_steps}")["pairs_per_s"])
            results[name]["greedy1_sentences_per_s"].append(ask(proc, f"greedy {args.greedy_sentences}")
                                                            ["sentences_per_s"])
        print(f"threads round {r + 1}/{args.rounds}: " + " | ".join(
            f"{name}: train {v['train_pairs_per_s'][-1]:.0f} pairs/s, greedy-1 {v['greedy1_sentences_per_s'][-1]:.1f}"
            " sent/s" for name, v in results.items()) + f" | load {load_now()}", flush=True)
    for proc in procs.values():
        proc.stdin.close()
        proc.wait(timeout=60)
    return {name: {k + "_median": median(v) for k, v in d.items()} | d for name, d in results.items()}


# --- 2. decoding ---------------------------------------------------------------------------------------------


def decode_experiment(args, model, source_vocab, selection) -> dict:
    """`model` should be trained a little: random weights loop at once and agree trivially."""
    sources = [source_vocab.encode(p.source) for p in selection.validation][: args.sentences]
    steps = [len(p.target) + 2 for p in selection.validation][: args.sentences]
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))

    def batches(batch_size):
        for s in range(0, len(order), batch_size):
            index = order[s : s + batch_size]
            lengths = torch.tensor([len(sources[i]) for i in index])
            src = torch.full((len(index), int(lengths.max())), PAD_ID, dtype=torch.long)
            for row, i in enumerate(index):
                src[row, : len(sources[i])] = torch.tensor(sources[i])
            yield index, src, lengths, torch.tensor([steps[i] for i in index])

    variants = {
        "greedy_decode (as is)": (greedy_decode, nullcontext),
        "greedy_decode, oneDNN off": (greedy_decode, lambda: torch.backends.mkldnn.flags(enabled=False)),
        "lookup prototype": (lookup_greedy_decode, nullcontext),
        "greedy_decode, bfloat16 autocast": (greedy_decode, lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
    }

    def run(variant, batch_size, n_sentences):
        decode, context = variants[variant]
        outputs, start = {}, time.perf_counter()
        with context():
            for index, src, lengths, limits in batches(batch_size):
                if len(outputs) >= n_sentences:
                    break
                for i, tokens in zip(index, decode(model, src, lengths, limits)):
                    outputs[i] = tokens
        return len(outputs) / (time.perf_counter() - start), outputs

    # Natural stopping (END is allowed, the guard may stop): identical outputs?
    reference = run("greedy_decode (as is)", 256, len(sources))[1]
    agreement = {}
    for variant in variants:
        outs = run(variant, 256, len(sources))[1]
        agreement[variant] = sum(outs[i] == reference[i] for i in reference) / len(reference)
    print("decoding: share of sentences decoded identically to greedy_decode as is: " + ", ".join(
        f"{k} {v:.3f}" for k, v in agreement.items()), flush=True)

    with torch.no_grad():  # fixed work from here on, as in bench_translate
        bias = model.decoder.output.bias[END_ID].item()
        model.decoder.output.bias[END_ID] = -1e9
    rates = {(v, b): [] for v in variants for b in (1, 256)}
    with guard_checked_but_never_stopping():
        for v in variants:
            run(v, 1, 5), run(v, 256, 256)  # warm-up
        for r in range(args.rounds):
            for v in variants:
                rates[(v, 1)].append(run(v, 1, args.greedy_sentences)[0])
                rates[(v, 256)].append(run(v, 256, len(sources))[0])
            print(f"decoding round {r + 1}/{args.rounds}: " + " | ".join(
                f"{v} batch {b}: {x[-1]:.0f}" for (v, b), x in rates.items()) + f" sent/s | load {load_now()}",
                flush=True)
    with torch.no_grad():
        model.decoder.output.bias[END_ID] = bias
    return {v: {"identical_share": agreement[v],
                "batch1_sentences_per_s": median(rates[(v, 1)]), "batch256_sentences_per_s": median(rates[(v, 256)]),
                "batch1_blocks": rates[(v, 1)], "batch256_blocks": rates[(v, 256)]} for v in variants}


# --- 3. precision --------------------------------------------------------------------------------------------


def precision_experiment(args, config, data, valid_data) -> dict:
    """float32 vs bf16 autocast (around the forward pass only, as train() does) vs float32 without oneDNN."""
    from charmt.evaluate import teacher_forced_metrics

    variants = {"float32": ("fp32", nullcontext), "bfloat16 autocast": ("bf16", nullcontext),
                "float32, oneDNN off": ("fp32", lambda: torch.backends.mkldnn.flags(enabled=False))}

    def trainer(name):  # same seed, same initial weights for every variant
        return CharmtTrainer(config, TrainConfig(), data, precision=variants[name][0])

    epoch = make_batches(data, 64, torch.Generator().manual_seed(0), True)
    trainers = {name: trainer(name) for name in variants}
    for name, t in trainers.items():
        with variants[name][1]():
            t.run(epoch[:2])
    rates = {name: [] for name in variants}
    for r in range(args.rounds):
        batches = epoch[2 + r * args.train_steps : 2 + (r + 1) * args.train_steps]
        for name, t in trainers.items():
            with variants[name][1]():
                block = t.run(batches)
            rates[name].append(block["pairs"] / block["seconds"])
        print(f"precision round {r + 1}/{args.rounds}: " + " | ".join(
            f"{name} {x[-1]:.0f} pairs/s" for name, x in rates.items()) + f" | load {load_now()}", flush=True)
    quality = {}
    for name in variants:
        t = trainer(name)
        for e in range(args.quality_epochs):
            with variants[name][1]():
                t.run(make_batches(data, 64, torch.Generator().manual_seed(e), True))
        quality[name] = teacher_forced_metrics(t.model, valid_data, torch.device("cpu"))[0]
    print(f"validation loss after {args.quality_epochs} epochs (evaluated in float32): " + ", ".join(
        f"{name} {loss:.4f}" for name, loss in quality.items()), flush=True)
    return {name: {"pairs_per_s_median": median(rates[name]), "pairs_per_s": rates[name],
                   "validation_loss": quality[name]} for name in variants} | {"epochs": args.quality_epochs}


# --- 6. torch.compile ---------------------------------------------------------------------------------------


def compile_experiment(args, model) -> dict:
    lstm, out = model.decoder.lstm, model.decoder.output
    table = (lstm.weight_ih_l0.t() + lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().contiguous()
    w_hh, w_out, b_out = (lstm.weight_hh_l0.t().detach().contiguous(), out.weight.t().detach().contiguous(),
                          out.bias.detach())

    def step(token, h, c):
        i, f, g, o = torch.addmm(table[token], h, w_hh).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return torch.addmm(b_out, h, w_out).argmax(-1), h, c

    compiled = torch.compile(step, dynamic=False)
    result = {}
    for B in (1, 256):
        H = w_hh.shape[0]
        token, h, c = torch.randint(4, table.shape[0], (B,)), torch.zeros(B, H), torch.zeros(B, H)
        with torch.inference_mode():
            t0 = time.perf_counter()
            compiled(token, h, c)
            compile_s = time.perf_counter() - t0
            times = {"eager": [], "compiled": []}
            for _ in range(args.rounds):
                for name, fn in (("eager", step), ("compiled", compiled)):
                    for _ in range(5):
                        fn(token, h, c)
                    t0 = time.perf_counter()
                    for _ in range(200):
                        fn(token, h, c)
                    times[name].append((time.perf_counter() - t0) / 200 * 1e6)
        result[f"batch {B}"] = {"compile_s": compile_s, "eager_us": median(times["eager"]),
                                "compiled_us": median(times["compiled"])}
        print(f"decoder step, batch {B}: eager {median(times['eager']):.0f} us, compiled "
              f"{median(times['compiled']):.0f} us (compiling took {compile_s:.1f} s)", flush=True)
    return result


# --- 4. optimizer, 5. padding --------------------------------------------------------------------------------


def optimizer_experiment(args, config, data) -> dict:
    epoch = make_batches(data, 64, torch.Generator().manual_seed(0), True)
    runs = {}
    for foreach in (False, True):
        torch.manual_seed(0)
        model = Seq2Seq(config).train()
        optimizer = make_optimizer(model, TrainConfig())
        if foreach:
            for group in optimizer.param_groups:
                group["foreach"] = True
        times = []
        for index in epoch[: args.optimizer_steps]:
            src, lengths, tgt_in, tgt_out = collate(data, index, torch.device("cpu"))
            _, loss = model(src, lengths, tgt_in, tgt_out)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t0 = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - t0)
        runs[foreach] = (model, median(times[2:]))
    equal = all(torch.equal(a, b) for a, b in zip(runs[False][0].parameters(), runs[True][0].parameters()))
    print(f"optimizer step: default {1000 * runs[False][1]:.1f} ms, foreach {1000 * runs[True][1]:.1f} ms; "
          f"weights bitwise equal after {args.optimizer_steps} steps: {equal}", flush=True)
    return {"default_step_ms": 1000 * runs[False][1], "foreach_step_ms": 1000 * runs[True][1], "bitwise_equal": equal}


def padding_experiment(data) -> dict:
    def useful_share(batches):
        real = padded = 0
        for index in batches:
            s = [len(data.sources[i]) for i in index]
            t = [len(data.targets[i]) - 1 for i in index]
            real += sum(s) + sum(t)
            padded += len(index) * (max(s) + max(t))
        return real / padded

    bucketed = make_batches(data, 64, torch.Generator().manual_seed(0), True)
    unbucketed = make_batches(data, 64, torch.Generator().manual_seed(0), False)
    order = sorted(range(len(data)), key=lambda i: (len(data.targets[i]), len(data.sources[i])))
    by_target = [order[s : s + 64] for s in range(0, len(order), 64)]
    result = {"bucketed (train's default)": useful_share(bucketed), "not bucketed": useful_share(unbucketed),
              "sorted by target length first (whole set)": useful_share(by_target)}
    print("share of computed LSTM steps that are real characters (encoder + decoder): " + ", ".join(
        f"{k} {v:.3f}" for k, v in result.items()), flush=True)
    return result


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=8, help="training steps per block (threads experiment)")
    p.add_argument("--greedy-sentences", type=int, default=50, help="sentences per batch-1 decoding block")
    p.add_argument("--sentences", type=int, default=1000, help="sentences for batched decoding and agreement")
    p.add_argument("--optimizer-steps", type=int, default=12)
    p.add_argument("--quality-epochs", type=int, default=2, help="epochs per model for the precision comparison")
    p.add_argument("--agree-epochs", type=int, default=2, help="epochs of training before the decoding check")
    p.add_argument("--skip", default="", help="comma-separated: threads,decode,precision,optimizer,padding,compile")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    setup_threads(args.threads)
    env = environment()
    print_environment(env)
    skip = set(args.skip.split(","))
    selection, source_vocab, target_vocab = load_seed_selection(args.data)
    config = ModelConfig(src_vocab_size=len(source_vocab), tgt_vocab_size=len(target_vocab))
    data = encode_pairs(selection.train, source_vocab, target_vocab)
    results = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}}
    if "padding" not in skip:
        results["padding"] = padding_experiment(data)
    if "optimizer" not in skip:
        results["optimizer"] = optimizer_experiment(args, config, data)
    if "precision" not in skip:
        valid_data = encode_pairs(selection.validation, source_vocab, target_vocab)
        results["precision"] = precision_experiment(args, config, data, valid_data)
    if "decode" not in skip:
        trainer = CharmtTrainer(config, TrainConfig(), data, precision="fp32")
        for e in range(args.agree_epochs):
            trainer.run(make_batches(data, 64, torch.Generator().manual_seed(e), True))
        results["decode"] = decode_experiment(args, trainer.model.eval(), source_vocab, selection)
    if "compile" not in skip:
        torch.manual_seed(0)
        results["compile"] = compile_experiment(args, Seq2Seq(config).eval())
    if "threads" not in skip:
        results["threads"] = threads_experiment(args)
    results["environment_end"] = environment()
    save_results(args.out, "speedups", results)


if __name__ == "__main__":
    main()
