"""Character vocabularies: the one path from text to token ids and back, shared by training and translation.

Index 0 is PAD, which never stands for a real character (the Keras example padded with the space character, so
its "masked" accuracy masked nothing). START is the tab and END the newline, as in the example.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

PAD = "<pad>"
UNK = "<unk>"
START = "\t"
END = "\n"
SPECIALS = (PAD, UNK, START, END)
PAD_ID, UNK_ID, START_ID, END_ID = range(4)


def normalize(text: str) -> str:
    """NFC-normalise, so that 'é' typed as one code point or as 'e' + accent is the same character."""
    return unicodedata.normalize("NFC", text)


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
    def build(cls, texts: Iterable[str]) -> Vocab:
        chars: set[str] = set()
        for text in texts:
            chars.update(normalize(text))
        chars -= {START, END}  # they only ever appear as the markers
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
