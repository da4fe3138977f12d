"""Translating with PyTorch: the engine that decode.py's searches drive, over any family's inference encoder and
decoder step (model.py: each family writes its own, from its trained weights)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .model import family


@dataclass
class TorchState:
    rows: tuple[torch.Tensor, ...]  # the family's row states, one row per beam on axis 1 (an LSTM's h and c)
    per_sentence: tuple[torch.Tensor, ...] = ()  # one row per sentence on axis 0 (what attention reads)


class TorchEngine:
    """`decode.Engine` over a PyTorch network of any family, on the CPU or a CUDA device (one copy to the CPU per
    step: the logits). `int8` (CPU only): dynamic int8 quantization of the LSTM and linear layers."""

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu", *, int8: bool = False):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.int8 = int8
        self.description = "PyTorch " + ("int8" if int8 else "fp32")
        self._parts: tuple[nn.Module, nn.Module] | None = None
        self._built_from: tuple = ()
        self._names = family(model.config).state_names(model.config)

    def _modules(self) -> tuple[nn.Module, nn.Module]:
        """The inference encoder and step, rebuilt when the model's weights changed since (as in training)."""
        signature = tuple((id(p), p._version) for p in self.model.parameters())
        if self._parts is None or signature != self._built_from:
            with torch.no_grad():
                encoder, step = family(self.model.config).inference_modules(self.model)
                encoder, step = encoder.to(self.device).eval(), step.to(self.device).eval()
                if self.int8:
                    from torch.ao.quantization import quantize_dynamic

                    encoder = quantize_dynamic(encoder, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
                    step = quantize_dynamic(step, {nn.Linear}, dtype=torch.qint8)
            self._parts, self._built_from = (encoder, step), signature
        return self._parts

    def encode(self, src: np.ndarray, lengths: np.ndarray) -> TorchState:
        encoder, _ = self._modules()
        with torch.inference_mode():
            outputs = encoder(torch.from_numpy(src).to(self.device), torch.from_numpy(lengths))
        count = len(self._names[0])
        return TorchState(tuple(outputs[:count]), tuple(outputs[count:]))

    def step(self, prev: np.ndarray, state: TorchState, attention: bool = False):
        step = self._parts[1]  # built by encode
        with torch.inference_mode():
            logits, *outputs = step(torch.from_numpy(prev).to(self.device), *state.rows, *state.per_sentence)
            rows, weights = tuple(outputs[: len(state.rows)]), outputs[len(state.rows) :]
            logits = logits.float().cpu().numpy()
            weights = weights[0].float().cpu().numpy() if attention and weights else None
        return logits, TorchState(rows, state.per_sentence), weights

    def select(self, state: TorchState, rows: np.ndarray, sentences: np.ndarray | None = None) -> TorchState:
        with torch.inference_mode():
            rows_t = torch.from_numpy(rows).to(self.device)
            per_sentence = state.per_sentence
            if sentences is not None:
                index = torch.from_numpy(sentences).to(self.device)
                per_sentence = tuple(t.index_select(0, index) for t in per_sentence)
            return TorchState(tuple(t.index_select(1, rows_t) for t in state.rows), per_sentence)

    def memory_bytes(self) -> int:
        """The weights and buffers translation computes with: the model's, or for int8 the quantized modules'."""
        if not self.int8:
            tensors = [*self.model.parameters(), *self.model.buffers()]
        else:
            tensors = [t for part in self._modules() for t in _held_tensors(part)]
        return sum(t.numel() * t.element_size() for t in tensors)


def _held_tensors(module: nn.Module) -> list[torch.Tensor]:
    """`module`'s parameters and buffers, and the int8 weights that dynamically quantized layers keep packed
    outside them (one byte per weight)."""
    from torch.ao.nn.quantized import dynamic as quantized

    tensors = []
    for part in module.modules():
        tensors += [*part.parameters(recurse=False), *part.buffers(recurse=False)]
        if isinstance(part, quantized.Linear):
            tensors += [part.weight(), *([part.bias()] if part.bias() is not None else [])]
        elif isinstance(part, quantized.LSTM):
            tensors += [*part.get_weight().values(), *part.get_bias().values()]
    return tensors

