"""`charmt export MODEL --onnx DIR`: a model as two ONNX graphs, which onnxruntime runs without PyTorch.

    DIR/
      encoder.onnx        src (B, S) int64, lengths (B,) int64 -> h, c (L, B, H)
                          [, keys (B, H, S), context (B, S, H), bias (B, S)]       (models with attention)
      decoder_step.onnx   prev (N,) int64, h, c [, keys, context, bias] -> logits (N, V), h, c [, attention (N, S)]
      config.json         the model's config.json, and "export": what was exported and how
      split.json, README.md   copied from the model directory, when it has them

The graphs are torch_engine's `InferenceEncoder` (its LSTM as ONNX's LSTM operator with each sentence's length,
so padding never changes a sentence's result) and `DecoderStep`, traced by PyTorch's TorchScript exporter
(`dynamo=False`: the dynamo exporter has known trouble with bidirectional LSTMs). `int8` quantizes the weights
of both graphs' LSTM and matrix products with onnxruntime's dynamic quantization, as the PyTorch int8 engine does.
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
from .onnx_engine import ENCODER_FILE, PER_SENTENCE, STEP_FILE
from .torch_engine import DecoderStep, InferenceEncoder

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
    attention = info.model.attention != "none"
    graphs = {ENCODER_FILE: _encoder_graph(model, attention), STEP_FILE: _step_graph(model, attention)}
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
    for name in (ckpt.SPLIT_FILE, ckpt.CARD_FILE):
        if (Path(model_dir) / name).is_file():
            shutil.copyfile(Path(model_dir) / name, out / name)
    from . import __version__

    config = info.to_json()
    config["export"] = {"engine": "onnx", "opset": OPSET, "int8": int8, "from": Path(model_dir).resolve().name,
                        "charmt": __version__, "torch": torch.__version__}
    ckpt.write_json(out / ckpt.CONFIG_FILE, config)  # last: a directory with a config.json is a complete export
    return out


def _export(module: torch.nn.Module, args: tuple, inputs: list[str], outputs: list[str], axes: dict) -> bytes:
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(module, args, buffer, input_names=inputs, output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)
    return buffer.getvalue()


def _encoder_graph(model, attention: bool) -> bytes:
    src = torch.full((2, 5), 4, dtype=torch.long)
    lengths = torch.tensor([5, 3])
    outputs = ["h", "c", *(PER_SENTENCE if attention else ())]
    axes = {"src": {0: "batch", 1: "source"}, "lengths": {0: "batch"}, "h": {1: "batch"}, "c": {1: "batch"},
            "keys": {0: "batch", 2: "source"}, "context": {0: "batch", 1: "source"}, "bias": {0: "batch", 1: "source"}}
    axes = {k: v for k, v in axes.items() if k in ("src", "lengths", *outputs)}
    return _export(InferenceEncoder(model, packed=True).eval(), (src, lengths), ["src", "lengths"], outputs, axes)


def _step_graph(model, attention: bool) -> bytes:
    step = DecoderStep(model).eval()
    L, H, S, n, K = model.config.num_layers, model.config.hidden_size, 5, 2, 3
    args = [torch.full((n * K,), 4, dtype=torch.long), torch.zeros(L, n * K, H), torch.zeros(L, n * K, H)]
    inputs, outputs = ["prev", "h", "c"], ["logits", "h_out", "c_out"]
    axes = {"prev": {0: "rows"}, "h": {1: "rows"}, "c": {1: "rows"}, "logits": {0: "rows"}, "h_out": {1: "rows"},
            "c_out": {1: "rows"}}
    if attention:
        args += [torch.zeros(n, H, S), torch.zeros(n, S, H), torch.zeros(n, S)]
        inputs += list(PER_SENTENCE)
        outputs.append("attention")
        axes.update(keys={0: "batch", 2: "source"}, context={0: "batch", 1: "source"}, bias={0: "batch", 1: "source"},
                    attention={0: "rows", 1: "source"})
    return _export(step, tuple(args), inputs, outputs, axes)


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
