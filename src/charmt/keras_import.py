"""Importing the Keras example's trained model (`s2s_model.keras`) as a charmt model directory.

A Keras 3 `.keras` file is a zip of `config.json` (the layer graph) and `model.weights.h5`. The example's network
is Input -> LSTM(return_state) whose (h, c) initialise a second LSTM fed by another Input, then Dense(softmax):
exactly charmt's `seed` architecture, so the weights copy over (Keras and PyTorch both order the gates i, f, g, o;
Keras keeps one bias where PyTorch has two, so bias_hh is zero).

The example never saved its character tables; they are rebuilt from its data file the way its cell 6 builds
them (`sorted(set(...))`, no special tokens) and the weight rows and columns are permuted so that every character
keeps its weights in charmt's vocabulary, whose first ids are <pad>, <unk>, <tab>, <newline>. (The example read
only 3-column lines; charmt also reads 2-column ones, so a file mixing both gives other tables.)
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .config import ModelConfig
from .data import SelectionConfig, read_corpus, select
from .errors import ConfigError, ModelFormatError
from .families.lstm import Seq2Seq
from .vocab import END, SPECIALS, START, Vocab, normalize

log = logging.getLogger("charmt")

KERAS_CONFIG = "config.json"
KERAS_WEIGHTS = "model.weights.h5"
PAD_CHAR = " "  # the example pads inputs (and targets) with the space character
NEVER = -1e9  # output bias of <pad> and <unk>, which the Keras model cannot predict


@dataclass
class KerasSeq2Seq:
    """The example's weights in Keras's layout: kernels are (inputs, 4H), recurrent kernels (H, 4H)."""

    encoder: tuple[np.ndarray, np.ndarray, np.ndarray]  # kernel, recurrent_kernel, bias
    decoder: tuple[np.ndarray, np.ndarray, np.ndarray]
    dense: tuple[np.ndarray, np.ndarray]  # kernel (H, V), bias (V,)
    keras_version: str

    @property
    def latent_dim(self) -> int:
        return self.encoder[1].shape[0]


def import_keras(path: str | os.PathLike, out_dir: str | os.PathLike, *, source_chars: str | None = None,
                 target_chars: str | None = None, data: str | os.PathLike | None = None,
                 selection: SelectionConfig | None = None, source_length: int | None = None,
                 max_decode_length: int | None = None, overwrite: bool = False) -> ckpt.ModelInfo:
    """Convert the example's `s2s_model.keras` into the model directory `out_dir` and return its ModelInfo.

    The character tables come from `data` (the pair file the notebook read, selected with `selection`, the
    example's by default) or from `source_chars`/`target_chars` (every character once; "\\t" and "\\n" among
    the targets). `source_length` (the example's max_encoder_seq_length) and `max_decode_length` (its
    max_decoder_seq_length) come from the data; with explicit characters, give them (source_length defaults to
    the selection's max_input_length).
    """
    path, out_dir = Path(path), Path(out_dir)
    selection = selection or SelectionConfig()
    if (data is None) == (source_chars is None and target_chars is None):
        raise ConfigError("give either the notebook's data file (--data) or both --source-chars and --target-chars")
    if data is None and (source_chars is None or target_chars is None):
        raise ConfigError("--source-chars and --target-chars go together: give both")
    if ckpt.is_model_dir(out_dir) and not overwrite:
        raise ConfigError(f"{out_dir} already holds a model; pass --overwrite to replace it")
    weights = read_keras(path)
    if data is not None:
        tables = _tables_from_data(data, selection, source_length, max_decode_length)
    else:
        tables = _tables_from_chars(source_chars, target_chars, source_length or selection.max_input_length,
                                    max_decode_length)
    src_chars, tgt_chars, where, hint = tables.src_chars, tables.tgt_chars, tables.where, tables.hint
    source_length, max_decode_length = tables.source_length, tables.max_decode_length
    info_data = {"keras_model": str(path), "keras_version": weights.keras_version, **tables.data}

    _check_sizes(weights, src_chars, tgt_chars, where, hint)
    if PAD_CHAR not in src_chars:
        raise ConfigError(f"the source characters hold no space, which the example pads its inputs with ({where})")
    if START not in tgt_chars or END not in tgt_chars:
        raise ConfigError(f"the target characters must include the start '\\t' and end '\\n' markers ({where})")

    source_vocab = Vocab(list(SPECIALS) + sorted(set(src_chars) - {START, END}))
    target_vocab = Vocab(list(SPECIALS) + sorted(set(tgt_chars) - {START, END}))
    config = ModelConfig(src_vocab_size=len(source_vocab), tgt_vocab_size=len(target_vocab),
                         hidden_size=weights.latent_dim, embedding_size=0, attention="none")
    model = Seq2Seq(config)
    ckpt.load_state(model, to_state_dict(weights, src_chars, tgt_chars, source_vocab, target_vocab), str(path))
    info = ckpt.ModelInfo(
        model=config, source_vocab=source_vocab, target_vocab=target_vocab, preset="seed",
        max_source_length=source_length, max_target_length=max_decode_length - 2,
        selection=asdict(selection) if data is not None else {}, data=info_data,
        keras_compat={"source_length": source_length, "pad_char": PAD_CHAR, "max_decode_length": max_decode_length},
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (ckpt.CHECKPOINT_FILE, ckpt.LOG_FILE, ckpt.SPLIT_FILE):  # of a model this one replaces
        (out_dir / stale).unlink(missing_ok=True)
    ckpt.save_model(out_dir, model, info)
    if data is not None:
        ckpt.write_json(out_dir / ckpt.SPLIT_FILE, {"data": str(data), "sha256": tables.data["sha256"],
                                                    "train": tables.data["samples"] - len(tables.validation),
                                                    "validation": tables.validation, "test": []})
    return info


@dataclass
class _Tables:
    """The example's character tables and lengths, and where they came from (for error messages)."""

    src_chars: list[str]
    tgt_chars: list[str]
    source_length: int
    max_decode_length: int
    where: str
    hint: str
    data: dict = field(default_factory=dict)  # what config.json records about the data file
    validation: list[int] = field(default_factory=list)  # line numbers of the pairs Keras held out


def _tables_from_data(data, selection: SelectionConfig, source_length: int | None,
                      max_decode_length: int | None) -> _Tables:
    """The tables rebuilt from the pair file the notebook read, selected as the notebook selected."""
    corpus = read_corpus(data, reverse=selection.reverse)
    # All selected pairs in the example's order (no split: the example held out after building its tables).
    pairs = select(corpus, replace(selection, validation_fraction=0.0, test_fraction=0.0)).train
    source_length = source_length or max(len(p.source) for p in pairs)
    max_decode_length = max_decode_length or max(len(p.target) for p in pairs) + 2
    not_nfc = sum(normalize(p.source) != p.source for p in pairs)
    if not_nfc:
        log.warning("%d selected source(s) are not NFC-normalised; charmt normalises its inputs, so typed "
                    "sentences may differ from the example's encoding", not_nfc)
    # Keras's validation_split held out the last fraction of the arrays, unshuffled.
    split_at = math.floor(len(pairs) * (1.0 - selection.validation_fraction))
    hint = (f"the selection must be the notebook's: check that --data is the file it read and "
            f"--max-input-length ({selection.max_input_length}), --num-samples ({selection.num_samples}), "
            f"--shuffle-seed ({selection.seed}) and --dedupe ({'on' if selection.dedupe else 'off'})")
    return _Tables(
        src_chars=sorted({ch for p in pairs for ch in p.source}),
        tgt_chars=sorted({ch for p in pairs for ch in START + p.target + END}),
        source_length=source_length, max_decode_length=max_decode_length,
        where=f"the vocabulary rebuilt from {data}", hint=hint,
        data=dict(path=str(data), sha256=corpus.sha256, samples=len(pairs), max_input_length=source_length,
                  max_target_length=max_decode_length),
        validation=[p.line for p in pairs[split_at:]],
    )


def _tables_from_chars(source_chars: str, target_chars: str, source_length: int | None,
                       max_decode_length: int | None) -> _Tables:
    """The tables given character by character (--source-chars/--target-chars)."""
    if not max_decode_length or not source_length:
        raise ConfigError("with --source-chars, give --max-decode-length: the notebook's max_decoder_seq_length, "
                          "printed as 'Max sequence length for outputs' (and --source-length if its inputs were "
                          "not padded to --max-input-length)")
    return _Tables(sorted(set(source_chars)), sorted(set(target_chars)), source_length, max_decode_length,
                   where="--source-chars/--target-chars",
                   hint="give every character of the notebook's tables exactly once")


def _check_sizes(weights: KerasSeq2Seq, src_chars: list[str], tgt_chars: list[str], where: str, hint: str) -> None:
    expected = (("encoder", "input", weights.encoder[0].shape[0], len(src_chars)),
                ("decoder", "output", weights.dense[0].shape[1], len(tgt_chars)))
    for part, kind, want, have in expected:
        if want != have:
            diff = f"{abs(want - have)} too {'few' if have < want else 'many'}"
            raise ConfigError(f"the Keras model's {part} has {want} {kind} characters, but {where} has {have} "
                              f"({diff}); {hint}")


def to_state_dict(weights: KerasSeq2Seq, src_chars: list[str], tgt_chars: list[str], source_vocab: Vocab,
                  target_vocab: Vocab) -> dict[str, torch.Tensor]:
    """Seq2Seq weights from Keras's: transposed, with the one-hot columns and output rows moved to charmt's ids."""
    src_ids = [source_vocab.index[ch] for ch in src_chars]
    tgt_ids = [target_vocab.index[ch] for ch in tgt_chars]
    state = {}
    for name, (kernel, recurrent, bias), ids, size in (("encoder", weights.encoder, src_ids, len(source_vocab)),
                                                       ("decoder", weights.decoder, tgt_ids, len(target_vocab))):
        weight_ih = np.zeros((kernel.shape[1], size), dtype=np.float32)  # unused ids (<pad>, <unk>) read nothing
        weight_ih[:, ids] = kernel.T
        state[f"{name}.lstm.weight_ih_l0"] = weight_ih
        state[f"{name}.lstm.weight_hh_l0"] = recurrent.T
        state[f"{name}.lstm.bias_ih_l0"] = bias
        state[f"{name}.lstm.bias_hh_l0"] = np.zeros_like(bias)
    kernel, bias = weights.dense
    out_weight = np.zeros((len(target_vocab), kernel.shape[0]), dtype=np.float32)
    out_weight[tgt_ids] = kernel.T
    out_bias = np.full(len(target_vocab), NEVER, dtype=np.float32)
    out_bias[tgt_ids] = bias
    state["decoder.output.weight"], state["decoder.output.bias"] = out_weight, out_bias
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}


