"""Translating without PyTorch: the engine that runs an ONNX export (export.py) with onnxruntime, on the CPU.

decode.py's searches drive it exactly as they drive the PyTorch engine. Each session gets its own thread settings;
nothing process-wide is changed. Imports neither PyTorch nor the `onnx` package (`pip install 'charmt[onnx]'`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import CONFIG_FILE, load_info, read_json
from .errors import ConfigError, ModelFormatError

ENCODER_FILE = "encoder.onnx"  # as export.py writes them
STEP_FILE = "decoder_step.onnx"


@dataclass
class OnnxState:
    rows: dict[str, np.ndarray]  # the family's row states, one row per beam on axis 1 (an LSTM's h and c)
    per_sentence: dict[str, np.ndarray]  # one row per sentence on axis 0 (what attention reads)


class OnnxEngine:
    """`decode.Engine` over the two graphs of an ONNX export. `threads`: onnxruntime's intra-op threads of each
    session (0: its default, one per physical core)."""

    name = "onnx"
    model = None  # no PyTorch module

    def __init__(self, directory: str | os.PathLike, device: str = "auto", *, threads: int = 0):
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError(f"{directory} is an ONNX export, and onnxruntime is not installed: "
                              "pip install 'charmt[onnx]'") from None
        if str(device) not in ("auto", "cpu"):
            raise ConfigError(f"ONNX exports run on the CPU here; use --device cpu (or auto), or translate on "
                              f"{device} with the PyTorch model directory")
        directory = Path(directory)
        config = read_json(directory / CONFIG_FILE)
        self.info = load_info(directory)
        self.export = config.get("export") or {}
        self.device = "cpu"
        self.description = "onnxruntime " + ("int8" if self.export.get("int8") else "fp32")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle threads wait without spinning: on a machine shared with other work, spinning threads took turns
        # with it and one-sentence decoding ran 3-4x slower (benchmarks/RESULTS.md, inference).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.files = [directory / ENCODER_FILE, directory / STEP_FILE]
        sessions = []
        for path in self.files:
            if not path.is_file():
                raise ModelFormatError(f"{path} is missing: {directory} is not a complete ONNX export; export the "
                                       "model again (charmt export MODEL --onnx DIR)")
            try:
                sessions.append(onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
            except Exception as err:  # onnxruntime raises its own exception types for unreadable graphs
                raise ModelFormatError(f"{path} cannot be loaded by onnxruntime ({err}); export the model "
                                       "again") from None
        self.encoder, self.decoder = sessions
        # The encoder's outputs: the row states (named in the export; exports from before the Transformer family
        # did not name them: an LSTM's h and c), then the per-sentence tensors.
        self.row_names = list(self.export.get("row_states", ("h", "c")))
        self.encoder_outputs = [o.name for o in self.encoder.get_outputs()]
        self.step_outputs = [o.name for o in self.decoder.get_outputs()]

    def encode(self, src: np.ndarray, lengths: np.ndarray) -> OnnxState:
        outputs = self.encoder.run(None, {"src": src, "lengths": lengths})
        count = len(self.row_names)
        return OnnxState(dict(zip(self.row_names, outputs[:count])),
                         dict(zip(self.encoder_outputs[count:], outputs[count:])))

    def step(self, prev: np.ndarray, state: OnnxState, attention: bool = False):
        feeds = {"prev": prev, **state.rows, **state.per_sentence}
        count = len(self.row_names)
        logits, *outputs = self.decoder.run(None if attention else self.step_outputs[: 1 + count], feeds)
        weights = outputs[count:]
        return logits, OnnxState(dict(zip(self.row_names, outputs[:count])), state.per_sentence), \
            weights[0] if weights else None

    def select(self, state: OnnxState, rows: np.ndarray, sentences: np.ndarray | None = None) -> OnnxState:
        per_sentence = state.per_sentence
        if sentences is not None:
            per_sentence = {name: value[sentences] for name, value in per_sentence.items()}
        return OnnxState({name: value[:, rows] for name, value in state.rows.items()}, per_sentence)

    def memory_bytes(self) -> int:
        """The size of the two graphs (nearly all of it weights)."""
        return sum(path.stat().st_size for path in self.files)
