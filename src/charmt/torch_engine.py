"""Translating with PyTorch: the engine that decode.py's searches drive, and the inference graphs `charmt export`
writes as ONNX.

Training runs the decoder over whole sentences with `nn.LSTM`; translating runs it one character at a time, where
every call's overhead counts. So the inference step is written out once, from the trained weights:

- the first layer's input projection is a table: embedding (or one-hot) x W_ih + both biases, one row per
  character, so a step is one row lookup and one `h @ W_hh`;
- the gates are computed by hand (no dropout at inference), which never goes through oneDNN (its LSTM kernel
  re-packs the weights at every one-step call) and needs no process-wide switch to avoid it;
- attention needs the encoder outputs only through `memory @ W_score` (the keys) and `memory @ W_c1ᵀ` (the
  context half of the combine layer): both are computed once per sentence, in `InferenceEncoder`, and kept per
  sentence, not per beam, so that beam search never copies them when it reorders its beams.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .model import Seq2Seq


def _uninitialized(inputs: int, outputs: int, bias: bool = True) -> nn.Linear:
    """A linear layer whose weights are copied in next; its random initialisation runs on a saved and restored
    RNG state, so it leaves the caller's generator where it was. (`nn.utils.skip_init` would avoid it, but goes
    through the meta device, whose first use imports sympy: a second of start-up.)"""
    with torch.random.fork_rng(devices=[]):
        return nn.Linear(inputs, outputs, bias=bias)


class InferenceEncoder(nn.Module):
    """src (B, S), lengths (B,) -> the decoder's initial (h, c) (L, B, H) and, with attention, what its steps need:
    keys (B, H, S), context projections (B, S, H) and the padding mask as a bias (B, S): 0, or -inf on padding.

    `packed` runs the LSTM on a packed sequence, which ONNX export maps to one LSTM operator with sequence lengths
    (used for export); otherwise the model's own encoder runs (one oneDNN call per distinct length).
    """

    def __init__(self, model: Seq2Seq, packed: bool = False):
        super().__init__()
        self.encoder, self.packed = model.encoder, packed
        attention = model.decoder.attention
        self.attention = attention is not None
        if self.attention:
            M, H = model.encoder.output_size, model.config.hidden_size
            self.keys = _uninitialized(M, H, bias=False)  # score(q)·m = q·(W_scoreᵀ m)
            self.context = _uninitialized(M, H, bias=False)  # the combine layer's context half
            with torch.no_grad():
                self.keys.weight.copy_(attention.score.weight.T)
                self.context.weight.copy_(attention.combine.weight[:, :M])

    def forward(self, src: torch.Tensor, lengths: torch.Tensor):
        if self.packed:
            memory, (h, c) = self._packed(src, lengths)
        else:
            memory, (h, c) = self.encoder(src, lengths)
        if not self.attention:
            return h, c
        mask = torch.arange(src.shape[1], device=src.device)[None, :] < lengths.to(src.device)[:, None]
        bias = torch.zeros(mask.shape, device=src.device).masked_fill(~mask, float("-inf"))
        return h, c, self.keys(memory).transpose(1, 2).contiguous(), self.context(memory), bias

    def _packed(self, src: torch.Tensor, lengths: torch.Tensor):
        memory, (h, c) = self.encoder.run_packed(self.encoder.embedding(src), lengths)
        return memory, self.encoder.bridge(h, c)


class DecoderStep(nn.Module):
    """One decoder step for N rows (the beams of n sentences, N = n x K, beam-major within each sentence):
    prev (N,), h and c (L, N, H)[, keys (n, H, S), context (n, S, H), bias (n, S)] -> logits (N, V), h, c
    [, attention (N, S)]."""

    def __init__(self, model: Seq2Seq):
        super().__init__()
        decoder, config = model.decoder, model.config
        H, L = config.hidden_size, config.num_layers
        self.hidden_size, self.num_layers = H, L
        lstm = decoder.lstm
        # PyTorch's gate order is i, f, g, o; i, f, o first lets one sigmoid cover three gates.
        order = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
        with torch.no_grad():
            w_ih, bias = lstm.weight_ih_l0[order], lstm.bias_ih_l0[order] + lstm.bias_hh_l0[order]
            if isinstance(decoder.embedding, nn.Embedding):
                table = decoder.embedding.weight @ w_ih.T + bias
            else:  # one-hot inputs: row t of the table is column t of W_ih
                table = w_ih.T + bias
            self.register_buffer("table", table.contiguous())  # (V, 4H)
            self.recurrent = nn.ModuleList(_uninitialized(H, 4 * H, bias=False) for _ in range(L))
            self.inputs = nn.ModuleList(_uninitialized(H, 4 * H) for _ in range(L - 1))  # layers 2..L
            for layer in range(L):
                self.recurrent[layer].weight.copy_(getattr(lstm, f"weight_hh_l{layer}")[order])
                if layer:
                    self.inputs[layer - 1].weight.copy_(getattr(lstm, f"weight_ih_l{layer}")[order])
                    self.inputs[layer - 1].bias.copy_(getattr(lstm, f"bias_ih_l{layer}")[order]
                                                      + getattr(lstm, f"bias_hh_l{layer}")[order])
            self.attention = decoder.attention is not None
            if self.attention:
                self.combine = _uninitialized(H, H, bias=False)  # the combine layer's query half
                self.combine.weight.copy_(decoder.attention.combine.weight[:, -H:])
            self.output = _uninitialized(H, config.tgt_vocab_size)
            self.output.load_state_dict(decoder.output.state_dict())

    def forward(self, prev, h, c, keys=None, context=None, bias=None):
        H = self.hidden_size
        x = self.table.index_select(0, prev)
        hs, cs = [], []
        for layer in range(self.num_layers):
            gates = x + self.recurrent[layer](h[layer])
            ifo = torch.sigmoid(gates[:, : 3 * H])
            c_new = ifo[:, H : 2 * H] * c[layer] + ifo[:, :H] * torch.tanh(gates[:, 3 * H :])
            h_new = ifo[:, 2 * H :] * torch.tanh(c_new)
            hs.append(h_new)
            cs.append(c_new)
            if layer + 1 < self.num_layers:
                x = self.inputs[layer](h_new)
        out = hs[-1]
        if not self.attention:
            return self.output(out), torch.stack(hs), torch.stack(cs)
        query = out.reshape(keys.shape[0], -1, H)  # (n, K, H): the K beams of each sentence
        weights = torch.softmax(torch.bmm(query, keys) + bias[:, None, :], dim=-1)  # (n, K, S)
        out = torch.tanh(torch.bmm(weights, context).reshape(-1, H) + self.combine(out))
        return self.output(out), torch.stack(hs), torch.stack(cs), weights.reshape(out.shape[0], -1)


@dataclass
class TorchState:
    h: torch.Tensor  # (L, N, H): one row per beam
    c: torch.Tensor
    per_sentence: tuple[torch.Tensor, ...] = ()  # keys, context, bias: one row per sentence


class TorchEngine:
    """`decode.Engine` over a PyTorch `Seq2Seq`, on the CPU or a CUDA device (one copy to the CPU per step: the
    logits). `int8` (CPU only): dynamic int8 quantization of the LSTM and linear layers."""

    name = "torch"

    def __init__(self, model: Seq2Seq, device: torch.device | str = "cpu", *, int8: bool = False):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.int8 = int8
        self.description = "PyTorch " + ("int8" if int8 else "fp32")
        self._parts: tuple[nn.Module, nn.Module] | None = None
        self._built_from: tuple = ()

    def _modules(self) -> tuple[nn.Module, nn.Module]:
        """The inference encoder and step, rebuilt when the model's weights changed since (as in training)."""
        signature = tuple((id(p), p._version) for p in self.model.parameters())
        if self._parts is None or signature != self._built_from:
            with torch.no_grad():
                encoder = InferenceEncoder(self.model).to(self.device).eval()
                step = DecoderStep(self.model).to(self.device).eval()
                if self.int8:
                    from torch.ao.quantization import quantize_dynamic

                    encoder = quantize_dynamic(encoder, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
                    step = quantize_dynamic(step, {nn.Linear}, dtype=torch.qint8)
            self._parts, self._built_from = (encoder, step), signature
        return self._parts

    def encode(self, src: np.ndarray, lengths: np.ndarray) -> TorchState:
        encoder, _ = self._modules()
        with torch.inference_mode():
            h, c, *per_sentence = encoder(torch.from_numpy(src).to(self.device), torch.from_numpy(lengths))
        return TorchState(h, c, tuple(per_sentence))

    def step(self, prev: np.ndarray, state: TorchState, attention: bool = False):
        step = self._parts[1]  # built by encode
        with torch.inference_mode():
            logits, h, c, *weights = step(torch.from_numpy(prev).to(self.device), state.h, state.c,
                                          *state.per_sentence)
            logits = logits.float().cpu().numpy()
            weights = weights[0].float().cpu().numpy() if attention and weights else None
        return logits, TorchState(h, c, state.per_sentence), weights

    def select(self, state: TorchState, rows: np.ndarray, sentences: np.ndarray | None = None) -> TorchState:
        with torch.inference_mode():
            rows_t = torch.from_numpy(rows).to(self.device)
            per_sentence = state.per_sentence
            if sentences is not None:
                index = torch.from_numpy(sentences).to(self.device)
                per_sentence = tuple(t.index_select(0, index) for t in per_sentence)
            return TorchState(state.h.index_select(1, rows_t), state.c.index_select(1, rows_t), per_sentence)

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