# --- reading the .keras file ------------------------------------------------------------------------------


def read_keras(path: str | os.PathLike) -> KerasSeq2Seq:
    """The example network's weights from a Keras 3 `.keras` file, found through the layer graph."""
    path = Path(path)
    not_keras = f"{path} is not a Keras 3 .keras file"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        if head.startswith(b"\x89HDF"):
            raise ModelFormatError(f"{not_keras} but a legacy HDF5 model; load it in Keras 3 and save it again "
                                   "with model.save('s2s_model.keras')")
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            missing = [n for n in (KERAS_CONFIG, KERAS_WEIGHTS) if n not in names]
            if missing:
                raise ModelFormatError(f"{not_keras}: the archive lacks {' and '.join(missing)} (it holds "
                                       f"{names[:6]}); save the model with model.save('s2s_model.keras')")
            config = json.loads(archive.read(KERAS_CONFIG))
            metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
            weights_bytes = archive.read(KERAS_WEIGHTS)
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelFormatError(f"{path} is a directory; give the saved s2s_model.keras file") from None
    except zipfile.BadZipFile:
        raise ModelFormatError(f"{not_keras} (not a zip archive, or a truncated one)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFormatError(f"{not_keras}: its {KERAS_CONFIG} is not JSON ({err})") from None
    encoder, decoder, dense = _find_layers(config, path)
    try:
        import h5py
    except ImportError:
        raise ConfigError("reading Keras weights needs h5py: pip install 'charmt[keras]'") from None
    try:
        with h5py.File(io.BytesIO(weights_bytes), "r") as h5:
            groups = _layer_groups(h5, config)
            weights = KerasSeq2Seq(
                encoder=_lstm_vars(h5, groups, encoder, path),
                decoder=_lstm_vars(h5, groups, decoder, path),
                dense=_vars(h5, f"{groups.get(dense['name'], '?')}/vars", 2, path, dense["name"]),
                keras_version=str(metadata.get("keras_version", "unknown")),
            )
    except OSError as err:
        raise ModelFormatError(f"{path}: its {KERAS_WEIGHTS} is not a readable HDF5 file ({err})") from None
    _check_shapes(weights, path)
    return weights


def _find_layers(config: dict, path: Path) -> tuple[dict, dict, dict]:
    """(encoder LSTM, decoder LSTM, Dense) configs, found by class and connectivity, not by name."""
    unlike = f"{path} does not hold the example's network (Input -> LSTM -> LSTM -> Dense)"
    body = config.get("config") if isinstance(config, dict) else None
    if not isinstance(body, dict) or not isinstance(body.get("layers"), list):
        raise ModelFormatError(f"{unlike}: its {KERAS_CONFIG} lists no layers; is it a functional Keras 3 model?")
    layers = {layer.get("name") or layer.get("config", {}).get("name"): layer for layer in body["layers"]}
    outputs = body.get("output_layers") or []
    if outputs and isinstance(outputs[0], str):
        outputs = [outputs]  # one output is saved unnested
    if len(outputs) != 1:
        raise ModelFormatError(f"{unlike}: it has {len(outputs)} outputs instead of one")

    def layer(name: str, cls: str, role: str) -> dict:
        found = layers.get(name)
        if found is None or found.get("class_name") != cls:
            kind = found.get("class_name") if found else "nothing"
            raise ModelFormatError(f"{unlike}: the {role} should be a {cls} layer, found {kind} ({name!r})")
        if cls != "InputLayer" and len(found.get("inbound_nodes") or []) != 1:
            raise ModelFormatError(f"{unlike}: layer {name!r} is called more than once")
        return found

    dense = layer(outputs[0][0], "Dense", "output layer")
    if dense["config"].get("activation") != "softmax" or not dense["config"].get("use_bias", True):
        raise ModelFormatError(f"{unlike}: the output Dense layer must use a bias and a softmax activation")
    decoder = layer(_inputs(dense, path)[0][0], "LSTM", "layer feeding the Dense layer (decoder)")
    decoder_inputs = _inputs(decoder, path)
    if len(decoder_inputs) != 3:
        raise ModelFormatError(f"{unlike}: the decoder LSTM must be called with initial_state=[h, c]")
    (encoder_name, _, h_index), (c_name, _, c_index) = decoder_inputs[1], decoder_inputs[2]
    if encoder_name != c_name or (h_index, c_index) != (1, 2):
        raise ModelFormatError(f"{unlike}: the decoder's initial state must be the encoder LSTM's final [h, c]")
    encoder = layer(encoder_name, "LSTM", "layer giving the decoder its initial state (encoder)")
    for lstm, role in ((encoder, "encoder"), (decoder, "decoder")):
        source = _inputs(lstm, path)[0][0]
        layer(source, "InputLayer", f"{role} LSTM's input")
        cfg = lstm["config"]
        unsupported = {k: cfg.get(k) for k, want in (("activation", "tanh"), ("recurrent_activation", "sigmoid"),
                                                     ("use_bias", True), ("go_backwards", False))
                       if cfg.get(k, want) != want}
        if unsupported:
            raise ModelFormatError(f"{unlike}: the {role} LSTM uses {unsupported}, which charmt's LSTM cannot")
    if not decoder["config"].get("return_sequences", False):
        raise ModelFormatError(f"{unlike}: the decoder LSTM must return sequences")
    return encoder, decoder, dense


def _inputs(layer: dict, path: Path) -> list[tuple[str, int, int]]:
    """keras_history (layer name, node, tensor index) of each tensor a layer's one call received, in order."""
    node = layer["inbound_nodes"][0]
    if not isinstance(node, dict):
        raise ModelFormatError(f"{path} was saved by Keras 2; load it in Keras 3 and save it again")
    tensors = []

    def walk(value):
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            name, node_index, tensor_index = value["config"]["keras_history"]
            tensors.append((name, node_index, tensor_index))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(node.get("args", []))
    walk((node.get("kwargs") or {}).get("initial_state", []))
    return tensors


def _layer_groups(h5, config: dict) -> dict[str, str]:
    """Layer name -> its group in the weights file. Keras 3 names groups after the class (`lstm`, `lstm_1`, in
    layer order) and records the layer's name as the `name` attribute of the group's `vars`."""
    groups: dict[str, str] = {}
    used: dict[str, int] = {}
    for layer in config["config"]["layers"]:  # the class-derived names, for files without the attribute
        base = _snake_case(layer.get("class_name", ""))
        used[base] = used.get(base, -1) + 1
        groups[layer.get("name")] = f"layers/{base}" + (f"_{used[base]}" if used[base] else "")
    for key, group in (h5.get("layers") or {}).items():
        name = group.get("vars").attrs.get("name") if "vars" in group else None
        if isinstance(name, bytes):
            name = name.decode()
        if name:
            groups[name] = f"layers/{key}"
    return groups


def _snake_case(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", re.sub(r"\W+", "", name))
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _lstm_vars(h5, groups: dict[str, str], lstm: dict, path: Path):
    return _vars(h5, f"{groups.get(lstm['name'], '?')}/cell/vars", 3, path, lstm["name"])


def _vars(h5, group: str, count: int, path: Path, layer: str) -> tuple[np.ndarray, ...]:
    if group not in h5 or any(str(i) not in h5[group] for i in range(count)):
        raise ModelFormatError(f"{path}: no weights for layer {layer!r} at {group}/0..{count - 1} in {KERAS_WEIGHTS}; "
                               "was it saved by Keras 3?")
    return tuple(np.asarray(h5[group][str(i)], dtype=np.float32) for i in range(count))


def _check_shapes(w: KerasSeq2Seq, path: Path) -> None:
    H = w.latent_dim
    for role, (kernel, recurrent, bias) in (("encoder", w.encoder), ("decoder", w.decoder)):
        if kernel.ndim != 2 or kernel.shape[1] != 4 * H or recurrent.shape != (H, 4 * H) or bias.shape != (4 * H,):
            raise ModelFormatError(f"{path}: the {role} LSTM's weights have shapes {kernel.shape}, {recurrent.shape}, "
                                   f"{bias.shape}; expected (inputs, {4 * H}), ({H}, {4 * H}), ({4 * H},)")
    kernel, bias = w.dense
    if kernel.shape != (H, w.decoder[0].shape[0]) or bias.shape != (kernel.shape[1],):
        raise ModelFormatError(f"{path}: the Dense layer's weights have shapes {kernel.shape}, {bias.shape}; "
                               f"expected ({H}, {w.decoder[0].shape[0]}) and ({w.decoder[0].shape[0]},): the decoder "
                               "must predict the characters it reads")
