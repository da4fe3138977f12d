"""Translating with a trained model: batched greedy decoding, batched beam search, and `Translator`.

Both decoders encode each batch once and carry the LSTM state forward one character at a time (they never
re-run the prefix), cap the output length relative to the input and stop runaway repetition.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from dataclasses import dataclass

import torch

from .checkpoint import ModelInfo, load_model
from .errors import ConfigError
from .model import Seq2Seq, resolve_device
from .vocab import END_ID, PAD_ID, START_ID, Vocab

log = logging.getLogger("charmt")

MAX_REPEAT_UNIT = 12  # longest repeated unit ("salade ") the repetition guard looks for


@dataclass
class Hypothesis:
    text: str
    score: float  # log-probability, divided by length**length_penalty for beam search


def output_limits(src_lengths: torch.Tensor, hard_limit: int) -> torch.Tensor:
    """Longest output per sentence: twice the input plus 10 characters, never more than `hard_limit`."""
    return torch.clamp(2 * src_lengths + 10, max=hard_limit)


def _repeats(history: torch.Tensor) -> torch.Tensor:
    """(N, T) token histories -> (N,) True where the tail is one unit repeated (4x for units >= 2, 8x for 1)."""
    N, T = history.shape
    found = torch.zeros(N, dtype=torch.bool, device=history.device)
    for unit in range(1, MAX_REPEAT_UNIT + 1):
        span = unit * (8 if unit == 1 else 4)
        if span > T:
            break
        tail = history[:, T - span :]
        found |= (tail[:, unit:] == tail[:, :-unit]).all(dim=1)
    return found


def _decoding(function):
    """inference_mode, with PyTorch's own LSTM kernel: oneDNN's re-packs the weights at every one-step call, which
    makes decoding ~1.5x slower at batch 1 (benchmarks/RESULTS.md)."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        previous = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            with torch.inference_mode():
                return function(*args, **kwargs)
        finally:
            torch.backends.mkldnn.enabled = previous

    return run


@_decoding
def greedy_decode(model: Seq2Seq, src: torch.Tensor, src_lengths: torch.Tensor, max_lengths: torch.Tensor,
                  *, stop_repeats: bool = True) -> list[list[int]]:
    """Argmax decoding of a batch; each sentence stops at END, at its max length, or when it starts looping.

    Finished sentences leave the batch, so the last long sentence does not keep the others' work going.
    """
    B = src.shape[0]
    state = model.encode(src, src_lengths)
    prev = torch.full((B,), START_ID, dtype=torch.long, device=src.device)
    active = torch.arange(B, device=src.device)  # original row of each row still decoding
    max_lengths = max_lengths.to(src.device)
    history = torch.zeros((B, 0), dtype=torch.long, device=src.device)  # of the active rows
    outputs: list[list[int]] = [[] for _ in range(B)]
    for step in range(int(max_lengths.max())):
        logits, state, _ = model.decode_step(prev, state)
        token = logits.argmax(dim=-1)
        history = torch.cat([history, token[:, None]], dim=1)
        done = (token == END_ID) | (step + 1 >= max_lengths[active])
        if stop_repeats:
            done |= _repeats(history)
        if done.any():
            for row in done.nonzero()[:, 0].tolist():
                outputs[int(active[row])] = history[row].tolist()
            keep = (~done).nonzero()[:, 0]
            if keep.numel() == 0:
                break
            state, active, history, token = state.select(keep), active[keep], history[keep], token[keep]
        prev = token
    return [_trim(tokens, stop_repeats) for tokens in outputs]


def _trim(tokens: list[int], stop_repeats: bool) -> list[int]:
    """Cut at END, and a runaway repetition down to its first occurrence."""
    if END_ID in tokens:
        return tokens[: tokens.index(END_ID)]
    if stop_repeats:
        for unit in range(1, MAX_REPEAT_UNIT + 1):
            span = unit * (8 if unit == 1 else 4)
            if len(tokens) >= span and tokens[-span:][unit:] == tokens[-span:][:-unit]:
                end = len(tokens)
                while end - unit >= unit and tokens[end - 2 * unit : end - unit] == tokens[end - unit : end]:
                    end -= unit
                return tokens[:end]
    return tokens


