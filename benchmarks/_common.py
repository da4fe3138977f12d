"""Shared by the benchmark scripts: the machine's state, timing statistics, whole processes, exports, the seed data,
FLOP counts, results."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import time
from pathlib import Path

import torch

DEFAULT_DATA = os.environ.get("CHARMT_BENCH_DATA", "/work/shared/data/fra-eng/fra.txt")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Variables that change the speed (threads) or the kernels (instruction-set caps, as in an AVX2 emulation); the
# results record those that are set, so an emulated run says it was one.
RUNTIME_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "KMP_BLOCKTIME",
                     "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "CT2_FORCE_CPU_ISA")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default=DEFAULT_DATA, help="the fra-eng pair file (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the results JSON")
    return p


def setup_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def environment() -> dict:
    """What the numbers depend on; the load average says how busy the shared machine was."""
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_flags": cpu_flags(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "env": {k: os.environ[k] for k in RUNTIME_VARIABLES if k in os.environ},
    }


# The instruction sets that decide which kernels PyTorch/oneDNN run (fp32 AVX2 vs AVX-512, bf16 native or not).
_FLAGS_THAT_MATTER = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_flags() -> list[str]:
    """The CPU flags (of /proc/cpuinfo) that decide PyTorch's kernels, e.g. ['avx2', 'fma'] on an AVX2-only CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in _FLAGS_THAT_MATTER if flag in present]
    except OSError:
        pass
    return []


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def print_environment(env: dict) -> None:
    print(f"cpu_count={env['cpu_count']} torch_threads={env['torch_threads']} "
          f"interop={env['torch_interop_threads']} load_average={env['load_average']} "
          f"torch={env['torch']} cpu={env['processor']!r} flags={','.join(env['cpu_flags'])} {env['env'] or ''}",
          flush=True)


def load_now() -> str:
    """The 1-minute load average, for the per-round lines."""
    return f"{os.getloadavg()[0]:.1f}"


def median(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs) -> str:
    """'median (min-max, n)' for printing."""
    if not xs:
        return "n/a"
    return f"{median(xs):.4g} ({min(xs):.4g}-{max(xs):.4g}, n={len(xs)})"


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> list[float]:
    """GFLOP/s of an n x n x n matmul in `dtype` with the current torch threads, one value per repeat."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    return rates


def lstm_step_flops(input_size: int, hidden: int) -> int:
    """Multiply-adds x2 of one LSTM step for one sequence: the four gates' input and recurrent matmuls."""
    return 2 * 4 * hidden * (input_size + hidden)


def seed_pair_flops(src_chars: int, tgt_steps: int, src_vocab: int, tgt_vocab: int, hidden: int) -> int:
    """Useful forward+backward FLOPs of the seed network for one pair (no padding), counted as the issue asks:
    encoder LSTM per source character, decoder LSTM + output layer per target step, x3 for forward+backward."""
    forward = (src_chars * lstm_step_flops(src_vocab, hidden)
               + tgt_steps * (lstm_step_flops(tgt_vocab, hidden) + 2 * hidden * tgt_vocab))
    return 3 * forward


def load_seed_selection(data: str):
    """The example's selection (charmt's SelectionConfig defaults) and its vocabularies."""
    from charmt.config import SelectionConfig
    from charmt.data import read_corpus, select
    from charmt.vocab import Vocab

    selection = select(read_corpus(data), SelectionConfig())
    pairs = selection.all_pairs
    return selection, Vocab.build(p.source for p in pairs), Vocab.build(p.target for p in pairs)


def run_process(args: list[str]) -> float:
    """Wall seconds of a whole process (imports and model loading included); stops the benchmark if it fails."""
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
    return seconds


def rate(function, translator, sentences: int) -> float:
    """Sentences per second of `function(translator)`, which translates `sentences` sentences."""
    start = time.perf_counter()
    function(translator)
    return sentences / (time.perf_counter() - start)


def export_once(model_dir: str | os.PathLike, out: Path, engine: str, *, int8: bool = False,
                quantization: str = "float32") -> Path:
    """`out`, an export of `model_dir` (engine "onnx", with `int8`, or "ct2", with `quantization`), written with
    charmt.export unless a complete export of that kind, newer than the model, is there already."""
    from charmt.checkpoint import CONFIG_FILE, WEIGHTS_FILE, config_path, read_json
    from charmt.export import export_ctranslate2, export_onnx

    config = config_path(out)
    if config.is_file():
        done = read_json(config).get("export") or {}
        kind = done.get("int8", False) == int8 if engine == "onnx" else done.get("quantization") == quantization
        model_files = [Path(model_dir) / name for name in (WEIGHTS_FILE, CONFIG_FILE)]
        newest = max((f.stat().st_mtime for f in model_files if f.is_file()), default=0.0)
        if done.get("engine") == engine and kind and config.stat().st_mtime >= newest:
            print(f"reusing the export {out}", flush=True)
            return out
    print(f"exporting {model_dir} to {out}", flush=True)
    if engine == "onnx":
        return export_onnx(model_dir, out, int8=int8, overwrite=True)
    return export_ctranslate2(model_dir, out, quantization=quantization, overwrite=True)


def write_json(path: Path, results: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"results written to {path}", flush=True)
    return path


def save_results(out: Path, name: str, results: dict) -> Path:
    return write_json(out / f"{name}.json", results)
