"""The Transformer family: Attention -> FeedForward -> EncoderLayer / DecoderLayer -> Encoder / Decoder ->
Transformer, then the inference pair (InferenceEncoder, DecoderStep) that the search drives and ONNX exports.

The variant is the one CTranslate2 runs for its `TransformerSpec` with default options, so that a later converter
only renames weights. Read in CTranslate2's source (github:OpenNMT/CTranslate2 at 4.8.1, commit 0d8bcd3):

- `python/ctranslate2/specs/transformer_spec.py`: encoder and decoder default to `pre_norm=True`, ReLU
  activation, `scale_embeddings = True`, a `PositionEncoderSpec` whose `encodings` are optional (absent: generated
  at load time), a final `layer_norm` on the encoder and on the decoder output (pre-norm without `no_final_norm`);
  each layer is LayerNorm -> self-attention -> residual, [LayerNorm -> cross-attention -> residual,]
  LayerNorm -> `linear_0` -> ReLU -> `linear_1` -> residual; every linear layer may carry a bias; the decoder ends
  in one `projection` (weight and optional bias). Decoder defaults `alignment_layer=-1, alignment_heads=1`.
- `src/layers/transformer.cc`: `build_embeddings_scale` multiplies embeddings by sqrt(embedding size); the
  encoder adds position encodings from index 0 after scaling; the decoder adds them from index `step` (0 for the
  start token, whose step is 0) after scaling; `alignment_heads == 0` means "all heads", averaged.
- `src/layers/common.cc`, `generate_sinusoidal_position_encoding`: timescales exp(-log(10000) / (d/2 - 1) * i)
  for i < d/2, row p = concat(sin((p + 1) * t), cos((p + 1) * t)) (sines then cosines, not interleaved; note the
  p + 1: the first token's row is built from time 1, not 0); `PositionEncoder::operator()` adds rows
  index .. index + time - 1. `LayerNorm` takes the model config's `layer_norm_epsilon`, or 1e-5 when absent
  (1e-6 is RMSNorm's default); the OpenNMT-py converter writes 1e-6 (`converters/opennmt_py.py`).
- `src/layers/attention.cc`: `queries_scale` defaults to 1 / sqrt(d_head); scores are masked to the key lengths
  before the softmax.

So here: LAYER_NORM_EPS = 1e-6, which a converter must write as `layer_norm_epsilon` (CTranslate2 would use 1e-5
otherwise); `position_encoding` is CTranslate2's table, so no `encodings` need be stored; the decoder's first
token is START (the converter's `decoder_start_token`); the step's `attention` is the last decoder layer's
cross-attention averaged over all heads, which is CTranslate2's `alignment_heads=0` (its default, 1, would be the
first head only).

The target embedding is the output projection's weight (tied), plus an output bias; `share_embeddings` makes the
source use it too. Dropout is residual dropout, as in Vaswani et al. (2017, section 5.4) and fairseq's defaults: on
the embeddings and on each sub-layer's output before it joins the residual stream, not on attention weights or the
feed-forward's hidden layer (on a CPU drawing masks took up to a sixth of a training step, and attention's masks kept
it off its fast path; README, "Model families"); on a CPU the masks' random bits come from NumPy, which draws them
faster than PyTorch there (`_residual_dropout`). It is given to each call, so it never depends on a module's
train/eval flag: the inference modules share the trained model's layers, and calling `.eval()` on them must not
change how training runs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..vocab import PAD_ID

LAYER_NORM_EPS = 1e-6


def check_config(config: ModelConfig) -> None:
    """Raise ConfigError for a configuration this family cannot build."""
    if config.arch != "transformer":
        raise ConfigError(f"the Transformer family needs arch 'transformer', got {config.arch!r}")
    if config.src_vocab_size < 5 or config.tgt_vocab_size < 5:
        raise ConfigError("vocabulary sizes must be set (4 special tokens + at least one character)")
    if config.heads < 1 or config.ff_size < 0:
        raise ConfigError(f"heads must be >= 1 and ff_size >= 0 (0: 4 x hidden_size), got {config.heads} and "
                          f"{config.ff_size}")
    if config.hidden_size % config.heads:
        raise ConfigError(f"hidden_size ({config.hidden_size}) must be divisible by heads ({config.heads}); "
                          "change one of them")
    if config.hidden_size % 2 or config.hidden_size < 4:
        raise ConfigError(f"hidden_size must be even and at least 4 for the position encoding (half sines, half "
                          f"cosines), got {config.hidden_size}")
    if config.share_embeddings and config.src_vocab_size != config.tgt_vocab_size:
        raise ConfigError(f"share_embeddings needs one joint vocabulary, but the source has {config.src_vocab_size} "
                          f"tokens and the target {config.tgt_vocab_size}; build a joint vocabulary or turn "
                          "share_embeddings off")


def position_encoding(length: int | torch.Tensor, depth: int, start: int | torch.Tensor = 0,
                      device: torch.device | None = None) -> torch.Tensor:
    """CTranslate2's sinusoidal table, rows start .. start + length - 1: (length, depth).

    `length` and `start` may be traced sizes (the step's cache length), so ONNX export keeps them dynamic."""
    half = depth // 2
    timescales = torch.exp(torch.arange(half, dtype=torch.float32, device=device) * (-math.log(10000.0) / (half - 1)))
    time = torch.arange(start + 1, start + length + 1, dtype=torch.float32, device=device)  # row p is time p + 1
    scaled = time[:, None] * timescales[None, :]  # (length, half)
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=-1)