@_decoding
def beam_search(model: Seq2Seq, src: torch.Tensor, src_lengths: torch.Tensor, max_lengths: torch.Tensor, *,
                beam: int = 5, n_best: int = 1, length_penalty: float = 1.0,
                stop_repeats: bool = True) -> list[list[tuple[list[int], float]]]:
    """Batched beam search; returns per sentence its `n_best` hypotheses as (tokens, normalised score).

    Scores are summed log-probabilities divided by length**length_penalty (END counted). A sentence stops once
    it holds `beam` finished hypotheses; the best ones are kept.
    """
    if n_best > beam:
        raise ConfigError(f"--n-best ({n_best}) cannot exceed --beam ({beam})")
    B, K, device = src.shape[0], beam, src.device
    state = model.encode(src, src_lengths)
    rows = torch.arange(B, device=device).repeat_interleave(K)
    state = state.select(rows)  # (B*K) rows, beam-major within each sentence
    max_lengths = max_lengths.to(device)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: let only the first one expand
    history = torch.zeros((B, K, 0), dtype=torch.long, device=device)
    prev = torch.full((B * K,), START_ID, dtype=torch.long, device=device)
    active = torch.arange(B, device=device)  # original sentence of each active sentence
    finished: list[list[tuple[list[int], float]]] = [[] for _ in range(B)]

    def norm(score: float, length: int) -> float:
        return score / (length**length_penalty) if length_penalty else score

    for step in range(int(max_lengths.max())):
        n = active.numel()
        logits, state, _ = model.decode_step(prev, state)
        V = logits.shape[-1]
        logp = torch.log_softmax(logits.float(), dim=-1).view(n, K, V)
        logp[:, :, PAD_ID] = float("-inf")
        candidates = (scores[:, :, None] + logp).view(n, K * V)
        top_scores, top_index = candidates.topk(2 * K, dim=1)  # at most K of them end, so K continue
        top_beam, top_token = top_index // V, top_index % V
        is_end = top_token == END_ID
        at_limit = step + 1 >= max_lengths[active]
        # Hypotheses that end here (END within the best K, or any beam at the length limit).
        for i, j in (is_end[:, :K] & torch.isfinite(top_scores[:, :K])).nonzero().tolist():
            sent = int(active[i])
            finished[sent].append((history[i, top_beam[i, j]].tolist(), norm(float(top_scores[i, j]), step + 1)))
        # The K best continuing candidates (stable sort keeps score order among non-END ones).
        order = torch.argsort(is_end.int(), dim=1, stable=True)[:, :K]
        beam_index = top_beam.gather(1, order)
        token = top_token.gather(1, order)
        scores = top_scores.gather(1, order)
        history = torch.cat([history.gather(1, beam_index[:, :, None].expand(-1, -1, history.shape[2])),
                             token[:, :, None]], dim=2)
        if stop_repeats:
            looping = _repeats(history.view(n * K, -1)).view(n, K)
            for i, j in (looping & torch.isfinite(scores)).nonzero().tolist():
                tokens = _trim(history[i, j].tolist(), True)
                finished[int(active[i])].append((tokens, norm(float(scores[i, j]), step + 1)))
            scores = scores.masked_fill(looping, float("-inf"))
        for i in at_limit.nonzero()[:, 0].tolist():
            for j in range(K):
                if math.isfinite(float(scores[i, j])):
                    finished[int(active[i])].append((history[i, j].tolist(), norm(float(scores[i, j]), step + 1)))
        done = at_limit | ~torch.isfinite(scores).any(dim=1)
        done |= torch.tensor([len(finished[int(s)]) >= K for s in active.tolist()], device=device)
        keep = (~done).nonzero()[:, 0]
        if keep.numel() == 0:
            break
        if keep.numel() < n:
            flat = (keep[:, None] * K + torch.arange(K, device=device)[None, :]).view(-1)
            state, active = state.select(flat), active[keep]
            scores, history, token, beam_index = scores[keep], history[keep], token[keep], beam_index[keep]
        base = (torch.arange(active.numel(), device=device) * K)[:, None]
        state = state.select((base + beam_index).view(-1))
        prev = token.reshape(-1)
    return [sorted(hyps, key=lambda h: -h[1])[:n_best] for hyps in finished]


_SENTENCE_BREAK = re.compile(r"[.!?…][\"'»”’)\]]*\s+")  # end punctuation, closing quotes, then space
_OPENING = "\"'«“‘(¿¡["


