"""The LSTM family: the Keras example's network and what grew from it (Encoder -> Attention -> Decoder -> Seq2Seq),
its inference step, and the example inputs its ONNX graphs are traced with.

The `seed` preset is the Keras example's network: one-hot characters into an encoder LSTM whose final (h, c)
initialise a decoder LSTM, then a linear layer and softmax over target characters. The other options (learned
embeddings, bidirectional encoder, Luong attention, several layers, dropout) grow it into a better translator.

Training runs the decoder over whole sentences with `nn.LSTM`; translating runs it one character at a time, where
every call's overhead counts. So the inference step is written out once, from the trained weights:

- the first layer's input projection is a table: embedding (or one-hot) x W_ih + both biases, one row per
  character, so a step is one row lookup and one `h @ W_hh`;
- the gates are computed by hand (no dropout at inference), which never goes through oneDNN (its LSTM kernel
  re-packs the weights at every one-step call) and needs no process-wide switch to avoid it;
- attention needs the encoder outputs only through `memory @ W_score` (the keys) and `memory @ W_c1ᵀ` (the
  context half of the combine layer): both are computed once per sentence, in `InferenceEncoder`, and kept per
  sentence, not per beam, so that beam search never copies them when it reorders its beams.

The decoder's state between steps: h and c (L, N, H), one row per beam (axis 1); with attention, keys (n, H, S),
context (n, S, H) and the padding bias (n, S), one row per sentence (axis 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..vocab import PAD_ID


class OneHot(nn.Module):
    """One-hot vectors: with the LSTM's input weights this is exactly an embedding lookup of their columns."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.one_hot(tokens, self.num_classes).float()


def _input_layer(vocab_size: int, embedding_size: int) -> tuple[nn.Module, int]:
    if embedding_size == 0:
        return OneHot(vocab_size), vocab_size
    return nn.Embedding(vocab_size, embedding_size, padding_idx=PAD_ID), embedding_size


def _init_lstm_like_keras(lstm: nn.LSTM) -> None:
    """Keras's LSTM defaults: glorot-uniform input weights, orthogonal recurrent weights, forget bias 1."""
    for name, param in lstm.named_parameters():
        if name.startswith("weight_ih"):
            nn.init.xavier_uniform_(param)
        elif name.startswith("weight_hh"):
            nn.init.orthogonal_(param)
        elif name.startswith("bias_ih"):
            nn.init.zeros_(param)
            hidden = param.shape[0] // 4
            param.data[hidden : 2 * hidden] = 1.0  # gate order i, f, g, o in both Keras and PyTorch
        elif name.startswith("bias_hh"):
            nn.init.zeros_(param)