def key_bias(mask: torch.Tensor) -> torch.Tensor:
    """mask (B, S) True on keys to attend to -> the additive bias (B, S) on their scores: 0, or -inf."""
    return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, float("-inf"))


class Attention(nn.Module):
    """Multi-head attention with biases on the query, key, value and output projections."""

    def __init__(self, hidden_size: int, heads: int):
        super().__init__()
        self.heads, self.head_size = heads, hidden_size // heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, heads, T, d_head)."""
        return x.reshape(x.shape[0], x.shape[1], self.heads, self.head_size).transpose(1, 2)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """(B, heads, T, d_head) -> (B, T, D)."""
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.heads * self.head_size)

    def forward(self, x, memory, mask=None, causal: bool = False) -> torch.Tensor:
        """x (B, T, D) attends to memory (B, S, D); mask (B, S) True on keys to attend to -> (B, T, D)."""
        q, k, v = self.split(self.query(x)), self.split(self.key(memory)), self.split(self.value(memory))
        if self.multiplies_itself(q):
            bias = None if mask is None else key_bias(mask)[:, None, None, :]
            if causal:
                T = q.shape[2]
                future = torch.full((T, T), float("-inf"), device=q.device).triu(1)
                bias = future if bias is None else bias + future
            return self.out(self.merge(torch.matmul(self.attention_weights(q, k, bias), v)))
        mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, S): the same keys for every head and query
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.out(self.merge(out))

    @staticmethod
    def multiplies_itself(q: torch.Tensor) -> bool:
        """Whether forward computes through plain matrix products rather than SDPA: when training on a CPU. There
        SDPA picks its flash kernel, whose backward pass is slow on sentences this short: 1.26x the pairs per second
        in bf16 without it (benchmarks/RESULTS.md, "Attention on a CPU")."""
        return q.device.type == "cpu" and torch.is_grad_enabled()

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The attention weights of split queries (..., T, d_head) over split keys (..., S, d_head), plus an
        additive bias (0 or -inf) broadcast onto the scores -> (..., T, S). The step's path, which needs them."""
        scores = torch.matmul(q * self.head_size**-0.5, k.transpose(-1, -2))
        if bias is not None:
            scores = scores + bias
        return torch.softmax(scores, dim=-1)


