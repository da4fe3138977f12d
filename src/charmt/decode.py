"""Translating with a trained model: batched greedy decoding, batched beam search, and `Translator`.

The searches are written once, over NumPy arrays, and drive an engine: PyTorch's (torch_engine.py, for a model
directory, on the CPU or CUDA) or onnxruntime's (onnx_engine.py, for a directory `charmt export --onnx` wrote), so
both engines search exactly alike. An engine has

    encode(src (B, S) int64, lengths (B,) int64) -> state
    step(prev (N,) int64, state, attention=False) -> logits (N, V) float32, state, attention weights (N, S) or None
    select(state, rows (N',), sentences (B',) or None) -> state

where the N decoder rows are the K beams of each of the B sentences (N = B x K, beam-major, K = 1 for greedy):
`select` keeps and reorders decoder rows, and with `sentences` also what is kept per sentence (the encoder's
outputs, which beams share). Both searches encode each batch once, carry the state forward one character at a time
(never re-running the prefix), let finished sentences leave the batch, cap each output's length relative to its
input and stop runaway repetition. This module imports neither PyTorch nor onnxruntime.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .checkpoint import ModelInfo, config_path, read_json
from .errors import ConfigError
from .languages import join_sentences, split_sentences
from .vocab import (
    END_ID,
    PAD_ID,
    START_ID,
    UNK_ID,
    SubwordVocab,
    Vocab,
    canonical_spaces,
    collapse_whitespace,
    normalize,
)

log = logging.getLogger("charmt")

MAX_REPEAT_UNIT = 12  # longest repeated unit ("salade ") the repetition guard looks for
ENGINES = ("auto", "torch", "onnx", "ct2")
EXPORT_KINDS = {"onnx": "an ONNX export", "ct2": "a CTranslate2 export"}


class Engine(Protocol):
    name: str
    device: Any
    model: Any  # the torch module, or None

    def encode(self, src: np.ndarray, lengths: np.ndarray) -> Any: ...

    def step(self, prev: np.ndarray, state: Any, attention: bool = False) -> tuple[np.ndarray, Any, Any]: ...

    def select(self, state: Any, rows: np.ndarray, sentences: np.ndarray | None = None) -> Any: ...

    def memory_bytes(self) -> int: ...


@dataclass
class Hypothesis:
    text: str
    score: float  # log-probability, divided by length**length_penalty for beam search


def output_limits(src_lengths: np.ndarray, hard_limit: int, ratio: float | None = None) -> np.ndarray:
    """Longest output per sentence: ceil(ratio x input) + 10 characters (ratio: the model's `length_ratio`, 2 for
    models without one), never more than `hard_limit`."""
    ratio = 2.0 if ratio is None else ratio
    lengths = np.asarray(src_lengths, dtype=np.float64)
    caps = np.ceil(ratio * lengths - 1e-9).astype(np.int64) + 10  # - 1e-9: 2.4 x 5 is 12, not 12.000000000000002
    return np.minimum(caps, hard_limit)


# --- the repetition guard ---------------------------------------------------------------------------------

_UNITS = np.arange(1, MAX_REPEAT_UNIT + 1)
_SPAN = np.where(_UNITS == 1, 8, 4) * _UNITS  # a unit of 1 must repeat 8 times, longer units 4 times
_NEEDED = _SPAN - _UNITS  # tokens equal to the one a unit before them, at the end of such a tail


def _repeats(history: np.ndarray) -> np.ndarray:
    """(N, T) token histories -> (N,) True where the tail is one unit repeated (4x for units >= 2, 8x for 1)."""
    N, T = history.shape
    found = np.zeros(N, dtype=bool)
    for unit, span in zip(_UNITS, _SPAN):
        if span > T:
            break
        tail = history[:, T - span :]
        found |= (tail[:, unit:] == tail[:, :-unit]).all(axis=1)
    return found


class _Outputs:
    """The tokens written so far by each decoder row, with `_repeats` kept up to date one step at a time: per row
    and unit, how many of the last tokens equal the token `unit` places before them (a tail of `span` tokens is
    that unit repeated when the last span - unit tokens all do)."""

    def __init__(self, rows: int, max_steps: int):
        self.tokens = np.full((rows, MAX_REPEAT_UNIT + max_steps), -1, dtype=np.int64)  # -1: before the start
        self.runs = np.zeros((rows, MAX_REPEAT_UNIT), dtype=np.int64)
        self.steps = 0

    def push(self, token: np.ndarray) -> np.ndarray:
        """Append one token per row; True for the rows whose tail now repeats (as `_repeats` says)."""
        column = MAX_REPEAT_UNIT + self.steps
        self.tokens[:, column] = token
        same = self.tokens[:, column - MAX_REPEAT_UNIT : column][:, ::-1] == token[:, None]  # units 1, 2, ... 12
        np.add(self.runs, 1, out=self.runs)
        np.multiply(self.runs, same, out=self.runs)
        self.steps += 1
        return (self.runs >= _NEEDED).any(axis=1)

    def take(self, rows: np.ndarray) -> None:
        self.tokens, self.runs = self.tokens[rows], self.runs[rows]

    def row(self, row: int) -> list[int]:
        return self.tokens[row, MAX_REPEAT_UNIT : MAX_REPEAT_UNIT + self.steps].tolist()


def _trim(tokens: list[int], stop_repeats: bool) -> list[int]:
    """Cut at END, and a runaway repetition down to its first occurrence."""
    if END_ID in tokens:
        return tokens[: tokens.index(END_ID)]
    if stop_repeats:
        for unit, span in zip(_UNITS.tolist(), _SPAN.tolist()):
            if len(tokens) >= span and tokens[-span:][unit:] == tokens[-span:][:-unit]:
                end = len(tokens)
                while end - unit >= unit and tokens[end - 2 * unit : end - unit] == tokens[end - unit : end]:
                    end -= unit
                return tokens[:end]
    return tokens


def finish_tokens(outputs: list[list[int]], limits: list[int], stop_repeats: bool = True) -> list[list[int]]:
    """What greedy_decode gives for sentences whose argmax tokens are `outputs` (from a search run without caps or
    guard, such as CTranslate2's): each cut at END, at its limit, or where the repetition guard stops it.

    The guard's test at every step at once: for each unit, how many tokens in a row equal the one a unit before
    them (the counts `_Outputs.push` keeps step by step), and the first step where a count reaches its need."""
    if not outputs:
        return []
    stops = np.array([min(len(tokens), limit) for tokens, limit in zip(outputs, limits)], dtype=np.int64)
    steps = int(stops.max())
    if stop_repeats and steps:
        padded = np.full((len(outputs), MAX_REPEAT_UNIT + steps), -1, dtype=np.int64)  # -1: before the start
        for row, out in enumerate(outputs):
            padded[row, MAX_REPEAT_UNIT : MAX_REPEAT_UNIT + stops[row]] = out[: stops[row]]
            padded[row, MAX_REPEAT_UNIT + stops[row] :] = -2  # after the end: never compared
        tokens, at = padded[:, MAX_REPEAT_UNIT:], np.arange(steps)
        first = np.full(len(outputs), steps)  # the first step at which the guard stops each row
        for unit, needed in zip(_UNITS.tolist(), _NEEDED.tolist()):
            same = tokens == padded[:, MAX_REPEAT_UNIT - unit : MAX_REPEAT_UNIT - unit + steps]
            runs = at - np.maximum.accumulate(np.where(same, -1, at), axis=1)  # equal tokens in a row up to here
            hit = runs >= needed
            first = np.minimum(first, np.where(hit.any(axis=1), hit.argmax(axis=1), steps))
        stops = np.minimum(stops, first + 1)
    return [_trim(list(out[:stop]), stop_repeats) for out, stop in zip(outputs, stops.tolist())]


# --- the searches -----------------------------------------------------------------------------------------


def greedy_decode(engine: Engine, src: np.ndarray, src_lengths: np.ndarray, max_lengths: np.ndarray, *,
                  stop_repeats: bool = True) -> list[list[int]]:
    """Argmax decoding of a batch; each sentence stops at END, at its max length, or when it starts looping.

    Finished sentences leave the batch, so the last long sentence does not keep the others' work going.
    """
    B = src.shape[0]
    max_lengths = np.asarray(max_lengths)
    state = engine.encode(src, src_lengths)
    prev = np.full(B, START_ID, dtype=np.int64)
    active = np.arange(B)  # original row of each row still decoding
    written = _Outputs(B, int(max_lengths.max()))
    outputs: list[list[int]] = [[] for _ in range(B)]
    for step in range(int(max_lengths.max())):
        logits, state, _ = engine.step(prev, state)
        token = logits.argmax(axis=1)
        looping = written.push(token)
        done = (token == END_ID) | (step + 1 >= max_lengths[active])
        if stop_repeats:
            done |= looping
        if done.any():
            for row in np.flatnonzero(done):
                outputs[active[row]] = written.row(row)
            keep = np.flatnonzero(~done)
            if keep.size == 0:
                break
            state = engine.select(state, keep, keep)
            active, token = active[keep], token[keep]
            written.take(keep)
        prev = token
    return [_trim(tokens, stop_repeats) for tokens in outputs]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k highest scores of each row, best first (ties: the lower index first)."""
    rows = np.arange(scores.shape[0])[:, None]  # (fancy indexing: cheaper than take_along_axis per call)
    index = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    best = scores[rows, index]
    return index[rows, np.lexsort((index, -best), axis=1)]


def beam_search(engine: Engine, src: np.ndarray, src_lengths: np.ndarray, max_lengths: np.ndarray, *,
                beam: int = 5, n_best: int | None = 1, length_penalty: float = 1.0,
                stop_repeats: bool = True) -> list[list[tuple[list[int], float]]]:
    """Batched beam search; returns per sentence its `n_best` hypotheses (None: every finished one) as (tokens,
    normalised score), best first.

    Scores are summed log-probabilities divided by length**length_penalty (END counted). A sentence stops once
    it holds `beam` finished hypotheses; the best ones are kept.
    """
    if n_best is not None and n_best > beam:
        raise ConfigError(f"--n-best ({n_best}) cannot exceed --beam ({beam})")
    B, K = src.shape[0], beam
    max_lengths = np.asarray(max_lengths)
    state = engine.encode(src, src_lengths)
    state = engine.select(state, np.repeat(np.arange(B), K))  # K rows per sentence, beam-major
    scores = np.full((B, K), -np.inf)
    scores[:, 0] = 0.0  # all beams start identical: let only the first one expand
    written = _Outputs(B * K, int(max_lengths.max()))
    prev = np.full(B * K, START_ID, dtype=np.int64)
    active = np.arange(B)  # original sentence of each active sentence
    finished: list[list[tuple[list[int], float]]] = [[] for _ in range(B)]

    def norm(score: float, length: int) -> float:
        return float(score) / (length**length_penalty) if length_penalty else float(score)

    for step in range(int(max_lengths.max())):
        n = active.size
        logits, state, _ = engine.step(prev, state)
        V = logits.shape[1]
        logp = _log_softmax(logits).reshape(n, K, V)
        logp[:, :, PAD_ID] = -np.inf
        candidates = (scores[:, :, None] + logp).reshape(n, K * V)
        top_index = _top(candidates, 2 * K)  # at most K of them end, so K continue
        sentence = np.arange(n)[:, None]
        top_scores = candidates[sentence, top_index]
        top_beam, top_token = np.divmod(top_index, V)
        is_end = top_token == END_ID
        at_limit = step + 1 >= max_lengths[active]
        # Hypotheses that end here (END within the best K, or any beam at the length limit).
        for i, j in np.argwhere(is_end[:, :K] & np.isfinite(top_scores[:, :K])):
            finished[active[i]].append((written.row(i * K + top_beam[i, j]), norm(top_scores[i, j], step + 1)))
        # The K best continuing candidates (a stable sort keeps score order among non-END ones).
        order = np.argsort(is_end, axis=1, kind="stable")[:, :K]
        beam_index, token, scores = top_beam[sentence, order], top_token[sentence, order], top_scores[sentence, order]
        rows = (np.arange(n)[:, None] * K + beam_index).reshape(-1)  # the row each new beam continues
        written.take(rows)
        looping = written.push(token.reshape(-1)).reshape(n, K)
        if stop_repeats:
            for i, j in np.argwhere(looping & np.isfinite(scores)):
                finished[active[i]].append((_trim(written.row(i * K + j), True), norm(scores[i, j], step + 1)))
            scores = np.where(looping, -np.inf, scores)
        for i in np.flatnonzero(at_limit):
            for j in np.flatnonzero(np.isfinite(scores[i])):
                finished[active[i]].append((written.row(i * K + j), norm(scores[i, j], step + 1)))
        done = at_limit | ~np.isfinite(scores).any(axis=1)
        done |= np.array([len(finished[s]) >= K for s in active])
        keep = np.flatnonzero(~done)
        if keep.size == 0:
            break
        if keep.size < n:
            flat = (keep[:, None] * K + np.arange(K)).reshape(-1)
            state = engine.select(state, rows[flat], keep)
            active, scores, token = active[keep], scores[keep], token[keep]
            written.take(flat)
        else:
            state = engine.select(state, rows)
        prev = token.reshape(-1)
    return [sorted(hyps, key=lambda h: -h[1])[:n_best] for hyps in finished]


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


# --- Translator -------------------------------------------------------------------------------------------


@dataclass
class PreparedInputs:
    """Inputs made ready for the model by `Translator.prepare`."""

    count: int  # how many inputs were given (blank ones have no sentences)
    sentences: list[tuple[int, str]]  # (input index, sentence), in order
    warnings: list[str]  # unknown characters, sentences longer than any seen in training


def export_engine(directory: str | os.PathLike) -> str | None:
    """The engine of the export in `directory` ("onnx" or "ct2", as `charmt export` wrote it), or None for a
    PyTorch model directory."""
    path = config_path(directory)
    if not path.is_file():
        return None
    config = read_json(path)
    export = config.get("export") if isinstance(config, dict) else None
    return str(export.get("engine", "onnx")) if isinstance(export, dict) else None


class Translator:
    """A loaded model ready to translate: `Translator.load("model_dir").translate(["Hello."])`.

    `Translator(model, info, device)` wraps a PyTorch `Seq2Seq` (as training's validation does);
    `Translator(None, info, engine=...)` any other engine.
    """

    def __init__(self, model, info: ModelInfo, device=None, *, engine: Engine | None = None):
        if engine is None:
            from .torch_engine import TorchEngine

            engine = TorchEngine(model, device if device is not None else "cpu")
        self.engine, self.info = engine, info
        self.model, self.device = engine.model, engine.device
        self.keras_compat = info.keras_compat

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str = "auto", *, engine: str = "auto") -> Translator:
        """A model directory (PyTorch), an ONNX export (onnxruntime) or a CTranslate2 export; `engine` "auto" tells
        them apart."""
        if engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        exported = export_engine(directory)
        if engine == "auto":
            engine = exported or "torch"
        if engine != "torch" and exported != engine:
            what = EXPORT_KINDS.get(exported, "a PyTorch model directory")
            flag = "--onnx" if engine == "onnx" else "--ctranslate2"
            raise ConfigError(f"{directory} is {what}, not {EXPORT_KINDS[engine]}: export it with `charmt export "
                              f"MODEL {flag} DIR` and load DIR, or use the engine its kind needs")
        if engine == "onnx":
            from .onnx_engine import OnnxEngine

            runner = OnnxEngine(directory, device)
            translator = cls(None, runner.info, engine=runner)
        elif engine == "ct2":
            from .ct2_engine import Ct2Engine

            runner = Ct2Engine(directory, device)
            translator = cls(None, runner.info, engine=runner)
        else:
            if exported:
                raise ConfigError(f"{directory} holds {EXPORT_KINDS.get(exported, 'an export')}, which has no "
                                  "PyTorch weights: load it with its own engine (the default), or load the model "
                                  "directory it was exported from")
            translator = cls._load_torch(directory, device)
        info = translator.info
        log.info("model %s (%s preset, %s→%s) on %s, %s", directory, info.preset, info.source_lang or "?",
                 info.target_lang or "?", translator.device, getattr(translator.engine, "description",
                                                                     translator.engine.name))
        return translator

    @classmethod
    def _load_torch(cls, directory, device: str) -> Translator:
        try:
            from .checkpoint import load_model
            from .model import resolve_device
        except ModuleNotFoundError as err:
            if err.name != "torch":
                raise
            raise ConfigError(f"{directory} is a PyTorch model and PyTorch is not installed: pip install torch (the "
                              "README names the CPU and CUDA builds), or translate an ONNX export of it (charmt "
                              "export MODEL --onnx DIR, where PyTorch is installed)") from None
        resolved = resolve_device(device)
        model, info = load_model(directory, resolved)
        return cls(model, info, resolved)

    @property
    def source_vocab(self) -> Vocab:
        return self.info.source_vocab

    @property
    def target_vocab(self) -> Vocab:
        return self.info.target_vocab

    def translate(self, texts: list[str], *, beam: int = 1, batch_size: int = 128, split: bool = True,
                  warn: bool = True, length_penalty: float = 1.0) -> list[str]:
        """One translation per input, in order; empty or blank inputs give empty outputs."""
        results = self.translate_n_best(texts, beam=beam, n_best=1, batch_size=batch_size, split=split, warn=warn,
                                        length_penalty=length_penalty)
        return [hyps[0].text if hyps else "" for hyps in results]

    def translate_n_best(self, texts: list[str], *, beam: int = 1, n_best: int = 1, batch_size: int = 128,
                         split: bool = True, warn: bool = True, length_penalty: float = 1.0) -> list[list[Hypothesis]]:
        """Up to `n_best` hypotheses per input (greedy when beam == 1), never two that differ only in whitespace
        (so there may be fewer). Multi-sentence inputs are split into sentences, translated in one batch and
        rejoined (the score is then the sum over the sentences). Beam scores are log-probabilities divided by
        length**length_penalty (END counted; 0: plain sums)."""
        if beam < 1 or n_best < 1:
            raise ConfigError("--beam and --n-best must be at least 1")
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        if beam == 1 and n_best > 1:
            raise ConfigError("--n-best needs beam search: add --beam N with N >= n-best")
        if n_best > beam:
            raise ConfigError(f"--n-best ({n_best}) cannot exceed --beam ({beam})")
        if not (isinstance(length_penalty, (int, float)) and 0 <= length_penalty <= 10):
            raise ConfigError(f"--length-penalty must be a number from 0 to 10, got {length_penalty!r}")
        prepared = self.prepare(texts, split=split)
        if warn:
            for message in prepared.warnings:
                log.warning("%s", message)
        return self.translate_prepared(prepared, beam=beam, n_best=n_best, batch_size=batch_size,
                                       length_penalty=length_penalty)

    def translate_prepared(self, prepared: PreparedInputs, *, beam: int = 1, n_best: int = 1,
                           batch_size: int = 128, length_penalty: float = 1.0) -> list[list[Hypothesis]]:
        """`translate_n_best` of inputs already prepared (`prepare`): the search, and each input's sentences
        joined again."""
        pieces = prepared.sentences
        results = self._translate_sentences([s for _, s in pieces], beam, n_best, batch_size, length_penalty)
        joined: list[list[Hypothesis]] = [[] for _ in range(prepared.count)]
        by_input: dict[int, list[list[Hypothesis]]] = {}
        for (i, _), hyps in zip(pieces, results):
            by_input.setdefault(i, []).append(hyps)
        for i, parts in by_input.items():
            if len(parts) == 1:
                joined[i] = parts[0]
            else:  # rejoin the best of each sentence; alternatives only make sense sentence by sentence
                text = join_sentences([p[0].text for p in parts if p], self.info.target_lang)
                joined[i] = [Hypothesis(text, sum(p[0].score for p in parts if p))]
        return joined

    def _clean(self, text: str) -> str:
        """The input as the model saw its training sources: typographic spaces plain where it was trained so,
        whitespace runs (tabs, newlines) one space."""
        text = str(text)
        if self.info.selection.get("canonical_spaces"):
            text = canonical_spaces(text)
        return collapse_whitespace(text)

    def prepare(self, texts: list[str], *, split: bool = True) -> PreparedInputs:
        """The step before the search: every non-blank input cleaned as the training sources were, split into
        sentences by the source language's rules (unless `split` is False), and what to warn about."""
        pieces: list[tuple[int, str]] = []
        for i, text in enumerate(texts):
            text = self._clean(text)
            if not text:
                continue
            sentences = split_sentences(text, self.info.source_lang) if split and not self.keras_compat else [text]
            pieces.extend((i, sentence) for sentence in sentences)
        return PreparedInputs(len(texts), pieces, self._warnings([s for _, s in pieces]))

    def input_warnings(self, texts: list[str], *, split: bool = True) -> list[str]:
        """What `translate` warns about these inputs, as messages: unknown characters (which become <unk>) and
        sentences longer than any seen in training."""
        return self.prepare(texts, split=split).warnings

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

    def _encode_sources(self, sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = [self.source_vocab.encode(s) for s in sentences]
        if self.keras_compat:  # the example feeds every input padded with spaces to a fixed length
            length, pad = self.keras_compat["source_length"], self.source_vocab.index[self.keras_compat["pad_char"]]
            ids = [(seq + [pad] * length)[:length] for seq in ids]
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        src = np.full((len(ids), int(lengths.max())), PAD_ID, dtype=np.int64)
        for row, seq in enumerate(ids):
            src[row, : len(seq)] = seq
        return src, lengths

    def _limits(self, lengths: np.ndarray) -> np.ndarray:
        if self.keras_compat:  # the example stops only at "\n" or after max_decode_length + 1 characters
            return np.full_like(lengths, self.keras_compat["max_decode_length"] + 1)
        return output_limits(lengths, hard_limit=max(2 * self.info.max_target_length, 64),
                             ratio=self.info.length_ratio)

    def _text(self, tokens: list[int]) -> str:
        if self.keras_compat:  # the example writes out every character it predicts, a tab included
            return "".join(self.target_vocab.tokens[t] for t in tokens)
        return self.target_vocab.decode(tokens)

    def _translate_sentences(self, sentences: list[str], beam: int, n_best: int, batch_size: int,
                             length_penalty: float = 1.0) -> list[list[Hypothesis]]:
        results: list[list[Hypothesis]] = [[] for _ in sentences]
        stop_repeats = not self.keras_compat
        search = getattr(self.engine, "search", None)  # an engine with a search of its own (CTranslate2)
        # Such an engine batches for itself and runs batches side by side: it gets larger groups to share out.
        group = getattr(self.engine, "group_sentences", 1) if search is not None else 1
        for batch in _batches_by_length([len(s) for s in sentences], batch_size * group, 16_384 * group):
            src, lengths = self._encode_sources([sentences[i] for i in batch])
            limits = self._limits(lengths)
            if search is not None:
                found = search(src, lengths, limits, beam=beam, length_penalty=length_penalty)
                finished = iter(finish_tokens([tokens for hyps in found for tokens, _ in hyps],
                                              [int(limit) for hyps, limit in zip(found, limits) for _ in hyps],
                                              stop_repeats))
                outs = [[(next(finished), score) for _, score in hyps] for hyps in found]
            elif beam == 1:
                outs = [[(tokens, float("nan"))]
                        for tokens in greedy_decode(self.engine, src, lengths, limits, stop_repeats=stop_repeats)]
            else:
                outs = beam_search(self.engine, src, lengths, limits, beam=beam, n_best=None,
                                   length_penalty=length_penalty, stop_repeats=stop_repeats)
            for i, hyps in zip(batch, outs):
                distinct: dict[str, Hypothesis] = {}  # best first: the first of each whitespace-collapsed text
                for tokens, score in hyps:
                    text = self._text(tokens)
                    distinct.setdefault(collapse_whitespace(text), Hypothesis(text, score))
                results[i] = list(distinct.values())[:n_best]
        return results


# What `attention_weights` shows of each family (the CLI's heatmap and the web page say it).
ATTENTION_SHOWN = {"lstm": "Luong attention of the decoder's top layer",
                   "transformer": "last decoder layer's cross-attention, mean of its heads"}


def attention_weights(translator: Translator, sentence: str) -> tuple[list[str], list[str], list[list[float]]]:
    """Greedy-decode one sentence (whitespace collapsed, not split) and return its source units, its output units
    and the attention weights: one row per output unit, one column per source unit (characters, or subword pieces
    with their spaces written out, so that the output units joined give the translation).

    The output is the one `translator.translate([sentence], split=False)` gives; each row sums to 1. An LSTM has
    one attention; for a Transformer these are the last decoder layer's cross-attention weights, averaged over its
    heads.
    """
    if not hasattr(translator.engine, "step"):
        raise ConfigError(f"the {translator.engine.name} engine runs its own search and shows no attention here: "
                          "show it with the model directory, or its ONNX export")
    if not translator.info.model.has_attention:
        raise ConfigError("this model has no attention weights to show (it was trained with --attention none); "
                          "train one with --attention luong")
    sentence = translator._clean(sentence)
    if not sentence:
        raise ConfigError("attention needs a non-empty sentence")
    engine, target = translator.engine, translator.target_vocab
    src, lengths = translator._encode_sources([sentence])
    limit = int(translator._limits(lengths)[0])
    state = engine.encode(src, lengths)
    prev = np.full(1, START_ID, dtype=np.int64)
    written = _Outputs(1, limit)
    rows: list[list[float]] = []
    for _ in range(limit):
        logits, state, weights = engine.step(prev, state, attention=True)
        prev = logits.argmax(axis=1)
        rows.append(weights[0].tolist())
        looping = written.push(prev)[0]
        if int(prev[0]) == END_ID or looping:
            break
    tokens = _trim(written.row(0), True)
    subwords = isinstance(target, SubwordVocab)
    # One source column per unit the encoder read.
    source = [_shown(translator.source_vocab, i) for i in src[0]] if subwords else list(normalize(sentence))
    output, matrix = [], []
    for token, row in zip(tokens, rows):
        if token in (PAD_ID, START_ID):  # never shown by Vocab.decode, so no row either
            continue
        output.append(_shown(target, token) if subwords else target.decode([token]))
        matrix.append(row[: len(source)])
    if subwords and output:
        output[0] = output[0].lstrip(" ")  # the space SentencePiece writes before a text's first word
    return source, output, matrix


def _shown(vocab: SubwordVocab, token: int) -> str:
    """A subword piece as text: SentencePiece's word-start mark (▁) written as the space it stands for."""
    return "\ufffd" if token == UNK_ID else vocab.tokens[int(token)].replace("\u2581", " ")