# Batches whose sources have at most this many distinct lengths (the usual case with length-bucketed training
# batches) run the encoder once per length instead of packing.
_MAX_LENGTH_GROUPS = 4


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.hidden_size = config.encoder_hidden_size or config.hidden_size
        self.directions = 2 if config.bidirectional else 1
        self.embedding, input_size = _input_layer(config.src_vocab_size, config.embedding_size)
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            input_size, self.hidden_size, num_layers=config.num_layers, batch_first=True,
            bidirectional=config.bidirectional, dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.bridged = config.bidirectional or self.hidden_size != config.hidden_size
        if self.bridged:
            self.bridge_h = nn.Linear(self.output_size, config.hidden_size)
            self.bridge_c = nn.Linear(self.output_size, config.hidden_size)

    @property
    def output_size(self) -> int:
        return self.hidden_size * self.directions

    def forward(self, src: torch.Tensor, lengths: torch.Tensor):
        """src (B, S) token ids, lengths (B,) >= 1 -> outputs (B, S, H*dirs), (h, c) each (L, B, H)."""
        x = self.dropout(self.embedding(src))
        # The final states must be those of each sentence's last real character, not of the padding.
        distinct = lengths.unique().tolist()
        if len(distinct) <= _MAX_LENGTH_GROUPS:
            outputs, (h, c) = self._run_by_length(x, lengths, distinct)
        else:
            outputs, (h, c) = self.run_packed(x, lengths)
        return outputs, self.bridge(h, c)

    def run_packed(self, x: torch.Tensor, lengths: torch.Tensor):
        """The LSTM over a packed batch: x (B, S, E) -> outputs (B, S, H*dirs), final (h, c) (L*dirs, B, H).

        Initial states are given (zeros, as by default) because the default ones are sized from the packing, which
        ONNX export cannot follow; export runs this too (torch_engine.InferenceEncoder)."""
        zeros = x.new_zeros(self.config.num_layers * self.directions, x.shape[0], self.hidden_size)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        packed_out, (h, c) = self.lstm(packed, (zeros, zeros))
        outputs, _ = nn.utils.rnn.pad_packed_sequence(packed_out, batch_first=True, total_length=x.shape[1])
        return outputs, (h, c)

    def bridge(self, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The LSTM's final states (L*D, B, H) -> the decoder's initial states (L, B, hidden_size)."""
        if self.bridged:  # each layer's final states, all directions side by side, mapped to the decoder's size
            L, D, H = self.config.num_layers, self.directions, self.hidden_size
            h = torch.tanh(self.bridge_h(h.view(L, D, -1, H).permute(0, 2, 1, 3).reshape(L, -1, D * H)))
            c = self.bridge_c(c.view(L, D, -1, H).permute(0, 2, 1, 3).reshape(L, -1, D * H))
        return h.contiguous(), c.contiguous()

    def _run_by_length(self, x: torch.Tensor, lengths: torch.Tensor, distinct: list[int]):
        """One unpacked LSTM call per distinct length, each on its sentences without padding: the same result as
        packing, but through the fused (oneDNN/cuDNN) kernel, which PyTorch does not use for packed input."""
        if len(distinct) == 1:
            outputs, (h, c) = self.lstm(x[:, : distinct[0]])
            return F.pad(outputs, (0, 0, 0, x.shape[1] - distinct[0])), (h, c)
        pieces, h_parts, c_parts, order = [], [], [], []
        lengths = lengths.to(x.device)
        for n in distinct:
            rows = (lengths == n).nonzero().squeeze(1)
            out_n, (h_n, c_n) = self.lstm(x[rows, :n])
            pieces.append(F.pad(out_n, (0, 0, 0, x.shape[1] - n)))
            h_parts.append(h_n)
            c_parts.append(c_n)
            order.append(rows)
        back = torch.cat(order).argsort()  # row i of the batch is row back[i] of the concatenated groups
        return torch.cat(pieces).index_select(0, back), (torch.cat(h_parts, 1).index_select(1, back),
                                                         torch.cat(c_parts, 1).index_select(1, back))


class Attention(nn.Module):
    """Luong et al. (2015) global attention with the "general" score, applied to the decoder's top layer."""

    def __init__(self, query_size: int, memory_size: int):
        super().__init__()
        self.score = nn.Linear(query_size, memory_size, bias=False)
        self.combine = nn.Linear(query_size + memory_size, query_size, bias=False)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor):
        """query (B, T, H), memory (B, S, M), mask (B, S) True on real characters -> (B, T, H), weights (B, T, S)."""
        scores = torch.bmm(self.score(query), memory.transpose(1, 2))  # (B, T, S)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights, memory)  # (B, T, M)
        return torch.tanh(self.combine(torch.cat([context, query], dim=-1))), weights


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig, memory_size: int):
        super().__init__()
        self.config = config
        self.embedding, input_size = _input_layer(config.tgt_vocab_size, config.embedding_size)
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            input_size, config.hidden_size, num_layers=config.num_layers, batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.attention = Attention(config.hidden_size, memory_size) if config.attention == "luong" else None
        self.output = nn.Linear(config.hidden_size, config.tgt_vocab_size)

    def forward(self, tokens: torch.Tensor, state: DecoderState):
        """tokens (B, T) -> logits (B, T, V), next state, attention weights (B, T, S) or None."""
        out, (h, c) = self.lstm(self.dropout(self.embedding(tokens)), (state.h, state.c))
        weights = None
        if self.attention is not None:
            out, weights = self.attention(out, state.memory, state.mask)
        logits = self.output(self.dropout(out))
        return logits, DecoderState(h, c, state.memory, state.mask), weights


