"""The networks: one room per model family in `families/` (its network, its inference step, the inputs its ONNX
graphs are traced with); this module picks the room a config names, and the device to run on.

A family module offers

    Network(config)                 the trainable network: forward(src, src_lengths, tgt_in, tgt_out=None,
                                    label_smoothing=0.0) -> (logits (B, T, V), loss or None), num_parameters()
    state_names(config)             (row states, per-sentence tensors): what its inference encoder returns and its
                                    step carries; row states hold decoder rows on axis 1, the others sentences on 0
    inference_modules(model, *, for_export=False) -> (encoder, step)
                                    encoder(src, lengths) -> row states, per-sentence tensors;
                                    step(prev, *row states, *per-sentence) -> logits, *row states[, attention]
    export_examples(model)          inputs to trace encoder and step with, and the dynamic axes of every name

and nothing outside its room knows its insides.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import nn

from .config import ModelConfig
from .errors import ConfigError


def family(config: ModelConfig) -> ModuleType:
    """The room of `config.arch` (imported when first asked for)."""
    return importlib.import_module(f".families.{config.arch}", __package__)


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised network of the family `config` names."""
    return family(config).Network(config)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {str(device)!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but PyTorch sees no CUDA device; use --device cpu")
    return device
