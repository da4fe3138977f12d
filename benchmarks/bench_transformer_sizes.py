"""Training throughput of Transformer shapes, to choose the `transformer` preset's sizes by (issue 23).

    python benchmarks/bench_transformer_sizes.py 256,3,1024,8000,bf16 256,3,1024,8000,fp32 256,2,1024,8000,bf16

Each SPEC is width,layers,feed-forward,vocabulary,precision[,dropout[,attention]]: dropout 0.1 unless given;
attention `matmul` (charmt's own: plain matrix products on a CPU without dropout, SDPA otherwise; the default) or
`sdpa` (PyTorch's scaled_dot_product_attention always, as before), to compare the two side by side:

    python benchmarks/bench_transformer_sizes.py 256,2,1024,8000,bf16,0.1,sdpa 256,2,1024,8000,bf16,0.1,matmul \
        256,2,1024,8000,bf16,0,sdpa 256,2,1024,8000,bf16,0,matmul

The batches are fixed (64 pairs of 12 source and 14 target pieces, the length of a Tatoeba sentence in 8k
SentencePiece units), AdamW, label smoothing 0.1; the median of 10 steps after 3 warm-up steps is reported. Run
it on an otherwise idle machine.
"""

from __future__ import annotations

import contextlib
import time

import torch
from _common import environment, parser, print_environment, save_results, setup_threads

from charmt.config import ModelConfig
from charmt.families.transformer import Attention
from charmt.model import build_model
from charmt.training import training_autocast

BATCH, SOURCE, TARGET = 64, 12, 14


@contextlib.contextmanager
def attention_path(name: str):
    if name not in ("matmul", "sdpa"):
        raise SystemExit(f"attention must be matmul or sdpa, got {name!r}")
    library_choice = Attention.__dict__["multiplies_itself"]  # the staticmethod itself
    if name == "sdpa":
        Attention.multiplies_itself = staticmethod(lambda q, dropout: False)
    try:
        yield
    finally:
        Attention.multiplies_itself = library_choice


def pairs_per_s(width: int, layers: int, ff: int, vocab: int, precision: str, steps: int,
                dropout: float = 0.1) -> tuple[float, int]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="transformer", src_vocab_size=vocab, tgt_vocab_size=vocab, hidden_size=width,
                                    num_layers=layers, heads=4, ff_size=ff, dropout=dropout, share_embeddings=True))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = training_autocast(precision, torch.device("cpu"))
    times = []
    for _ in range(steps + 3):
        src, tgt = torch.randint(4, vocab, (BATCH, SOURCE)), torch.randint(4, vocab, (BATCH, TARGET + 1))
        start = time.perf_counter()
        with autocast:
            _, loss = model(src, torch.full((BATCH,), SOURCE), tgt[:, :-1], tgt[:, 1:], label_smoothing=0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    timed = sorted(times[3:])
    return BATCH / timed[len(timed) // 2], model.num_parameters()


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("specs", nargs="+", metavar="SPEC",
                   help="width,layers,feed-forward,vocabulary,precision[,dropout[,attention]]")
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    setup_threads(args.threads)
    env = environment()
    print_environment(env)
    results = {}
    for spec in args.specs:
        fields = spec.split(",")
        width, layers, ff, vocab, precision, dropout, attention = fields + ["0.1", "matmul"][len(fields) - 5 :]
        with attention_path(attention):
            speed, parameters = pairs_per_s(int(width), int(layers), int(ff), int(vocab), precision, args.steps,
                                            float(dropout))
        results[spec] = {"pairs_per_s": speed, "parameters": parameters}
        print(f"width {width}, {layers}+{layers} layers, feed-forward {ff}, vocabulary {vocab}, {precision}, "
              f"dropout {dropout}, attention {attention}: {speed:.0f} pairs/s ({parameters / 1e6:.1f} M parameters)",
              flush=True)
    save_results(args.out, "transformer_sizes", {"environment": env, "results": results})


if __name__ == "__main__":
    main()
