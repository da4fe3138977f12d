"""`charmt export MODEL --onnx DIR`: a model as two ONNX graphs, which onnxruntime runs without PyTorch.

    DIR/
      encoder.onnx        src (B, S) int64, lengths (B,) int64 -> the row states, then the per-sentence tensors
      decoder_step.onnx   prev (N,) int64, row states, per-sentence tensors -> logits (N, V), each row state
                          "_out"[, attention (N, S)]
      config.json         the model's config.json, and "export": what was exported and how
      split.json, README.md   copied from the model directory, when it has them

The graphs are the family's inference encoder and decoder step (model.py; an LSTM: h, c (L, B, H) and, with
attention, keys, context and bias per sentence; its encoder LSTM as ONNX's LSTM operator with each sentence's
length, so padding never changes a sentence's result), traced by PyTorch's TorchScript exporter (`dynamo=False`:
the dynamo exporter has known trouble with bidirectional LSTMs). `int8` quantizes the weights of both graphs' LSTM
and matrix products with onnxruntime's dynamic quantization, as the PyTorch int8 engine does.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .errors import ConfigError
from .model import family
from .onnx_engine import ENCODER_FILE, STEP_FILE

OPSET = 17


def export_onnx(model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, int8: bool = False,
                overwrite: bool = False) -> Path:
    """Write the ONNX export of the model in `model_dir` to `out_dir`; each graph is checked with
    `onnx.checker` before anything is written."""
    out = Path(out_dir)
    # --overwrite replaces an earlier export, never a model: its config.json would be rewritten as an export's.
    if out.exists() and out.resolve() == Path(model_dir).resolve():
        raise ConfigError(f"{out} is the model directory itself; write the export to another directory")
    if ckpt.holds_model(out):
        raise ConfigError(f"{out} holds a trained model ({ckpt.WEIGHTS_FILE} or {ckpt.CHECKPOINT_FILE}); an export "
                          "never writes into a model directory: choose another directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} is not empty; choose another directory or add --overwrite")
    try:
        import onnx
    except ImportError:
        raise ConfigError("charmt export needs the onnx package: pip install 'charmt[export]'") from None
    model, info = ckpt.load_model(model_dir, "cpu")
    graphs = _graphs(model)
    for name, graph in graphs.items():
        try:
            onnx.checker.check_model(onnx.load_from_string(graph), full_check=True)
        except onnx.checker.ValidationError as err:
            raise ConfigError(f"the exported {name} is not valid ONNX ({err}); please report this") from None
        if int8:
            graphs[name] = _quantized(graph)
    out.mkdir(parents=True, exist_ok=True)
    for name, graph in graphs.items():
        ckpt.atomic_write(out / name, graph)
    for name in (ckpt.SPLIT_FILE, ckpt.CARD_FILE, ckpt.SUBWORD_FILE):
        if (Path(model_dir) / name).is_file():
            shutil.copyfile(Path(model_dir) / name, out / name)
    from . import __version__

    config = info.to_json()
    config["export"] = {"engine": "onnx", "opset": OPSET, "int8": int8, "from": Path(model_dir).resolve().name,
                        "row_states": list(family(info.model).state_names(info.model)[0]),
                        "charmt": __version__, "torch": torch.__version__}
    ckpt.write_json(out / ckpt.CONFIG_FILE, config)  # last: a directory with a config.json is a complete export
    return out


def _graphs(model) -> dict[str, bytes]:
    """The family's inference encoder and step, traced into ONNX graphs."""
    room = family(model.config)
    rows, per_sentence = room.state_names(model.config)
    encoder, step = room.inference_modules(model, for_export=True)
    encoder_args, step_args, axes = room.export_examples(model)
    step_outputs = ["logits", *(f"{name}_out" for name in rows), *(["attention"] if "attention" in axes else [])]
    return {ENCODER_FILE: _export(encoder.eval(), encoder_args, ["src", "lengths"], [*rows, *per_sentence], axes),
            STEP_FILE: _export(step.eval(), step_args, ["prev", *rows, *per_sentence], step_outputs, axes)}


def _export(module: torch.nn.Module, args: tuple, inputs: list[str], outputs: list[str], axes: dict) -> bytes:
    buffer = io.BytesIO()
    axes = {name: axis for name, axis in axes.items() if name in (*inputs, *outputs)}
    with torch.no_grad():
        torch.onnx.export(module, args, buffer, input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)
    return buffer.getvalue()


def _quantized(graph: bytes) -> bytes:
    """The graph with int8 weights (onnxruntime's dynamic quantization: activations quantized at run time)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise ConfigError("--int8 needs onnxruntime: pip install 'charmt[export]'") from None
    # onnxruntime.quantization warns through the root logger, whose first message configures logging for the whole
    # process when nothing has (logging.basicConfig); a handler for the time of the call keeps the host's as it is.
    root = logging.getLogger()
    guard = logging.NullHandler() if not root.handlers else None
    if guard is not None:
        root.addHandler(guard)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
            source.write_bytes(graph)
            # The tensors PyTorch's int8 engine quantizes (nn.LSTM and nn.Linear), no others: int8 are the encoder
            # LSTM's W and R, and the weights of the bridge, attention and decoder layers (MatMul/Gemm); the
            # embeddings and the decoder's input table (read by Gather) and all biases stay float32.
            quantize_dynamic(source, target, weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm", "LSTM"])
            return target.read_bytes()
    finally:
        if guard is not None:
            root.removeHandler(guard)
