"""Memory and scale: charmt training on growing pools of fra-eng (10k, 40k, all 164k pairs, every length).

    .venv-bench/bin/python benchmarks/bench_scale.py            # about 3-5 minutes on 2 cores (.venv works too)

Each pool trains in a process of its own, so each peak RSS (getrusage) is that pool's alone; the processes take
turns running blocks of steps, then each runs its longest batch, the step that needs the most memory. The steps
are a stratified sample of the pool's epoch (bucketed, as train() makes it): batches at evenly spaced quantiles
of their padded size. An epoch's time is extrapolated: steps per epoch x mean sampled step time. For comparison,
the Keras example's three one-hot arrays for the same pools are sized by formula (N x max length x vocabulary
x 4 bytes each).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

from _common import environment, load_now, median, parser, peak_rss_mb, print_environment, save_results, setup_threads

POOLS = (10_000, 40_000, 0)  # 0: the whole pool


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args) -> None:
    """One pool: load, build, then answer 'block' / 'longest' / 'quit' on stdin with a JSON line each."""
    import torch
    from bench_train import CharmtTrainer

    from charmt.batching import encode_pairs, make_batches
    from charmt.config import ModelConfig, SelectionConfig, TrainConfig, preset_configs
    from charmt.data import read_corpus, select
    from charmt.vocab import Vocab

    setup_threads(args.threads)
    rss_start = _rss_now_mb()
    selection_config = SelectionConfig(max_input_length=None, dedupe=False, num_samples=args.pool or None)
    selection = select(read_corpus(args.data), selection_config)
    pairs = selection.all_pairs
    source_vocab, target_vocab = Vocab.build(p.source for p in pairs), Vocab.build(p.target for p in pairs)
    data = encode_pairs(selection.train, source_vocab, target_vocab)
    if args.model == "seed":
        model_config, train_config = ModelConfig(), TrainConfig()
    else:
        model_config, train_config, _ = preset_configs(args.model)
    model_config = replace(model_config, src_vocab_size=len(source_vocab), tgt_vocab_size=len(target_vocab))
    trainer = CharmtTrainer(model_config, train_config, data)
    rss_data = _rss_now_mb()
    epoch = make_batches(data, train_config.batch_size, torch.Generator().manual_seed(0), True)

    def cost(batch):  # characters the LSTMs step through, padding included
        return len(batch) * (max(len(data.sources[i]) for i in batch) + max(len(data.targets[i]) for i in batch))

    # A stratified sample: batches at evenly spaced quantiles of cost, so every pool is measured on the same
    # kind of batches (a plain random sample of a few steps swings with the odd long batch); consecutive
    # blocks take every n-th quantile, so each block spans short and long batches alike.
    by_cost, n = sorted(epoch, key=cost), args.sample
    quantiles = [by_cost[int((k + 0.5) * len(by_cost) / n)] for k in range(n)]
    blocks = max(1, n // args.block)
    sample = [quantiles[k] for start in range(blocks) for k in range(start, n, blocks)]
    longest = by_cost[-1]
    trainer.run(epoch[:2])  # warm-up
    next_batch = 0
    epoch_chars = sum(len(s) for s in data.sources) + sum(len(t) - 1 for t in data.targets)
    print(json.dumps({"ready": True, "train_pairs": len(data), "steps_per_epoch": len(epoch),
                      "epoch_chars": epoch_chars, "rss_start_mb": rss_start, "rss_after_data_mb": rss_data,
                      "parameters": trainer.model.num_parameters()}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if command[0] == "block":
            n = int(command[1])
            block = trainer.run(sample[next_batch : next_batch + n])
            next_batch += n
        elif command[0] == "longest":
            block = trainer.run([longest])
            block["longest_source"] = max(len(data.sources[i]) for i in longest)
            block["longest_target"] = max(len(data.targets[i]) for i in longest)
        else:
            return
        block["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(block), flush=True)


class Pool:
    def __init__(self, args, pool: int, model: str):
        command = [sys.executable, os.path.abspath(__file__), "--child", "--pool", str(pool), "--model", model,
                   "--data", args.data, "--threads", str(args.threads), "--sample", str(args.rounds * args.steps),
                   "--block", str(args.steps)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = json.loads(self.proc.stdout.readline())

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def onehot_sizes(args) -> dict:
    """The example's arrays for each pool, by formula, with the example's own vocabularies and padded lengths."""
    from keras_reference import onehot_bytes

    from charmt.config import SelectionConfig
    from charmt.data import read_corpus, select

    corpus = read_corpus(args.data)
    sizes = {}
    for pool in POOLS:
        pairs = select(corpus, SelectionConfig(max_input_length=None, dedupe=False, num_samples=pool or None,
                                               validation_fraction=0.0)).all_pairs
        targets = ["\t" + p.target + "\n" for p in pairs]
        sizes[str(pool or len(pairs))] = onehot_bytes([p.source for p in pairs], targets)
    return sizes


def run_model(args, model: str) -> dict:
    start = time.perf_counter()
    pools = [Pool(args, pool, model) for pool in POOLS]
    print(f"{model}: pools loaded in {time.perf_counter() - start:.0f} s: " + ", ".join(
        f"{p.info['train_pairs']} training pairs ({p.info['steps_per_epoch']} steps/epoch)" for p in pools), flush=True)
    blocks: list[list[dict]] = [[] for _ in pools]
    for r in range(args.rounds):
        for p, bs in zip(pools, blocks):
            bs.append(p.ask(f"block {args.steps}"))
        print(f"{model} round {r + 1}/{args.rounds}: " + " | ".join(
            f"{p.info['train_pairs']}: {median(b[-1]['step_times']):.3f} s/step" for p, b in zip(pools, blocks))
            + f" | load {load_now()}", flush=True)
    out = {}
    for p, bs in zip(pools, blocks):
        longest = p.ask("longest")
        p.close()
        times = [t for b in bs for t in b["step_times"]]
        chars = sum(b["src_chars"] + b["tgt_steps"] for b in bs)
        seconds = sum(b["seconds"] for b in bs)
        mean_step = sum(times) / len(times)
        row = {**p.info, "sampled_steps": len(times), "mean_step_s": mean_step, "median_step_s": median(times),
               "chars_per_s": chars / seconds,
               "epoch_minutes_by_steps": p.info["steps_per_epoch"] * mean_step / 60,
               "epoch_minutes_by_chars": p.info["epoch_chars"] / (chars / seconds) / 60,
               "longest_batch": {"source": longest["longest_source"], "target": longest["longest_target"],
                                 "seconds": longest["seconds"]},
               "peak_rss_mb": longest["peak_rss_mb"]}
        out[str(p.info["train_pairs"])] = row
        print(f"{model} pool {p.info['train_pairs']:>6} training pairs: {mean_step:.3f} s/step (mean of "
              f"{len(times)}), epoch ~ {row['epoch_minutes_by_steps']:.1f} min by steps / "
              f"{row['epoch_minutes_by_chars']:.1f} min by characters; peak RSS {row['peak_rss_mb']:.0f} MB "
              f"(after data {p.info['rss_after_data_mb']:.0f} MB; longest batch {longest['longest_source']}+"
              f"{longest['longest_target']} chars, {longest['seconds']:.1f} s)", flush=True)
    per_pair = [row["epoch_minutes_by_chars"] / row["train_pairs"] for row in out.values()]
    print(f"{model}: epoch minutes per 1k training pairs: " + ", ".join(f"{1000 * x:.3f}" for x in per_pair)
          + " (constant = linear cost)", flush=True)
    return out


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", default="seed,base", help="comma-separated: seed (the example's network), base")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="steps per block")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sample", type=int, default=18, help=argparse.SUPPRESS)
    p.add_argument("--block", type=int, default=6, help=argparse.SUPPRESS)
    p.add_argument("--pool", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--model", default="seed", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    setup_threads(args.threads)
    env = environment()
    print_environment(env)
    results = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}}
    results["onehot_bytes"] = onehot_sizes(args)
    for n, size in results["onehot_bytes"].items():
        print(f"the example's one-hot arrays for {n} pairs: {size['pairs']} x ({size['max_encoder_seq_length']} x "
              f"{size['num_encoder_tokens']} + 2 x {size['max_decoder_seq_length']} x {size['num_decoder_tokens']}) "
              f"x 4 bytes = {size['total_bytes'] / 1e9:.1f} GB", flush=True)
    for model in args.models.split(","):
        results[model] = run_model(args, model)
    results["environment_end"] = environment()
    save_results(args.out, "scale", results)


if __name__ == "__main__":
    main()
