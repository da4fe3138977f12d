"""Turn the benchmark JSON files into one markdown summary (results/summary.md) with the issue's targets.

    python benchmarks/report.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import RESULTS_DIR


def _load(out: Path, name: str) -> dict | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _env_line(name: str, results: dict) -> str:
    start, end = results["environment"], results.get("environment_end", {})
    return (f"| {name} | {start['time']} | {start['cpu_count']} | {start['torch_threads']} | "
            f"{start['load_average']} -> {end.get('load_average', '?')} | {start.get('env') or ''} |")


def _mode(translate: dict, prefix: str) -> dict | None:
    return next((v for k, v in translate["modes"].items() if k.startswith(prefix)), None)


def summary(out: Path) -> str:
    train, translate, scale, speedups = (_load(out, n) for n in ("train", "translate", "scale", "speedups"))
    lines = ["# Benchmark summary", "",
             "Medians over interleaved rounds. The load average is the machine's (shared): numbers taken under load "
             "are noisy and low; re-run on a quiet machine before quoting them.", "",
             "| script | started | cpus | torch threads | load average (start -> end) | thread env |",
             "|---|---|---|---|---|---|"]
    for name, results in (("train", train), ("translate", translate), ("scale", scale), ("speedups", speedups)):
        if results:
            lines.append(_env_line(name, results))
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]

    def target(text, value, fmt, ok):
        lines.append(f"| {text} | {fmt.format(value) if value is not None else 'not measured'} | "
                     f"{'n/a' if value is None else ('yes' if ok(value) else 'NO')} |")

    seed = train["seed"] if train else {}
    target("training, seed config, float32: charmt pairs/s >= 4x the reference's", seed.get("speedup_pairs_per_s"),
           "{:.2f}x", lambda v: v >= 4)
    if "speedup_pairs_per_s_bf16" in seed:
        target("training, seed config, bf16 autocast (train()'s default on this CPU): >= 4x the reference's",
               seed["speedup_pairs_per_s_bf16"], "{:.2f}x", lambda v: v >= 4)
    target("useful FLOP/s > 50% of the fp32 matmul peak", seed.get("charmt", {}).get("fraction_of_peak"),
           "{:.0%}", lambda v: v > 0.5)
    greedy_batched = _mode(translate, "charmt greedy batch 2") if translate else None
    greedy_one = _mode(translate, "charmt greedy batch 1") if translate else None
    target("greedy translation, batched: >= 1,000 sentences/s",
           greedy_batched and greedy_batched["sentences_per_s"], "{:.0f} sentences/s", lambda v: v >= 1000)
    target("greedy translation, one at a time: >= 50 sentences/s",
           greedy_one and greedy_one["sentences_per_s"], "{:.1f} sentences/s", lambda v: v >= 50)
    if scale:
        for model in ("seed", "base"):
            if model in scale:
                full = max(scale[model].values(), key=lambda row: row["train_pairs"])
                target(f"full pool ({full['train_pairs']} training pairs, {model} network): peak RSS <= 2 GB",
                       full["peak_rss_mb"], "{:.0f} MB", lambda v: v <= 2048)

    if train:
        lines += ["", "## Training (seed configuration: 64 pairs per batch, latent 512)", "",
                  "| | pairs/s | characters/s | useful GFLOP/s | share of matmul peak | median step |",
                  "|---|---|---|---|---|---|"]
        for name in ("charmt", "charmt_bf16", "reference"):
            if name in seed:
                r = seed[name]
                executed = f" ({r['executed_gflops']:.1f} executed)" if "executed_gflops" in r else ""
                lines.append(f"| {name} | {r['pairs_per_s']:.0f} | {r['chars_per_s']:.0f} | {r['useful_gflops']:.1f}"
                             f"{executed} | {r['fraction_of_peak']:.0%} | {r['median_step_s']:.3f} s |")
        lines.append(f"\nfp32 matmul peak measured in the same run: {seed['matmul_peak_gflops']:.1f} GFLOP/s"
                     + (f"; bf16: {seed['charmt_bf16']['matmul_peak_gflops']:.1f} GFLOP/s (charmt_bf16's share is "
                        "of this one)." if "charmt_bf16" in seed else "."))
        if "train_end_to_end" in train:
            lines.append(f"charmt.train() itself, one seed epoch: {train['train_end_to_end']['pairs_per_s']:.0f} "
                         "pairs/s in its steps.")
        if "base" in train:
            b = train["base"]
            lines.append(f"`base` preset (charmt): {b['pairs_per_s']:.0f} pairs/s, {b['chars_per_s']:.0f} "
                         f"characters/s; one epoch of its {b['train_pairs']} training pairs ~ "
                         f"{b['epoch_minutes_estimate']:.0f} min.")
    if translate:
        lines += ["", "## Translation (seed-size model, random weights, fixed output lengths)", "",
                  "| mode | sentences/s | characters/s |", "|---|---|---|"]
        for name, r in translate["modes"].items():
            lines.append(f"| {name} | {r['sentences_per_s']:.1f} | {r['chars_per_s']:.0f} |")
    if scale:
        lines += ["", "## Scale and memory (fra-eng pools, all lengths, no dedupe)", "",
                  "| network | training pairs | s/step (mean) | epoch, min (by steps / by characters) | "
                  "min per 1k pairs | peak RSS MB | RSS after data MB |", "|---|---|---|---|---|---|---|"]
        for model in ("seed", "base"):
            for row in scale.get(model, {}).values():
                lines.append(f"| {model} | {row['train_pairs']} | {row['mean_step_s']:.3f} | "
                             f"{row['epoch_minutes_by_steps']:.1f} / {row['epoch_minutes_by_chars']:.1f} | "
                             f"{1000 * row['epoch_minutes_by_chars'] / row['train_pairs']:.3f} | "
                             f"{row['peak_rss_mb']:.0f} | {row['rss_after_data_mb']:.0f} |")
        lines += ["", "The example's one-hot arrays for the same pools (3 float32 arrays, by formula):", "",
                  "| pairs | encoder | decoder in + target | total |", "|---|---|---|---|"]
        for size in scale["onehot_bytes"].values():
            lines.append(f"| {size['pairs']} | {size['pairs']} x {size['max_encoder_seq_length']} x "
                         f"{size['num_encoder_tokens']} | 2 x {size['pairs']} x {size['max_decoder_seq_length']} x "
                         f"{size['num_decoder_tokens']} | {size['total_bytes'] / 1e9:.1f} GB |")
    if speedups:
        lines += ["", "## Candidate speedups", ""]
        if "decode" in speedups:
            lines += ["| decoder | batch 1 sentences/s | batch 256 sentences/s | identical outputs |",
                      "|---|---|---|---|"]
            for name, r in speedups["decode"].items():
                lines.append(f"| {name} | {r['batch1_sentences_per_s']:.1f} | {r['batch256_sentences_per_s']:.0f} | "
                             f"{r['identical_share']:.1%} |")
        if "threads" in speedups:
            lines += ["", "| threads | training pairs/s | greedy batch 1 sentences/s |", "|---|---|---|"]
            for name, r in speedups["threads"].items():
                lines.append(f"| {name} | {r['train_pairs_per_s_median']:.0f} | "
                             f"{r['greedy1_sentences_per_s_median']:.1f} |")
        if "precision" in speedups:
            lines += ["", "| training precision | pairs/s | validation loss after "
                      f"{speedups['precision']['epochs']} epochs |", "|---|---|---|"]
            for name, r in speedups["precision"].items():
                if isinstance(r, dict):
                    lines.append(f"| {name} | {r['pairs_per_s_median']:.0f} | {r['validation_loss']:.3f} |")
        if "compile" in speedups:
            lines.append("\nDecoder step (prototype), eager vs torch.compile: " + "; ".join(
                f"{k}: {r['eager_us']:.0f} vs {r['compiled_us']:.0f} us (compiling {r['compile_s']:.0f} s)"
                for k, r in speedups["compile"].items()) + ".")
        if "optimizer" in speedups:
            o = speedups["optimizer"]
            lines.append(f"\nRMSprop step: default {o['default_step_ms']:.1f} ms, foreach {o['foreach_step_ms']:.1f} "
                         f"ms (bitwise equal: {o['bitwise_equal']}).")
        if "padding" in speedups:
            lines.append("Share of computed LSTM steps that are real characters: " + ", ".join(
                f"{k} {v:.1%}" for k, v in speedups["padding"].items()) + ".")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args()
    text = summary(args.out)
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