@dataclass
class DecoderState:
    """What the decoder carries from one step to the next; `memory`/`mask` are the encoder outputs (attention)."""

    h: torch.Tensor  # (L, B, H)
    c: torch.Tensor  # (L, B, H)
    memory: torch.Tensor  # (B, S, M)
    mask: torch.Tensor  # (B, S) bool

    def select(self, index: torch.Tensor) -> DecoderState:
        """The states of the batch rows `index` (to drop finished sentences or reorder beams)."""
        return DecoderState(self.h[:, index], self.c[:, index], self.memory[index], self.mask[index])


class Seq2Seq(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.src_vocab_size < 5 or config.tgt_vocab_size < 5:
            raise ConfigError("vocabulary sizes must be set (4 special tokens + at least one character)")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config, self.encoder.output_size)
        for module in self.modules():
            if isinstance(module, nn.LSTM):
                _init_lstm_like_keras(module)
            elif isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> DecoderState:
        """Run the encoder once; the result is the decoder's initial state."""
        memory, (h, c) = self.encoder(src, src_lengths)
        mask = torch.arange(src.shape[1], device=src.device)[None, :] < src_lengths.to(src.device)[:, None]
        return DecoderState(h, c, memory, mask)

    def decode_step(self, prev_tokens: torch.Tensor, state: DecoderState):
        """One decoder step: prev_tokens (B,) -> logits (B, V), next state, attention (B, S) or None."""
        logits, state, weights = self.decoder(prev_tokens[:, None], state)
        return logits[:, 0], state, None if weights is None else weights[:, 0]

    def forward(self, src, src_lengths, tgt_in, tgt_out=None, label_smoothing: float = 0.0):
        """Teacher forcing: tgt_in starts with START, tgt_out is tgt_in shifted one step left (ends with END).

        Returns (logits (B, T, V), loss); the loss is the cross-entropy over non-PAD targets (label-smoothed when
        asked), None without tgt_out.
        """
        logits, _, _ = self.decoder(tgt_in, self.encode(src, src_lengths))
        loss = None
        if tgt_out is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=PAD_ID,
                                   label_smoothing=label_smoothing)
        return logits, loss

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# --- inference ---------------------------------------------------------------------------------------------


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


# --- the family's interface (model.py, torch_engine.py and export.py use only these) -----------------------

Network = Seq2Seq


def state_names(config: ModelConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(row states, per-sentence tensors): the encoder's outputs in this order, the step's inputs after `prev`."""
    return ("h", "c"), (("keys", "context", "bias") if config.attention != "none" else ())


def inference_modules(model: Seq2Seq, *, for_export: bool = False) -> tuple[nn.Module, nn.Module]:
    """The inference encoder and decoder step of a trained model (the encoder packed for ONNX export)."""
    return InferenceEncoder(model, packed=for_export), DecoderStep(model)


def export_examples(model: Seq2Seq) -> tuple[tuple, tuple, dict[str, dict[int, str]]]:
    """Inputs to trace the encoder and the step with, and the dynamic axes of every input and output."""
    L, H, S, n, K = model.config.num_layers, model.config.hidden_size, 5, 2, 3
    encoder_args = (torch.full((2, S), 4, dtype=torch.long), torch.tensor([S, 3]))
    step_args = [torch.full((n * K,), 4, dtype=torch.long), torch.zeros(L, n * K, H), torch.zeros(L, n * K, H)]
    axes = {"src": {0: "batch", 1: "source"}, "lengths": {0: "batch"}, "h": {1: "rows"}, "c": {1: "rows"},
            "prev": {0: "rows"}, "logits": {0: "rows"}, "h_out": {1: "rows"}, "c_out": {1: "rows"}}
    if model.decoder.attention is not None:
        step_args += [torch.zeros(n, H, S), torch.zeros(n, S, H), torch.zeros(n, S)]
        axes.update(keys={0: "batch", 2: "source"}, context={0: "batch", 1: "source"},
                    bias={0: "batch", 1: "source"}, attention={0: "rows", 1: "source"})
    return encoder_args, tuple(step_args), axes
