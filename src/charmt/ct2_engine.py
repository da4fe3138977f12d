"""Translating with CTranslate2: the engine that runs a CTranslate2 export (`charmt export --ctranslate2`).

CTranslate2 runs its own greedy and beam searches, so this engine offers `search` (the whole search of a batch)
where the PyTorch and onnxruntime engines offer one step at a time for decode.py's searches. Both searches are the
same algorithm: the beam keeps the 2K best candidates, a hypothesis ends on END among the best K, a sentence stops
with K finished, scores are log-probabilities over length**length_penalty with END counted. What CTranslate2 lacks
is applied to what it returns: each sentence's own length cap and the repetition guard (decode.finish_tokens),
exactly as decode.py would have stopped a greedy search, and nearly so a beam search (a hypothesis cut by the guard
or its cap keeps CTranslate2's score). Imports neither PyTorch nor onnxruntime (`pip install 'charmt[ct2]'`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from .checkpoint import config_path as charmt_config
from .checkpoint import load_info, read_json
from .errors import ConfigError, ModelFormatError
from .vocab import END_ID, PAD_ID, piece_strings

MODEL_FILE = "model.bin"  # as CTranslate2 writes it
BATCH = 32  # sentences per CTranslate2 batch


class Ct2Engine:
    """`decode.Engine` over a CTranslate2 model folder. `threads`: CTranslate2's intra-op threads per batch;
    `workers`: batches run side by side (CTranslate2's inter_threads; None: one per core this process may use).

    One thread per batch and one batch per core: on the 2-core machines this project is measured on, two threads
    on one batch made batched greedy decoding 2-5x slower and one sentence per call 10x, while two batches side by
    side doubled batched greedy (1,100 -> 2,200 sentences/s) at the same cost per call (benchmarks/RESULTS.md).
    Each search cuts its sentences into batches of BATCH for the workers to share."""

    name = "ct2"
    model = None  # no PyTorch module
    group_sentences = 8  # Translator hands it 8 x its batch size at once, which CTranslate2 cuts into BATCH

    def __init__(self, directory: str | os.PathLike, device: str = "auto", *, threads: int = 1,
                 workers: int | None = None):
        try:
            import ctranslate2
        except ImportError:
            raise ConfigError(f"{directory} is a CTranslate2 export, and ctranslate2 is not installed: "
                              "pip install 'charmt[ct2]'") from None
        directory = Path(directory)
        self.info = load_info(directory)
        self.export = read_json(charmt_config(directory)).get("export") or {}
        device = str(device)
        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        kind, _, index = device.partition(":")
        if kind not in ("cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
        if kind == "cuda" and ctranslate2.get_cuda_device_count() == 0:
            raise ConfigError("--device cuda was asked for, but CTranslate2 sees no CUDA device; use --device cpu")
        self.device = device
        self.file = directory / MODEL_FILE
        if not self.file.is_file():
            raise ModelFormatError(f"{self.file} is missing: {directory} is not a complete CTranslate2 export; "
                                   "export the model again (charmt export MODEL --ctranslate2 DIR)")
        # CTranslate2 sets its intra-op threads as OpenMP's process-wide count, which PyTorch's OpenMP also reads:
        # a PyTorch model in the same process (a server holding both) would drop to one thread. Put it back.
        torch = sys.modules.get("torch")
        torch_threads = torch.get_num_threads() if torch is not None else None
        try:
            self.translator = ctranslate2.Translator(str(directory), device=kind, device_index=int(index or 0),
                                                     intra_threads=threads, inter_threads=workers or _cores())
        except (RuntimeError, ValueError) as err:
            raise ModelFormatError(f"{directory} cannot be loaded by CTranslate2 {ctranslate2.__version__} "
                                   f"({err}); export the model again") from None
        finally:
            if torch_threads is not None and torch.get_num_threads() != torch_threads:
                torch.set_num_threads(torch_threads)
        self.description = f"CTranslate2 {self.translator.compute_type}"
        self.source_tokens = piece_strings(self.info.source_vocab)
        target_tokens = piece_strings(self.info.target_vocab)
        self.target_ids = {token: i for i, token in enumerate(target_tokens)}
        self.pad = target_tokens[PAD_ID]
        self.end = target_tokens[END_ID]

    def search(self, src: np.ndarray, src_lengths: np.ndarray, max_lengths: np.ndarray, *, beam: int = 1,
               length_penalty: float = 1.0) -> list[list[tuple[list[int], float]]]:
        """Per sentence, its hypotheses as (token ids, normalised score), best first: one for greedy (score NaN),
        up to `beam` for beam search. Hypotheses end with END where the model wrote it; never longer than the
        batch's longest cap (decode.finish_tokens cuts each to its own)."""
        tokens = self.source_tokens
        source = [[tokens[i] for i in row[:length]] for row, length in zip(src.tolist(), src_lengths.tolist())]
        # Unlike CTranslate2's defaults, as decode.py's searches: END may win the first step (an empty output), and
        # a source is never cut (after 1024 units by default).
        options = {"max_decoding_length": int(np.max(max_lengths)), "min_decoding_length": 0, "max_input_length": 0,
                   "return_end_token": True, "max_batch_size": BATCH, "length_penalty": length_penalty}
        if beam == 1:
            results = self.translator.translate_batch(source, beam_size=1, **options)
            return [[(self._ids(result.hypotheses[0]), float("nan"))] for result in results]
        # As decode.beam_search: PAD is never a candidate.
        results = self.translator.translate_batch(source, beam_size=beam, num_hypotheses=beam, return_scores=True,
                                                  suppress_sequences=[[self.pad]], **options)
        return [[(self._ids(hyp), float(score)) for hyp, score in zip(result.hypotheses, result.scores)]
                for result in results]

    def _ids(self, hypothesis: list[str]) -> list[int]:
        return [self.target_ids[token] for token in hypothesis]

    def memory_bytes(self) -> int:
        """The size of model.bin (nearly all of it weights)."""
        return self.file.stat().st_size


def _cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
