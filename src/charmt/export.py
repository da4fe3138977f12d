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
from .vocab import piece_strings

OPSET = 17


def export_onnx(model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, int8: bool = False,
                overwrite: bool = False) -> Path:
    """Write the ONNX export of the model in `model_dir` to `out_dir`; each graph is checked with
    `onnx.checker` before anything is written."""
    out = _output_dir(model_dir, out_dir, overwrite)
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
    _remove_previous_export(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, graph in graphs.items():
        ckpt.atomic_write(out / name, graph)
    rows = list(family(info.model).state_names(info.model)[0])
    _finish(model_dir, out, info, ckpt.CONFIG_FILE,
            {"engine": "onnx", "opset": OPSET, "int8": int8, "row_states": rows, "torch": torch.__version__})
    return out


def _output_dir(model_dir, out_dir, overwrite: bool) -> Path:
    """`out_dir`, refused where an export must not be written."""
    out = Path(out_dir)
    # --overwrite replaces an earlier export, never a model: its config.json would be rewritten as an export's.
    if out.exists() and out.resolve() == Path(model_dir).resolve():
        raise ConfigError(f"{out} is the model directory itself; write the export to another directory")
    if ckpt.holds_model(out):
        raise ConfigError(f"{out} holds a trained model ({ckpt.WEIGHTS_FILE} or {ckpt.CHECKPOINT_FILE}); an export "
                          "never writes into a model directory: choose another directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} is not empty; choose another directory or add --overwrite")
    return out


# The files an export writes. --overwrite removes an earlier export's before writing another, as a file left over
# would be read as part of the new one: an ONNX export beside a CTranslate2 export's charmt.json is taken for that
# export, and CTranslate2 reads a subword export's shared_vocabulary.json before a character export's own two.
_EXPORT_FILES = (ENCODER_FILE, STEP_FILE, ckpt.CONFIG_FILE, ckpt.CT2_CONFIG_FILE, "model.bin",
                 *(f"{kind}_vocabulary.{ext}" for kind in ("shared", "source", "target") for ext in ("json", "txt")),
                 ckpt.SPLIT_FILE, ckpt.CARD_FILE, ckpt.SUBWORD_FILE)


def _remove_previous_export(out: Path) -> None:
    for name in _EXPORT_FILES:
        (out / name).unlink(missing_ok=True)


def _finish(model_dir, out: Path, info, config_name: str, export: dict) -> None:
    """Copy the model's split, card and subword units beside the export, then write charmt's config with what was
    exported: last, so that a directory with it is a complete export."""
    from . import __version__

    for name in (ckpt.SPLIT_FILE, ckpt.CARD_FILE, ckpt.SUBWORD_FILE):
        if (Path(model_dir) / name).is_file():
            shutil.copyfile(Path(model_dir) / name, out / name)
    config = info.to_json()
    config["export"] = {**export, "from": Path(model_dir).resolve().name, "charmt": __version__}
    ckpt.write_json(out / config_name, config)


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


# --- CTranslate2 ----------------------------------------------------------------------------------------------

CT2_QUANTIZATIONS = ("float32", "int8", "int8_float32")


def export_ctranslate2(model_dir: str | os.PathLike, out_dir: str | os.PathLike, *, quantization: str = "float32",
                       overwrite: bool = False) -> Path:
    """Write a Transformer model as a CTranslate2 model folder, with CTranslate2's own spec API; the folder is
    loaded back and translates one sentence before charmt's config (charmt.json) is written beside it.

    The network is CTranslate2's TransformerSpec as families/transformer.py says: pre-norm with final norms,
    ReLU, biases, embeddings scaled by sqrt(d), its own sinusoidal positions (none stored), LayerNorm epsilon 1e-6
    written as layer_norm_epsilon, the decoder starting from "<s>" (charmt's START), attention = the last layer's
    cross-attention averaged over all heads (alignment_heads 0). Token strings are SentencePiece's
    (vocab.piece_strings), so that an Argos Translate package can feed the folder SentencePiece pieces."""
    if quantization not in CT2_QUANTIZATIONS:
        raise ConfigError(f"--quantization must be one of {', '.join(CT2_QUANTIZATIONS)}, got {quantization!r}")
    out = _output_dir(model_dir, out_dir, overwrite)
    info = ckpt.load_info(model_dir)
    if info.model.arch != "transformer":
        raise ConfigError(f"{model_dir} is an LSTM model, and CTranslate2 runs Transformer models only (its "
                          "converters reject recurrent networks): export it with --onnx, or train a Transformer "
                          "(charmt train FILE --arch transformer)")
    try:
        import ctranslate2
    except ImportError:
        raise ConfigError("--ctranslate2 needs the ctranslate2 package: pip install 'charmt[ct2]'") from None
    model, info = ckpt.load_model(model_dir, "cpu")
    spec = _transformer_spec(model, info)
    spec.validate()
    spec.optimize(quantization=quantization)
    _remove_previous_export(out)
    out.mkdir(parents=True, exist_ok=True)
    spec.save(str(out))
    try:  # the check: CTranslate2 loads it and runs it
        translator = ctranslate2.Translator(str(out), device="cpu", intra_threads=1)
        translator.translate_batch([piece_strings(info.source_vocab)[4:6]], max_decoding_length=4)
    except Exception as err:  # CTranslate2 raises RuntimeError and ValueError alike for a model it cannot run
        raise ConfigError(f"CTranslate2 {ctranslate2.__version__} cannot run the converted model ({err}); please "
                          "report this") from None
    _finish(model_dir, out, info, ckpt.CT2_CONFIG_FILE,
            {"engine": "ct2", "quantization": quantization, "ctranslate2": ctranslate2.__version__})
    return out


def _transformer_spec(model, info):
    """The CTranslate2 TransformerSpec of a charmt Transformer, weights copied."""
    from ctranslate2.specs import common_spec, transformer_spec

    from .families.transformer import LAYER_NORM_EPS

    config = info.model
    spec = transformer_spec.TransformerSpec.from_config(
        (config.num_layers, config.num_layers), config.heads, pre_norm=True, activation=common_spec.Activation.RELU,
        alignment_layer=-1, alignment_heads=0)
    spec.config.layer_norm_epsilon = LAYER_NORM_EPS
    spec.config.decoder_start_token = "<s>"
    encoder, decoder = model.encoder, model.decoder
    spec.encoder.embeddings[0].weight = _array(encoder.embedding.weight)
    for layer_spec, layer in zip(spec.encoder.layer, encoder.layers):
        _norm(layer_spec.self_attention.layer_norm, layer.self_norm)
        _linear(layer_spec.self_attention.linear[0], layer.self_attention.query, layer.self_attention.key,
                layer.self_attention.value)
        _linear(layer_spec.self_attention.linear[1], layer.self_attention.out)
        _feed_forward(layer_spec.ffn, layer)
    _norm(spec.encoder.layer_norm, encoder.norm)
    spec.decoder.embeddings.weight = _array(decoder.embedding.weight)
    for layer_spec, layer in zip(spec.decoder.layer, decoder.layers):
        _norm(layer_spec.self_attention.layer_norm, layer.self_norm)
        _linear(layer_spec.self_attention.linear[0], layer.self_attention.query, layer.self_attention.key,
                layer.self_attention.value)
        _linear(layer_spec.self_attention.linear[1], layer.self_attention.out)
        _norm(layer_spec.attention.layer_norm, layer.cross_norm)
        _linear(layer_spec.attention.linear[0], layer.cross_attention.query)
        _linear(layer_spec.attention.linear[1], layer.cross_attention.key, layer.cross_attention.value)
        _linear(layer_spec.attention.linear[2], layer.cross_attention.out)
        _feed_forward(layer_spec.ffn, layer)
    _norm(spec.decoder.layer_norm, decoder.norm)
    _linear(spec.decoder.projection, decoder.output)
    spec.register_source_vocabulary(piece_strings(info.source_vocab))
    spec.register_target_vocabulary(piece_strings(info.target_vocab))
    return spec


def _array(tensor: torch.Tensor):
    return tensor.detach().to(torch.float32).cpu().numpy().copy()


def _linear(spec, *layers: torch.nn.Linear) -> None:
    """One linear layer, or several fused along their outputs (CTranslate2's query-key-value projections)."""
    spec.weight = _array(torch.cat([layer.weight for layer in layers]))
    spec.bias = _array(torch.cat([layer.bias for layer in layers]))


def _norm(spec, norm: torch.nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def _feed_forward(spec, layer) -> None:
    _norm(spec.layer_norm, layer.ff_norm)
    _linear(spec.linear_0, layer.ff.linear_in)
    _linear(spec.linear_1, layer.ff.linear_out)
