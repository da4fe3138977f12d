"""Training and decoding throughput of the `base` network on a CUDA device (run by tools/gpu_check.sh).

    python benchmarks/bench_gpu.py --data PAIRS.txt        # about 2-3 minutes; needs CUDA

Training: `--steps` optimizer steps of the base preset, as train() runs them (length-bucketed batches, AdamW,
clipping, label smoothing), in float32 and, where the GPU computes it natively, bf16 autocast; the first 20 steps
warm cuDNN up and are not timed. Decoding: greedy and beam-5 batched translation of `--sentences` sources with
the weights after that training (a barely trained model writes outputs of realistic length; the figures are
throughput, not quality).
"""

from __future__ import annotations

import time

import torch
from _common import environment, parser, print_environment, save_results

from charmt.batching import collate, encode_pairs, make_batches
from charmt.checkpoint import ModelInfo
from charmt.config import preset_configs, updated
from charmt.data import demo_corpus, read_corpus, select
from charmt.decode import Translator
from charmt.families.lstm import Seq2Seq
from charmt.training import learning_rate, make_optimizer, training_autocast, training_precision
from charmt.vocab import Vocab


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(model, optimizer, cfg, data, batches, precision, device) -> float:
    """Pairs per second over `batches` (after the caller's warm-up)."""
    autocast = training_autocast(precision, device)
    synchronize(device)
    start, pairs = time.perf_counter(), 0
    for step, index in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step, 0.0, 1.0)
        src, lengths, tgt_in, tgt_out = collate(data, index, device)
        with autocast:
            _, loss = model(src, lengths, tgt_in, tgt_out, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
        optimizer.step()
        pairs += len(index)
    synchronize(device)
    return pairs / (time.perf_counter() - start)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(data=None)
    p.add_argument("--steps", type=int, default=300, help="timed training steps per precision (default: 300)")
    p.add_argument("--sentences", type=int, default=2000, help="sources to translate (default: 2000)")
    p.add_argument("--device", default="cuda", help="cuda, or cpu to try the script out (default: cuda)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    env = {**environment(), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none"}
    print_environment(env)
    print(f"gpu={env['gpu']}", flush=True)

    corpus = read_corpus(args.data or demo_corpus())
    model_config, cfg, selection = preset_configs("base")
    chosen = select(corpus, selection)
    source_vocab = Vocab.build(p.source for p in chosen.all_pairs)
    target_vocab = Vocab.build(p.target for p in chosen.all_pairs)
    model_config = updated(model_config, src_vocab_size=len(source_vocab), tgt_vocab_size=len(target_vocab))
    data = encode_pairs(chosen.train, source_vocab, target_vocab)
    batches = make_batches(data, cfg.batch_size, torch.Generator().manual_seed(0), True)
    while len(batches) < args.steps + 20:  # a small file: go round it again
        batches += batches
    results = {"environment": env, "data": str(args.data or "built-in demo corpus"), "train_pairs_per_s": {}}
    precisions = ["fp32"] + (["bf16"] if training_precision("auto", device) == "bf16" else [])
    for precision in precisions:
        torch.manual_seed(0)
        model = Seq2Seq(model_config).to(device).train()
        optimizer = make_optimizer(model, cfg)
        train_steps(model, optimizer, cfg, data, batches[:20], precision, device)  # warm-up
        rate = train_steps(model, optimizer, cfg, data, batches[20 : 20 + args.steps], precision, device)
        results["train_pairs_per_s"][precision] = rate
        print(f"training {precision}: {rate:,.0f} pairs/s (base, batch {cfg.batch_size}, {args.steps} steps)",
              flush=True)

    info = ModelInfo(model=model_config, source_vocab=source_vocab, target_vocab=target_vocab, preset="base",
                     max_source_length=max(len(p.source) for p in chosen.train),
                     max_target_length=max(len(p.target) for p in chosen.train))
    translator = Translator(model.eval(), info, device)
    sources = list(dict.fromkeys(p.source for p in chosen.all_pairs))[: args.sentences]
    results["decode_sentences_per_s"] = {}
    for name, beam, batch_size in (("greedy, batch 256", 1, 256), ("beam 5, batch 64", 5, 64)):
        translator.translate(sources[:batch_size], beam=beam, batch_size=batch_size, warn=False)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        outputs = translator.translate(sources, beam=beam, batch_size=batch_size, warn=False)
        synchronize(device)
        rate = len(sources) / (time.perf_counter() - start)
        results["decode_sentences_per_s"][name] = rate
        mean_chars = sum(map(len, outputs)) / len(outputs)
        print(f"decoding {name}: {rate:,.0f} sentences/s ({len(sources)} sentences, {mean_chars:.1f} output "
              "characters on average)", flush=True)
    save_results(args.out, "gpu", results)


if __name__ == "__main__":
    main()
