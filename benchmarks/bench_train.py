"""Training throughput: charmt vs the Keras reference on the seed configuration, interleaved, plus the `base` preset.

    .venv-bench/bin/python benchmarks/bench_train.py            # about 3-6 minutes on 2 cores

Each round runs one block of charmt steps (a whole epoch of its length-bucketed batches by default), one block of
reference steps (random batches of the example's padded one-hot arrays, as `fit` draws them) and one fp32 matmul,
so that a busy shared machine slows all three alike. Throughput counts only real characters: source characters
plus target steps (target characters + END), and pairs. FLOPs are the useful ones (no padding), see _common.py.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import replace

import torch
from _common import (
    environment,
    load_now,
    load_seed_selection,
    matmul_gflops,
    median,
    parser,
    peak_rss_mb,
    print_environment,
    save_results,
    seed_pair_flops,
    setup_threads,
)

from charmt.batching import collate, encode_pairs, epoch_items, make_batches
from charmt.config import ModelConfig, TrainConfig, preset_configs
from charmt.data import read_corpus, select
from charmt.families.lstm import Seq2Seq
from charmt.metrics import masked_accuracy
from charmt.training import make_optimizer, train, training_autocast, training_precision
from charmt.vocab import PAD_ID, Vocab

CPU = torch.device("cpu")


class CharmtTrainer:
    """charmt's training step exactly as train() runs it (collate, forward under the precision's autocast,
    backward, clip, step, bookkeeping). `precision` overrides train_config.precision ("auto" as train() resolves
    it)."""

    def __init__(self, model_config: ModelConfig, train_config: TrainConfig, data, precision: str | None = None):
        torch.manual_seed(0)
        self.model = Seq2Seq(model_config).train()
        self.optimizer = make_optimizer(self.model, train_config)
        self.config, self.data = train_config, data
        self.precision = training_precision(precision or train_config.precision, CPU)

    def step(self, index: list[int]) -> tuple[int, int]:
        """One optimizer step; returns (source characters, target steps) of the batch."""
        src, lengths, tgt_in, tgt_out = collate(self.data, index, CPU)
        with training_autocast(self.precision, CPU):
            logits, loss = self.model(src, lengths, tgt_in, tgt_out)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad_norm)
        self.optimizer.step()
        mask = tgt_out != PAD_ID
        tokens = int(mask.sum())
        float(loss.detach())
        masked_accuracy(logits.detach(), tgt_out, mask)
        return int(lengths.sum()), tokens

    def run(self, batches: list[list[int]]) -> dict:
        src_chars = tgt_steps = pairs = 0
        step_times = []
        start = time.perf_counter()
        for index in batches:
            t0 = time.perf_counter()
            s, t = self.step(index)
            step_times.append(time.perf_counter() - t0)
            src_chars, tgt_steps, pairs = src_chars + s, tgt_steps + t, pairs + len(index)
        return {"seconds": time.perf_counter() - start, "pairs": pairs, "src_chars": src_chars,
                "tgt_steps": tgt_steps, "step_times": step_times}


def rates(block: dict, flops: float) -> dict:
    s = block["seconds"]
    return {"pairs_per_s": block["pairs"] / s, "chars_per_s": (block["src_chars"] + block["tgt_steps"]) / s,
            "useful_gflops": flops / s / 1e9, "seconds": s, "steps": len(block["step_times"]),
            "median_step_s": median(block["step_times"])}


def summarize(blocks: list[dict]) -> dict:
    keys = ("pairs_per_s", "chars_per_s", "useful_gflops", "median_step_s")
    return {**{k: median([b[k] for b in blocks]) for k in keys}, "blocks": blocks}


def seed_benchmark(args, env: dict) -> dict:
    selection, source_vocab, target_vocab = load_seed_selection(args.data)
    model_config = ModelConfig(src_vocab_size=len(source_vocab), tgt_vocab_size=len(target_vocab))
    train_config = TrainConfig()
    H = model_config.hidden_size
    data = encode_pairs(selection.train, source_vocab, target_vocab)
    # float32 always; bf16 too where train() would use it ("auto" on a CPU with native bf16).
    precisions = ["fp32"] + (["bf16"] if training_precision("auto", CPU) == "bf16" else [])
    trainers = {p: CharmtTrainer(model_config, train_config, data, precision=p) for p in precisions}
    print(f"seed selection: {len(selection.train)} training pairs; charmt vocab {len(source_vocab)}/"
          f"{len(target_vocab)}; {trainers['fp32'].model.num_parameters():,} parameters; charmt precisions "
          f"{precisions} (train() uses {precisions[-1]} here)", flush=True)

    def charmt_flops(block):
        return seed_pair_flops(block["src_chars"], block["tgt_steps"], len(source_vocab), len(target_vocab), H)

    keras = reference_info = None
    if not args.no_reference:
        from keras_reference import ReferenceProcess

        keras = ReferenceProcess([(p.source, p.target) for p in selection.all_pairs], H)
        reference_info = keras.call("info")
        enc_shape, dec_shape = reference_info["encoder_shape"], reference_info["decoder_shape"]
        enc_v, dec_v = enc_shape[2], dec_shape[2]
        print(f"reference (Keras {reference_info['keras']}, TensorFlow {reference_info['tensorflow']}, own process): "
              f"arrays {enc_shape} + 2 x {dec_shape} = {reference_info['array_bytes'] / 2**20:.0f} MiB; "
              f"{reference_info['parameters']:,} parameters", flush=True)

        def keras_flops(block):
            return seed_pair_flops(block["src_chars"], block["tgt_steps"], enc_v, dec_v, H)

        def keras_padded_flops(block):  # what it computes, padding included
            return block["pairs"] * seed_pair_flops(enc_shape[1], dec_shape[1], enc_v, dec_v, H)

    # Warm-up: first calls build oneDNN primitives / trace the tf.function.
    warm = make_batches(data, train_config.batch_size, torch.Generator().manual_seed(999), True)
    for trainer in trainers.values():
        trainer.run(warm[: args.warmup])
    if keras:
        keras.call("train", steps=args.warmup, batch_size=train_config.batch_size)

    charmt_blocks = {p: [] for p in precisions}
    keras_blocks, peaks = [], {p: [] for p in precisions}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for r in range(args.rounds):
        for p in precisions:
            peaks[p].append(median(matmul_gflops(args.matmul_n, 3, dtypes[p])))
        batches = make_batches(data, train_config.batch_size, torch.Generator().manual_seed(r), True)
        if args.charmt_steps:
            batches = batches[: args.charmt_steps]
        line = f"round {r + 1}/{args.rounds}: peak " + "/".join(f"{peaks[p][-1]:.1f}" for p in precisions) + \
            f" GFLOP/s ({'/'.join(precisions)})"
        for p, trainer in trainers.items():
            block = trainer.run(batches)
            charmt_blocks[p].append(rates(block, charmt_flops(block)))
            b = charmt_blocks[p][-1]
            line += (f" | charmt {p} {len(batches)} steps {b['pairs_per_s']:.0f} pairs/s {b['chars_per_s']:.0f} "
                     f"chars/s {b['useful_gflops']:.1f} GFLOP/s")
        if keras:
            block = keras.call("train", steps=args.keras_steps, batch_size=train_config.batch_size)
            keras_blocks.append({**rates(block, keras_flops(block)),
                                 "executed_gflops": keras_padded_flops(block) / block["seconds"] / 1e9})
            line += (f" | reference {args.keras_steps} steps {keras_blocks[-1]['pairs_per_s']:.0f} pairs/s "
                     f"{keras_blocks[-1]['chars_per_s']:.0f} chars/s {keras_blocks[-1]['useful_gflops']:.1f} "
                     f"useful / {keras_blocks[-1]['executed_gflops']:.1f} executed GFLOP/s")
        print(line + f" | load {load_now()}", flush=True)

    # "charmt" is float32 (its share of the fp32 peak is issue 4's efficiency target); "charmt_bf16" is measured
    # against the bf16 matmul peak of the same run.
    peak = median(peaks["fp32"])
    result = {"train_pairs": len(data), "parameters": trainers["fp32"].model.num_parameters(),
              "matmul_peak_gflops": peak, "matmul_peaks": peaks["fp32"], "precision_default": precisions[-1]}
    for p in precisions:
        key = "charmt" if p == "fp32" else f"charmt_{p}"
        result[key] = summarize(charmt_blocks[p])
        result[key]["fraction_of_peak"] = result[key]["useful_gflops"] / median(peaks[p])
        result[key]["matmul_peak_gflops"] = median(peaks[p])
    if keras:
        keras.close()
        result["reference"] = {**summarize(keras_blocks), "info": reference_info}
        result["reference"]["executed_gflops"] = median([b["executed_gflops"] for b in keras_blocks])
        result["reference"]["fraction_of_peak"] = result["reference"]["useful_gflops"] / peak
        for p in precisions:
            ratios = [c["pairs_per_s"] / k["pairs_per_s"] for c, k in zip(charmt_blocks[p], keras_blocks)]
            suffix = "" if p == "fp32" else f"_{p}"
            result[f"speedup_pairs_per_s{suffix}"] = median(ratios)
            result[f"speedup_per_round{suffix}"] = ratios
    return result


def end_to_end(args) -> dict:
    """charmt.train() itself for one seed epoch: its own pairs/s (what the CLI's progress bar shows)."""
    seen: dict = {}

    def callback(event, info):
        if event in ("step", "start"):
            seen[event] = info

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(args.data, f"{tmp}/model", preset="seed",
              train_config=TrainConfig(epochs=1, eval_sentences=100, show_samples=0, checkpoint_minutes=1e9),
              callback=callback)
        seconds = time.perf_counter() - start
    pairs_per_s = seen["step"]["pairs_per_s"]
    precision = seen["start"]["precision"]
    print(f"train() one seed epoch ({precision}): {pairs_per_s:.0f} pairs/s in its steps; {seconds:.1f} s in all "
          "(reading, selection, validation and saving included)", flush=True)
    return {"pairs_per_s": pairs_per_s, "seconds_total": seconds, "precision": precision}


def base_benchmark(args) -> dict:
    """The `base` preset on its own selection (the whole pool): charmt only."""
    model_config, train_config, selection_config = preset_configs("base")
    selection = select(read_corpus(args.data), selection_config)
    pairs = selection.all_pairs
    source_vocab, target_vocab = Vocab.build(p.source for p in pairs), Vocab.build(p.target for p in pairs)
    model_config = replace(model_config, src_vocab_size=len(source_vocab), tgt_vocab_size=len(target_vocab))
    data = encode_pairs(selection.train, source_vocab, target_vocab)
    charmt = CharmtTrainer(model_config, train_config, data)  # in the precision train() would use
    epoch = make_batches(data, train_config.batch_size, torch.Generator().manual_seed(0), True)
    charmt.run(epoch[: args.warmup])
    blocks = []
    for r in range(args.rounds):
        block = charmt.run(epoch[args.warmup + r * args.base_steps : args.warmup + (r + 1) * args.base_steps])
        blocks.append({**rates(block, 0.0), "mean_step_s": block["seconds"] / len(block["step_times"])})
        print(f"base round {r + 1}/{args.rounds} ({charmt.precision}): {blocks[-1]['pairs_per_s']:.0f} pairs/s "
              f"{blocks[-1]['chars_per_s']:.0f} chars/s | load {load_now()}", flush=True)
    summary = summarize(blocks)
    del summary["useful_gflops"]
    epoch_pairs = len(epoch_items(data, train_config.short_repeats, train_config.short_source_length))
    steps_per_epoch = math.ceil(epoch_pairs / train_config.batch_size)
    summary.update(train_pairs=len(data), parameters=charmt.model.num_parameters(), steps_per_epoch=steps_per_epoch,
                   precision=charmt.precision,
                   epoch_minutes_estimate=epoch_pairs / summary["pairs_per_s"] / 60)
    print(f"base: {len(data)} training pairs, {charmt.model.num_parameters():,} parameters; one epoch ~ "
          f"{summary['epoch_minutes_estimate']:.1f} min at the median rate", flush=True)
    return summary


def main():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3, help="steps of each before timing")
    p.add_argument("--charmt-steps", type=int, default=0, help="charmt steps per round (0: a whole epoch)")
    p.add_argument("--keras-steps", type=int, default=10, help="reference steps per round")
    p.add_argument("--base-steps", type=int, default=15, help="base-preset steps per round (0: skip base)")
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--no-reference", action="store_true", help="charmt only (no Keras installed)")
    p.add_argument("--no-end-to-end", action="store_true", help="skip the one-epoch train() check")
    args = p.parse_args()
    setup_threads(args.threads)
    env = environment()
    print_environment(env)
    results = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}}
    results["seed"] = seed_benchmark(args, env)
    seed = results["seed"]
    print(f"seed, median of {args.rounds} rounds: charmt {seed['charmt']['pairs_per_s']:.0f} pairs/s, "
          f"{seed['charmt']['chars_per_s']:.0f} chars/s, {seed['charmt']['useful_gflops']:.1f} useful GFLOP/s = "
          f"{100 * seed['charmt']['fraction_of_peak']:.0f}% of the {seed['matmul_peak_gflops']:.1f} GFLOP/s matmul")
    if "reference" in seed:
        print(f"  reference {seed['reference']['pairs_per_s']:.0f} pairs/s, {seed['reference']['chars_per_s']:.0f} "
              f"chars/s, {seed['reference']['useful_gflops']:.1f} useful GFLOP/s "
              f"({seed['reference']['executed_gflops']:.1f} executed with padding); "
              f"charmt/reference pairs/s = {seed['speedup_pairs_per_s']:.2f}x in float32 (target >= 4x)")
    if "charmt_bf16" in seed:
        b = seed["charmt_bf16"]
        print(f"  charmt bf16 autocast (what train() uses here): {b['pairs_per_s']:.0f} pairs/s, "
              f"{b['chars_per_s']:.0f} chars/s, {b['useful_gflops']:.1f} useful GFLOP/s = "
              f"{100 * b['fraction_of_peak']:.0f}% of the {b['matmul_peak_gflops']:.1f} GFLOP/s bf16 matmul"
              + (f"; charmt/reference = {seed['speedup_pairs_per_s_bf16']:.2f}x" if "reference" in seed else ""))
    if not args.no_end_to_end:
        results["train_end_to_end"] = end_to_end(args)
    if args.base_steps:
        results["base"] = base_benchmark(args)
    results["peak_rss_mb"] = peak_rss_mb()
    results["environment_end"] = environment()
    save_results(args.out, "train", results)


if __name__ == "__main__":
    main()
