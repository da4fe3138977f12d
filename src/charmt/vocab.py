"""Character vocabularies: the one path from text to token ids and back, shared by training and translation.

Index 0 is PAD, which never stands for a real character (the Keras example padded with the space character, so
its "masked" accuracy masked nothing). START is the tab and END the newline, as in the example.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable

PAD = "<pad>"
UNK = "<unk>"
START = "\t"
END = "\n"
SPECIALS = (PAD, UNK, START, END)
PAD_ID, UNK_ID, START_ID, END_ID = range(4)


def normalize(text: str) -> str:
    """NFC-normalise, so that 'é' typed as one code point or as 'e' + accent is the same character.

    In a text not yet in NFC, a run of more than 30 combining marks, which no language writes, first gets U+034F
    (combining grapheme joiner) after every 30, as Unicode's Stream-Safe Text Format has it (UAX #15): unicodedata
    takes time quadratic in the length of such a run (100,000 accents in no canonical order: 13 s), and linear
    with the joiners. Checking whether a text is in NFC takes linear time.
    """
    if text.isascii() or unicodedata.is_normalized("NFC", text):
        return text
    return unicodedata.normalize("NFC", _long_mark_run().sub("\\g<0>\u034f", text))


@functools.cache
def _long_mark_run() -> re.Pattern:
    """30 combining marks followed by another one. A mark: a character of canonical combining class other than 0,
    or one that decomposes into such characters (three Tibetan vowel signs)."""
    marks = [c for c in range(sys.maxunicode + 1) if unicodedata.combining(chr(c)) or (
        unicodedata.decomposition(chr(c)) and unicodedata.combining(unicodedata.normalize("NFD", chr(c))[0]))]
    ranges = []
    for c in marks:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    mark = "[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges) + "]"
    return re.compile(f"{mark}{{30}}(?={mark})")


# Spaces that look like a plain space: no-break (U+00A0), narrow no-break (U+202F, French before ? ! : ;), thin,
# figure, punctuation and hair spaces. The ideographic space U+3000 is a character of its own and stays.
_TYPOGRAPHIC_SPACES = re.compile("[\u00a0\u2007\u2008\u2009\u200a\u202f\u205f]")


def canonical_spaces(text: str) -> str:
    """`text` with every typographic space as a plain space (the French file writes "gare ?" with any of three
    spaces, which a model would otherwise learn as three invisible variants)."""
    return _TYPOGRAPHIC_SPACES.sub(" ", text)


def collapse_whitespace(text: str) -> str:
    """`text` with each run of whitespace (of any kind) as one plain space and none at the ends: texts that differ
    only in their whitespace become equal."""
    return " ".join(text.split())


class Vocab:
    """Maps characters to ids. `tokens[i]` is the character (or special token) with id i."""

    def __init__(self, tokens: list[str]):
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with the special tokens {SPECIALS!r}")
        self.tokens = list(tokens)
        self.index = {tok: i for i, tok in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("a vocabulary must not list a token twice")

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> Vocab:
        """The characters of `texts` seen at least `min_count` times; rarer ones will be encoded as UNK."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(normalize(text))
        chars = {ch for ch, n in counts.items() if n >= min_count} - {START, END}  # they only ever are the markers
        return cls(list(SPECIALS) + sorted(chars))

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.tokens == other.tokens

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens)"

    @property
    def chars(self) -> list[str]:
        """The real characters, without the special tokens."""
        return self.tokens[len(SPECIALS) :]

    def unknown_chars(self, text: str) -> set[str]:
        return {ch for ch in normalize(text) if ch not in self.index}

    def encode(self, text: str, *, add_start: bool = False, add_end: bool = False) -> list[int]:
        """Token ids of `text` after NFC normalisation; characters not in the vocabulary become UNK."""
        ids = [self.index.get(ch, UNK_ID) for ch in normalize(text)]
        if add_start:
            ids.insert(0, START_ID)
        if add_end:
            ids.append(END_ID)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, stopping at END and leaving out PAD and START; UNK comes back as U+FFFD."""
        out = []
        for i in ids:
            i = int(i)
            if i == END_ID:
                break
            if i in (PAD_ID, START_ID):
                continue
            out.append("\ufffd" if i == UNK_ID else self.tokens[i])
        return "".join(out)