class FeedForward(nn.Module):
    def __init__(self, hidden_size: int, ff_size: int):
        super().__init__()
        self.linear_in = nn.Linear(hidden_size, ff_size)
        self.linear_out = nn.Linear(ff_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_out(F.relu(self.linear_in(x)))


class EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        D = config.hidden_size
        self.self_norm = nn.LayerNorm(D, eps=LAYER_NORM_EPS)
        self.self_attention = Attention(D, config.heads)
        self.ff_norm = nn.LayerNorm(D, eps=LAYER_NORM_EPS)
        self.ff = FeedForward(D, config.ff_size or 4 * D)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
        """x (B, S, D), mask (B, S) True on real tokens -> (B, S, D)."""
        h = self.self_norm(x)
        x = x + _residual_dropout(self.self_attention(h, h, mask), dropout)
        return x + _residual_dropout(self.ff(self.ff_norm(x)), dropout)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        D = config.hidden_size
        self.self_norm = nn.LayerNorm(D, eps=LAYER_NORM_EPS)
        self.self_attention = Attention(D, config.heads)
        self.cross_norm = nn.LayerNorm(D, eps=LAYER_NORM_EPS)
        self.cross_attention = Attention(D, config.heads)
        self.ff_norm = nn.LayerNorm(D, eps=LAYER_NORM_EPS)
        self.ff = FeedForward(D, config.ff_size or 4 * D)

    def forward(self, y, memory, mask, dropout: float = 0.0) -> torch.Tensor:
        """y (B, T, D) attends causally to itself and to memory (B, S, D) where mask (B, S) -> (B, T, D)."""
        h = self.self_norm(y)
        y = y + _residual_dropout(self.self_attention(h, h, causal=True), dropout)
        y = y + _residual_dropout(self.cross_attention(self.cross_norm(y), memory, mask), dropout)
        return y + _residual_dropout(self.ff(self.ff_norm(y)), dropout)


def _residual_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout at rate p, given per call (p = 0 outside training; see the module docstring)."""
    if p == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    # PyTorch draws a CPU dropout mask from its Mersenne Twister, one number per element on one thread. Here 16
    # random bits per element come from NumPy's SFC64, four to each 64-bit draw, seeded from PyTorch's generator
    # so that torch.manual_seed and --resume still decide every mask; the rate is p rounded to 1/65,536.
    dropped, n = min(round(p * 65536), 65535), x.numel()  # a rate just under 1 must not divide by 0
    seed = int(torch.randint(0, 2**63 - 1, (1,)))
    bits = np.random.SFC64(seed).random_raw(-(-n // 4)).view(np.int16)[:n].reshape(x.shape)
    keep = torch.from_numpy(bits) >= dropped - 32768  # uniform over the 65,536 values of an int16
    return torch.where(keep, x, 0) * (65536 / (65536 - dropped))


def _embed(embedding: nn.Embedding, tokens: torch.Tensor, start=0) -> torch.Tensor:
    """tokens (B, T) -> embeddings x sqrt(D) plus the position encodings of positions start .. start + T - 1."""
    D = embedding.embedding_dim
    return embedding(tokens) * math.sqrt(D) + position_encoding(tokens.shape[1], D, start, tokens.device)


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig, embedding: nn.Embedding | None = None):
        super().__init__()
        self.embedding = embedding or nn.Embedding(config.src_vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)

    def forward(self, src, lengths, dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S), lengths (B,) >= 1 -> memory (B, S, D), mask (B, S) True on real tokens."""
        mask = torch.arange(src.shape[1], device=src.device)[None, :] < lengths.to(src.device)[:, None]
        x = _residual_dropout(_embed(self.embedding, src), dropout)
        for layer in self.layers:
            x = layer(x, mask, dropout)
        return self.norm(x), mask


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.tgt_vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)
        self.output = nn.Linear(config.hidden_size, config.tgt_vocab_size)
        self.output.weight = self.embedding.weight  # tied: one matrix reads and writes target tokens

    def forward(self, tgt, memory, mask, dropout: float = 0.0) -> torch.Tensor:
        """tgt (B, T) starting with START, memory (B, S, D), mask (B, S) -> logits (B, T, V)."""
        y = _residual_dropout(_embed(self.embedding, tgt), dropout)
        for layer in self.layers:
            y = layer(y, memory, mask, dropout)
        return self.output(self.norm(y))


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        check_config(config)
        self.config = config
        self.decoder = Decoder(config)
        self.encoder = Encoder(config, self.decoder.embedding if config.share_embeddings else None)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # After the linear layers, since the output projection's weight is the target embedding. With std D**-0.5,
        # embeddings scaled by sqrt(D) have unit-size components, as the position encodings do, and the tied
        # output projection of a unit-variance LayerNorm output starts with unit-variance logits.
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, config.hidden_size**-0.5)

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S), src_lengths (B,) -> memory (B, S, D), mask (B, S) True on real tokens."""
        return self.encoder(src, src_lengths, self._dropout())

    def forward(self, src, src_lengths, tgt_in, tgt_out=None, label_smoothing: float = 0.0):
        """Teacher forcing: tgt_in starts with START, tgt_out is tgt_in shifted one step left (ends with END).

        Returns (logits (B, T, V), loss); the loss is the cross-entropy over non-PAD targets (label-smoothed when
        asked), None without tgt_out.
        """
        memory, mask = self.encode(src, src_lengths)
        logits = self.decoder(tgt_in, memory, mask, self._dropout())
        loss = None
        if tgt_out is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=PAD_ID,
                                   label_smoothing=label_smoothing)
        return logits, loss

    def _dropout(self) -> float:
        return self.config.dropout if self.training else 0.0

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied matrix counts once


# --- the family's interface (model.py, torch_engine.py and export.py use only these) -----------------------

Network = Transformer


def inference_modules(model: Transformer, *, for_export: bool = False) -> tuple[nn.Module, nn.Module]:
    """The inference encoder and decoder step of a trained model (the same graphs for export)."""
    return InferenceEncoder(model), DecoderStep(model)



def state_names(config: ModelConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The names of the decoder's row states (one row per beam, rows on axis 1) and of the per-sentence tensors
    (sentences on axis 0), in the order InferenceEncoder returns them and DecoderStep takes them."""
    return ("self_k", "self_v"), ("memory_k", "memory_v", "bias")


