"""What the network sees: the one-hot encodings of encoder input, decoder input and decoder target.

This is the Keras example's exercise: the decoder target is the decoder input shifted one step to the left,
without the START character, so at step t the decoder reads character t and must predict character t+1.
`encoding_table` shows one pair side by side; `one_hot_arrays` builds the example's three arrays for many.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .vocab import END_ID, PAD_ID, START_ID, Vocab


def _cell(t: int, ids: list[int], vocab: Vocab) -> str:
    """'(t, index) char' as numpy.nonzero would list it, with the character quoted (a combining mark, such as a
    Devanagari vowel sign, on a dotted circle, so that it does not combine with the quote)."""
    if t >= len(ids):
        return ""
    i = ids[t]
    shown = {START_ID: "\\t", END_ID: "\\n"}.get(i, vocab.tokens[i])
    if len(shown) == 1 and unicodedata.combining(shown):
        shown = "\u25cc" + shown
    return f"({t}, {i}) '{shown}'"


def _padded(text: str, columns: int) -> str:
    """`text` followed by spaces up to `columns` terminal columns (Chinese and Japanese characters take two)."""
    from wcwidth import wcswidth

    return text + " " * max(0, columns - max(wcswidth(text), 0))


def encoding_table(source: str, target: str | None, source_vocab: Vocab, target_vocab: Vocab) -> str:
    """Side-by-side table of the three one-hot sequences of one pair."""
    enc = source_vocab.encode(source)
    unknown = source_vocab.unknown_chars(source) | (target_vocab.unknown_chars(target) if target else set())
    lines = [f"source vocabulary: {len(source_vocab)} tokens; target vocabulary: {len(target_vocab)} tokens "
             "(ids 0-3 are <pad>, <unk>, \\t start, \\n end; <pad> never enters the model)"]
    if target is None:
        lines.append(f"{'step':>4}  encoder input")
        lines += [f"{t:>4}  {_cell(t, enc, source_vocab)}" for t in range(len(enc))]
    else:
        full = target_vocab.encode(target, add_start=True, add_end=True)
        dec_in, dec_out = full[:-1], full[1:]  # the target is the input shifted one step to the left
        lines.append(f"{'step':>4}  {'encoder input':<18}  {'decoder input':<18}  decoder target")
        for t in range(max(len(enc), len(dec_in))):
            cells = (_cell(t, enc, source_vocab), _cell(t, dec_in, target_vocab), _cell(t, dec_out, target_vocab))
            lines.append(f"{t:>4}  {_padded(cells[0], 18)}  {_padded(cells[1], 18)}  {cells[2]}".rstrip())
    if unknown:
        lines.append(f"characters not in the vocabulary (shown as <unk>): {' '.join(sorted(map(repr, unknown)))}")
    return "\n".join(lines)


def data_summary(info: dict) -> str:
    """The example's printed summary of its data ("Number of samples: ...").

    `info` holds `samples`, the vocabulary sizes `source_vocab` and `target_vocab` (with charmt's 4 special
    tokens), `max_input_length` and `max_target_length` (with START and END), and optionally the split sizes
    `train`, `validation` and `test`: the keys of train()'s "selection" event.
    """
    split = (f" (train {info['train']}, validation {info['validation']}, test {info['test']})"
             if "train" in info else "")
    return "\n".join([
        f"Number of samples: {info['samples']}{split}",
        f"Number of unique input tokens: {info['source_vocab'] - 4} (+4 special)",
        f"Number of unique output tokens: {info['target_vocab'] - 4} (+4 special)",
        f"Max sequence length for inputs: {info['max_input_length']}",
        f"Max sequence length for outputs: {info['max_target_length']} (with start and end)",
    ])


@dataclass(repr=False)
class OneHotArrays:
    """The example's `encoder_input_data`, `decoder_input_data` and `decoder_target_data`, from charmt's vocabularies.

    Row i is pair i; `decoder_target_data[i, t]` is `decoder_input_data[i, t + 1]`: the decoder reads START and
    the target's characters, and must predict the characters and END. charmt's decoder never reads END, so the
    decoder arrays have one step fewer than the example's (which also asks for a space after END).
    """

    sources: list[str]
    targets: list[str]  # without START and END
    source_vocab: Vocab
    target_vocab: Vocab
    padding: str  # "pad": padding steps are all-zero rows; "space": the space character, as the example pads
    encoder_input_data: np.ndarray  # (samples, longest source, len(source_vocab))
    decoder_input_data: np.ndarray  # (samples, longest target + 1, len(target_vocab))
    decoder_target_data: np.ndarray  # (samples, longest target + 1, len(target_vocab))

    def summary(self) -> str:
        """The example's printed summary of these pairs."""
        return data_summary({"samples": len(self.sources), "source_vocab": len(self.source_vocab),
                             "target_vocab": len(self.target_vocab),
                             "max_input_length": self.encoder_input_data.shape[1],
                             "max_target_length": self.decoder_input_data.shape[1] + 1})

    def table(self, i: int) -> str:
        """Pair i's three encodings side by side (`encoding_table`)."""
        return encoding_table(self.sources[i], self.targets[i], self.source_vocab, self.target_vocab)

    def __repr__(self) -> str:
        arrays = [f"{name}: {getattr(self, name).shape} {getattr(self, name).dtype}"
                  for name in ("encoder_input_data", "decoder_input_data", "decoder_target_data")]
        return "\n".join([f"OneHotArrays of {len(self.sources)} pairs, padding {self.padding!r}",
                          self.summary(), *arrays])