def split_sentences(text: str) -> list[str]:
    """Split a paragraph where ., !, ? or … (and any closing quotes) is followed by space and a capital letter
    or digit (a model trained on sentences should not be fed a paragraph in one piece)."""
    pieces, start = [], 0
    for match in _SENTENCE_BREAK.finditer(text):
        following = text[match.end() :].lstrip(_OPENING)[:1]
        if following and (following.isupper() or following.isdigit()):
            pieces.append(text[start : match.end()])
            start = match.end()
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip()]


def _batches_by_length(lengths: list[int], batch_size: int, max_chars: int = 16_384) -> list[list[int]]:
    """Indices in order of length, cut into batches of at most `batch_size` sentences and about `max_chars`
    padded characters, so one very long input does not make a whole batch of short ones slow."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * lengths[i] <= max_chars:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class Translator:
    """A loaded model ready to translate: `Translator.load("model_dir").translate(["Hello."])`."""

    def __init__(self, model: Seq2Seq, info: ModelInfo, device: torch.device):
        self.model, self.info, self.device = model.to(device).eval(), info, device
        self.keras_compat = info.keras_compat

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str = "auto") -> Translator:
        device = resolve_device(device)
        model, info = load_model(directory, device)
        log.info("model %s (%s preset) on device %s", directory, info.preset, device)
        return cls(model, info, device)

    @property
    def source_vocab(self) -> Vocab:
        return self.info.source_vocab

    @property
    def target_vocab(self) -> Vocab:
        return self.info.target_vocab

    def translate(self, texts: list[str], *, beam: int = 1, batch_size: int = 128, split: bool = True,
                  warn: bool = True) -> list[str]:
        """One translation per input, in order; empty or blank inputs give empty outputs."""
        results = self.translate_n_best(texts, beam=beam, n_best=1, batch_size=batch_size, split=split, warn=warn)
        return [hyps[0].text if hyps else "" for hyps in results]

    def translate_n_best(self, texts: list[str], *, beam: int = 1, n_best: int = 1, batch_size: int = 128,
                         split: bool = True, warn: bool = True) -> list[list[Hypothesis]]:
        """Up to `n_best` hypotheses per input (greedy when beam == 1). Multi-sentence inputs are split into
        sentences, translated in one batch and rejoined (the score is then the sum over the sentences)."""
        if beam < 1 or n_best < 1:
            raise ConfigError("--beam and --n-best must be at least 1")
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        if beam == 1 and n_best > 1:
            raise ConfigError("--n-best needs beam search: add --beam N with N >= n-best")
        pieces = self._sentences(texts, split)
        if warn:
            for message in self._warnings([s for _, s in pieces]):
                log.warning("%s", message)
        results = self._translate_sentences([s for _, s in pieces], beam, n_best, batch_size)
        joined: list[list[Hypothesis]] = [[] for _ in texts]
        by_input: dict[int, list[list[Hypothesis]]] = {}
        for (i, _), hyps in zip(pieces, results):
            by_input.setdefault(i, []).append(hyps)
        for i, parts in by_input.items():
            if len(parts) == 1:
                joined[i] = parts[0]
            else:  # rejoin the best of each sentence; alternatives only make sense sentence by sentence
                joined[i] = [Hypothesis(" ".join(p[0].text for p in parts if p), sum(p[0].score for p in parts if p))]
        return joined

    def _sentences(self, texts: list[str], split: bool) -> list[tuple[int, str]]:
        """(input index, sentence) for every sentence of every non-blank input, whitespace collapsed."""
        pieces: list[tuple[int, str]] = []
        for i, text in enumerate(texts):
            text = " ".join(str(text).split())  # tabs, newlines and runs of spaces become one space
            if not text:
                continue
            for sentence in split_sentences(text) if split and not self.keras_compat else [text]:
                pieces.append((i, sentence))
        return pieces

    def input_warnings(self, texts: list[str], *, split: bool = True) -> list[str]:
        """What `translate` warns about these inputs, as messages: unknown characters (which become <unk>) and
        sentences longer than any seen in training."""
        return self._warnings([s for _, s in self._sentences(texts, split)])

    def _warnings(self, sentences: list[str]) -> list[str]:
        messages = []
        unknown = sorted(set().union(*(self.source_vocab.unknown_chars(s) for s in sentences))) if sentences else []
        if unknown:
            shown = " ".join(repr(c) for c in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
            messages.append(f"{len(unknown)} unknown character(s) replaced by <unk> (not in the training data): "
                            f"{shown}")
        longest = self.info.max_source_length
        too_long = [s for s in sentences if longest and len(s) > longest]
        if too_long:
            messages.append(f"{len(too_long)} sentence(s) are longer than any seen in training ({longest} "
                            "characters); expect poor output")
        return messages

    def _encode_sources(self, sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [self.source_vocab.encode(s) for s in sentences]
        if self.keras_compat:  # the example feeds every input padded with spaces to a fixed length
            length, pad = self.keras_compat["source_length"], self.source_vocab.index[self.keras_compat["pad_char"]]
            ids = [(seq + [pad] * length)[:length] for seq in ids]
        lengths = torch.tensor([len(x) for x in ids])
        src = torch.full((len(ids), int(lengths.max())), PAD_ID, dtype=torch.long)
        for row, seq in enumerate(ids):
            src[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return src.to(self.device), lengths

    def _text(self, tokens: list[int]) -> str:
        if self.keras_compat:  # the example writes out every character it predicts, a tab included
            return "".join(self.target_vocab.tokens[t] for t in tokens)
        return self.target_vocab.decode(tokens)

    def _translate_sentences(self, sentences: list[str], beam: int, n_best: int,
                             batch_size: int) -> list[list[Hypothesis]]:
        results: list[list[Hypothesis]] = [[] for _ in sentences]
        for batch in _batches_by_length([len(s) for s in sentences], batch_size):
            src, lengths = self._encode_sources([sentences[i] for i in batch])
            if self.keras_compat:  # the example stops only at "\n" or after max_decode_length + 1 characters
                limits = torch.full_like(lengths, self.keras_compat["max_decode_length"] + 1)
            else:
                limits = output_limits(lengths, hard_limit=max(2 * self.info.max_target_length, 64))
            stop_repeats = not self.keras_compat
            if beam == 1:
                outs = greedy_decode(self.model, src, lengths, limits, stop_repeats=stop_repeats)
                for i, tokens in zip(batch, outs):
                    results[i] = [Hypothesis(self._text(tokens), float("nan"))]
            else:
                outs = beam_search(self.model, src, lengths, limits, beam=beam, n_best=n_best,
                                   stop_repeats=stop_repeats)
                for i, hyps in zip(batch, outs):
                    results[i] = [Hypothesis(self._text(t), s) for t, s in hyps]
        return results


@_decoding
def attention_weights(translator: Translator, sentence: str) -> tuple[list[str], list[str], list[list[float]]]:
    """Greedy-decode one sentence (whitespace collapsed, not split) and return its source characters, its output
    characters and the attention weights: one row per output character, one column per source character.

    The output is the one `translator.translate([sentence], split=False)` gives; each row sums to 1.
    """
    from .vocab import normalize

    if translator.model.config.attention == "none":
        raise ConfigError("this model has no attention weights to show (it was trained with --attention none); "
                          "train one with --attention luong")
    sentence = " ".join(str(sentence).split())
    if not sentence:
        raise ConfigError("attention needs a non-empty sentence")
    model, target = translator.model, translator.target_vocab
    src, lengths = translator._encode_sources([sentence])
    limit = int(output_limits(lengths, hard_limit=max(2 * translator.info.max_target_length, 64))[0])
    state = model.encode(src, lengths)
    prev = torch.full((1,), START_ID, dtype=torch.long, device=src.device)
    tokens: list[int] = []
    rows: list[list[float]] = []
    for _ in range(limit):
        logits, state, weights = model.decode_step(prev, state)
        prev = logits.argmax(dim=-1)
        tokens.append(int(prev[0]))
        rows.append(weights[0].float().cpu().tolist())
        if tokens[-1] == END_ID or bool(_repeats(torch.tensor([tokens]))[0]):
            break
    tokens = _trim(tokens, True)
    source = list(normalize(sentence))  # one source column per character the encoder read
    output, matrix = [], []
    for token, row in zip(tokens, rows):
        if token in (PAD_ID, START_ID):  # never shown by Vocab.decode, so no row either
            continue
        output.append(target.decode([token]))
        matrix.append(row[: len(source)])
    return source, output, matrix