class InferenceEncoder(nn.Module):
    """src (B, S) int64, lengths (B,) int64 -> self_k, self_v (L, B, heads, 0, d_head): the decoder's empty
    self-attention caches; memory_k, memory_v (B, L, heads, S, d_head): each decoder layer's cross-attention keys
    and values of the encoder output, computed once per sentence (beams share them); bias (B, S): 0 on real
    tokens, -inf on padding. Shares the trained model's layers (no copy, no draw from the RNG)."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.encoder = model.encoder
        self.cross = nn.ModuleList(layer.cross_attention for layer in model.decoder.layers)

    def forward(self, src: torch.Tensor, lengths: torch.Tensor):
        memory, mask = self.encoder(src, lengths)  # (B, S, D), (B, S)
        memory_k = torch.stack([a.split(a.key(memory)) for a in self.cross], dim=1)  # (B, L, heads, S, d_head)
        memory_v = torch.stack([a.split(a.value(memory)) for a in self.cross], dim=1)
        bias = key_bias(mask)
        first = self.cross[0]
        empty = memory.new_zeros(len(self.cross), src.shape[0], first.heads, 0, first.head_size)
        return empty, empty, memory_k, memory_v, bias


class DecoderStep(nn.Module):
    """One decoder step for N rows, the K beams of each of n sentences (N = n x K, beam-major: rows i*K .. i*K+K-1
    are sentence i's): prev (N,) int64, self_k, self_v (L, N, heads, T, d_head), memory_k, memory_v
    (n, L, heads, S, d_head), bias (n, S) -> logits (N, V), self_k, self_v (L, N, heads, T + 1, d_head),
    attention (N, S): the last decoder layer's cross-attention weights averaged over its heads.

    The new token's position is T, the caches' length. Shares the trained model's layers."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.embedding = model.decoder.embedding
        self.layers = model.decoder.layers
        self.norm = model.decoder.norm
        self.output = model.decoder.output

    def forward(self, prev, self_k, self_v, memory_k, memory_v, bias):
        n = memory_k.shape[0]
        y = _embed(self.embedding, prev[:, None], start=self_k.shape[3])  # (N, 1, D)
        keys, values = [], []
        for index, layer in enumerate(self.layers):
            a = layer.self_attention
            h = layer.self_norm(y)
            k = torch.cat([self_k[index], a.split(a.key(h))], dim=2)  # (N, heads, T + 1, d_head)
            v = torch.cat([self_v[index], a.split(a.value(h))], dim=2)
            keys.append(k)
            values.append(v)
            y = y + a.out(a.merge(torch.matmul(a.attention_weights(a.split(a.query(h)), k), v)))
            # Cross-attention per sentence: its K beams are K queries against its one copy of the keys.
            a = layer.cross_attention
            q = a.query(layer.cross_norm(y)).reshape(n, -1, a.heads, a.head_size)  # (n, K, heads, d_head)
            q = q.transpose(1, 2)  # (n, heads, K, d_head)
            weights = a.attention_weights(q, memory_k[:, index], bias[:, None, None, :])  # (n, heads, K, S)
            context = torch.matmul(weights, memory_v[:, index])  # (n, heads, K, d_head)
            y = y + a.out(context.transpose(1, 2).reshape(y.shape))
            y = y + layer.ff(layer.ff_norm(y))
        logits = self.output(self.norm(y[:, 0]))  # (N, V)
        attention = weights.mean(dim=1).reshape(prev.shape[0], -1)  # (n, K, S) -> (N, S)
        return logits, torch.stack(keys), torch.stack(values), attention


def export_examples(model: Transformer) -> tuple[tuple, tuple, dict]:
    """Example inputs to trace InferenceEncoder (two sentences of lengths 5 and 3) and DecoderStep (n = 2
    sentences of K = 3 beams, caches of T = 3 steps), and the dynamic axes of every input and output name of both
    graphs, for torch.onnx.export. Draws nothing from the RNG."""
    config = model.config
    L, H = config.num_layers, config.heads
    d_head, n, K, S, T = config.hidden_size // H, 2, 3, 5, 3
    encoder_args = (torch.full((n, S), 4, dtype=torch.long), torch.tensor([S, 3]))
    bias = torch.zeros(n, S)
    bias[1, 3:] = float("-inf")
    step_args = (torch.full((n * K,), 4, dtype=torch.long), torch.zeros(L, n * K, H, T, d_head),
                 torch.zeros(L, n * K, H, T, d_head), torch.zeros(n, L, H, S, d_head), torch.zeros(n, L, H, S, d_head),
                 bias)
    rows, per_sentence = {1: "rows", 3: "cache"}, {0: "batch", 3: "source"}
    axes = {
        "src": {0: "batch", 1: "source"}, "lengths": {0: "batch"},
        "self_k": rows, "self_v": rows, "memory_k": per_sentence, "memory_v": per_sentence,
        "bias": {0: "batch", 1: "source"},
        "prev": {0: "rows"}, "logits": {0: "rows"}, "self_k_out": {1: "rows", 3: "cache_out"},
        "self_v_out": {1: "rows", 3: "cache_out"}, "attention": {0: "rows", 1: "source"},
    }
    return encoder_args, step_args, axes