def one_hot_arrays(pairs: Iterable, source_vocab: Vocab | None = None, target_vocab: Vocab | None = None, *,
                   padding: str = "pad") -> OneHotArrays:
    """The example's three float32 one-hot arrays for `pairs` (`Pair`s, e.g. a selection's, or (source, target)
    tuples), with vocabularies built from the pairs as `charmt.train` builds them, unless given.

    With padding "pad", padding steps are all-zero rows: charmt's <pad> (id 0) never enters the model, and
    argmax over a row gives the token id, 0 at padding. With "space", they hold the space character, as the
    example's arrays do (so that every row holds a 1, and the example's "mask" keeps every step).
    """
    pairs = [(p.source, p.target) if hasattr(p, "source") else tuple(p) for p in pairs]
    if not pairs:
        raise ConfigError("no pairs to encode")
    if padding not in ("pad", "space"):
        raise ConfigError(f"padding must be 'pad' or 'space', got {padding!r}")
    source_vocab = source_vocab or Vocab.build(s for s, _ in pairs)
    target_vocab = target_vocab or Vocab.build(t for _, t in pairs)
    sources = [source_vocab.encode(s) for s, _ in pairs]
    targets = [target_vocab.encode(t, add_start=True, add_end=True) for _, t in pairs]
    fill = (PAD_ID, PAD_ID)
    if padding == "space":
        if " " not in source_vocab.index or " " not in target_vocab.index:
            raise ConfigError("padding 'space' needs the space character in both vocabularies")
        fill = (source_vocab.index[" "], target_vocab.index[" "])
    enc = _one_hot(sources, len(source_vocab), fill[0])
    dec_in = _one_hot([ids[:-1] for ids in targets], len(target_vocab), fill[1])
    dec_out = _one_hot([ids[1:] for ids in targets], len(target_vocab), fill[1])
    return OneHotArrays([s for s, _ in pairs], [t for _, t in pairs], source_vocab, target_vocab, padding,
                        enc, dec_in, dec_out)


def _one_hot(sequences: list[list[int]], size: int, fill: int) -> np.ndarray:
    """(len(sequences), longest, size) float32; steps after a sequence's end hold `fill` (PAD_ID: all zero)."""
    ids = np.full((len(sequences), max(len(s) for s in sequences)), fill, dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
    out = np.zeros((*ids.shape, size), dtype=np.float32)
    np.put_along_axis(out, ids[..., None], 1.0, axis=-1)
    if fill == PAD_ID:
        out[..., PAD_ID] = 0.0  # <pad> is no character: its row stays zero
    return out
