"""What the Transformer's dropout masks cost a CPU training step: PyTorch's, charmt's, none (issue 23).

    python benchmarks/bench_dropout_masks.py [--data fra.txt] [--minutes 3] [--layers 2]

PyTorch draws a CPU dropout mask from its Mersenne Twister one number per element on one thread; charmt's
`_residual_dropout` takes 16 bits per element from NumPy's SFC64. This trains the `transformer` preset on `--data`
for `--minutes` and switches between the three ways every 10 steps (after 40 steps of warm-up), so that all three
meet the same batches' lengths and a machine whose speed drifts slows all three alike; the median time per step of
each is reported per 1,000 token positions of its batch (source plus target, padding included), as batches differ
in length (the time between two "step" events: the step, its progress report, and nothing else). The model
directory goes to a temporary folder. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace

import torch.nn.functional as F
from _common import environment, parser, print_environment, save_results, setup_threads

import charmt.families.transformer as transformer
import charmt.training
from charmt.config import preset_configs

MASKS = {
    "torch": lambda x, p: F.dropout(x, p, training=p > 0),
    "charmt": transformer._residual_dropout,
    "none": lambda x, p: x,
}
WARM_UP_STEPS, STEPS_EACH = 40, 10


def step_times(data: str, minutes: float, layers: int) -> tuple[dict[str, list[float]], dict]:
    model_config, train_config, selection = preset_configs("transformer")
    names = list(MASKS)
    times: dict[str, list[float]] = {name: [] for name in names}
    clock = {"steps": 0, "last": None, "name": names[0]}
    started: dict = {}
    collate = charmt.training.collate
    positions = []  # of the batch being trained on

    def collate_counting(*args, **kwargs):
        src, lengths, tgt_in, tgt_out = collate(*args, **kwargs)
        positions.append(src.numel() + tgt_in.numel())
        return src, lengths, tgt_in, tgt_out

    def on_event(event: str, info: dict) -> None:
        if event == "start":
            started.update(info)
        if event != "step":
            return
        now = time.perf_counter()
        if clock["last"] is not None and clock["steps"] > WARM_UP_STEPS:
            times[clock["name"]].append((now - clock["last"]) / positions[-1] * 1000)
        clock["steps"] += 1
        clock["name"] = names[clock["steps"] // STEPS_EACH % len(names)]
        transformer._residual_dropout = MASKS[clock["name"]]
        clock["last"] = time.perf_counter()

    charmt.training.collate = collate_counting
    try:
        with tempfile.TemporaryDirectory() as out:
            charmt.training.train(data, out, model_config=replace(model_config, num_layers=layers),
                  train_config=replace(train_config, time_budget_minutes=minutes), selection=selection,
                  preset="transformer", callback=on_event)
    finally:
        transformer._residual_dropout = MASKS["charmt"]
        charmt.training.collate = collate
    return times, started


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0, help="training time (default: %(default)s)")
    p.add_argument("--layers", type=int, default=2, help="encoder and decoder layers (default: the preset's 2)")
    args = p.parse_args()
    setup_threads(args.threads)
    env = environment()
    print_environment(env)
    times, started = step_times(args.data, args.minutes, args.layers)
    medians = {name: statistics.median(t) for name, t in times.items()}
    results = {}
    for name, median in medians.items():
        results[name] = {"steps": len(times[name]), "median_ms_per_1000_positions": median * 1e3,
                         "masks_share_of_step": (median - medians["none"]) / median}
        print(f"{name:>6} masks: {median * 1e3:5.2f} ms per 1,000 positions (median of {len(times[name])} steps), "
              f"masks {results[name]['masks_share_of_step']:.1%} of the step", flush=True)
    print(f"charmt's masks against PyTorch's: {medians['torch'] / medians['charmt']:.3f}x the steps "
          f"({started.get('precision')}, {args.layers} + {args.layers} layers)")
    save_results(args.out, f"dropout_masks_{args.layers}_layers", {"environment": env, "layers": args.layers,
                                                                   "minutes": args.minutes, "start": started,
                                                                   "results": results})


if __name__ == "__main__":
    main()
