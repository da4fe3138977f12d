"""Vocabularies: the one path from text to token ids and back, shared by training and translation. `Vocab` maps
characters, `SubwordVocab` SentencePiece pieces behind the same surface.

Index 0 is PAD, which never stands for a real character (the Keras example padded with the space character, so
its "masked" accuracy masked nothing). START is the tab and END the newline, as in the example.
"""

from __future__ import annotations

import functools
import io
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable

from .errors import ConfigError, DataError, ModelFormatError

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
        return _with_markers([self.index.get(ch, UNK_ID) for ch in normalize(text)], add_start, add_end)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, stopping at END and leaving out PAD and START; UNK comes back as U+FFFD."""
        return "".join("\ufffd" if i == UNK_ID else self.tokens[i] for i in _text_ids(ids))


# Characters SentencePiece cannot be given as themselves: it reads U+2581 ("▁") as its own mark for a space, so the
# text would come back with a space there, and a lone surrogate cannot be written as UTF-8. encode() sends a
# character the model does not know in their place, which becomes UNK as any unknown character does.
_UNSENDABLE = re.compile("[\u2581\ud800-\udfff]")
_SENTINELS = ("\uffff", "\ufffe", "\U0010ffff")  # noncharacters: real text holds none, so a model misses one at least
_SPACE_PIECE = "\u2581"
_SUBWORD_SPECIALS = ("<pad>", "<unk>", "<s>", "</s>")  # at PAD_ID, UNK_ID, START_ID, END_ID


class SubwordVocab:
    """Maps text to SentencePiece unigram pieces, with the surface of `Vocab`: `tokens[i]` is the piece with id i
    (a space is written "▁" in pieces), and ids 0-3 are PAD, UNK, START and END as in `Vocab`.

    One SentencePieceProcessor serves every thread: its encode and decode are const C++ methods (the authors state
    they may be called from several threads at once, google/sentencepiece#207 and #657) and the Python binding
    releases the GIL around them, so a server needs no lock.
    """

    def __init__(self, model_bytes: bytes, chars: list[str] | None = None):
        """Load a serialized SentencePiece model (`model_bytes`, as `train` makes and `sentencepiece.model` keeps).
        `chars` are the characters of the training text that the model covers, stored beside it; None reads them
        from the model's one-character pieces."""
        import sentencepiece as spm

        _quiet_sentencepiece()
        self.model_bytes = bytes(model_bytes)
        self._processor = spm.SentencePieceProcessor()
        try:
            self._processor.LoadFromSerializedProto(self.model_bytes)
        except RuntimeError as err:
            raise ModelFormatError(f"the subword model is not a SentencePiece model ({str(err).strip()[:200]}): "
                                   "its sentencepiece.model is truncated or foreign; train the model again") from err
        self.tokens = [self._processor.IdToPiece(i) for i in range(self._processor.GetPieceSize())]
        self.index = {piece: i for i, piece in enumerate(self.tokens)}
        specials = tuple(self.tokens[: len(_SUBWORD_SPECIALS)])
        if specials != _SUBWORD_SPECIALS or self._processor.Decode([UNK_ID]) != "\ufffd":
            raise ModelFormatError(f"the SentencePiece model was not trained by charmt (ids 0-3 are {self.tokens[:4]}, "
                                   f"not {list(_SUBWORD_SPECIALS)} with <unk> shown as U+FFFD): train it with "
                                   "SubwordVocab.train")
        # What the model can spell: its one-character pieces (the unigram trainer keeps every character it covers as
        # one). The dummy "▁" before each sentence makes the space always one of them.
        self._known = frozenset(" " if p == _SPACE_PIECE else p for p in self.tokens[len(_SUBWORD_SPECIALS) :]
                                if len(p) == 1)
        self._sentinel = next((s for s in _SENTINELS if s not in self._known), _SENTINELS[0])
        chars = sorted(self._known) if chars is None else list(chars)
        if not set(chars) <= self._known:
            extra = "".join(sorted(set(chars) - self._known))[:40]
            raise ModelFormatError(f"the characters stored with the subword model ({extra!r}) are not in its pieces: "
                                   "sentencepiece.model and the vocabulary come from different trainings; train again")
        self.chars = chars

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, character_coverage: float = 1.0) -> SubwordVocab:
        """A unigram model of at most `vocab_size` pieces (fewer when `texts` are too few to fill it) trained in
        memory on the NFC-normalised `texts`; the same texts give a byte-identical model. With
        `character_coverage` below 1 the rarest characters are left out and encoded as UNK."""
        import sentencepiece as spm

        _quiet_sentencepiece()
        seen: set[str] = set()

        def sentences():
            for text in texts:
                text = normalize(text)
                seen.update(text)
                yield text

        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.Train(
                sentence_iterator=sentences(), model_writer=model, model_type="unigram", vocab_size=vocab_size,
                character_coverage=character_coverage,
                hard_vocab_limit=False,  # a small corpus gives fewer pieces instead of failing
                pad_id=PAD_ID, unk_id=UNK_ID, bos_id=START_ID, eos_id=END_ID,
                pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
                unk_surface="\ufffd",  # decode() shows UNK as Vocab does, not as SentencePiece's " ⁇ "
                # charmt hands over NFC text and expects it back: a normalisation rule (the default NFKC folds "ﬁ"
                # to "fi", full-width to half-width) would give back text the user did not write.
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,  # every space comes back where it was
                split_digits=True,  # numbers are copied digit by digit as the character models do, and no piece
                                    # is spent on one year or price
                byte_fallback=False,  # an unknown character is one UNK (U+FFFD), as in Vocab, not UTF-8 bytes
                # Determinism: one thread and the sentences in their order; the unigram trainer draws no random
                # numbers then (the seed is process-wide in SentencePiece, so it is left alone).
                num_threads=1, shuffle_input_sentence=False,
                input_sentence_size=2_000_000,  # only the first sentences are read, which bounds training time
                minloglevel=3,  # silent: the library must not write to stderr
            )
        except RuntimeError as err:
            message = str(err).strip()
            if "sentences_.empty()" in message:
                raise DataError("no text to train a subword vocabulary on: give at least one non-empty "
                                "sentence") from err
            needed = re.search(r"required_chars\. \d+ vs (\d+)", message)
            if needed:
                raise ConfigError(f"a vocabulary of {vocab_size} pieces cannot hold the 4 special tokens and the "
                                  f"{int(needed[1]) - 4} characters of the texts: raise vocab_size to at least "
                                  f"{needed[1]}, or lower character_coverage") from err
            raise ConfigError(f"SentencePiece could not train on these texts ({message[:200]}): check vocab_size "
                              "and character_coverage") from err
        vocab = cls(model.getvalue())
        vocab.chars = sorted(seen & vocab._known)
        return vocab

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SubwordVocab) and self.model_bytes == other.model_bytes and self.chars == other.chars

    def __repr__(self) -> str:
        return f"SubwordVocab({len(self)} pieces)"

    def unknown_chars(self, text: str) -> set[str]:
        return {ch for ch in normalize(text) if ch not in self._known}

    def encode(self, text: str, *, add_start: bool = False, add_end: bool = False) -> list[int]:
        """Piece ids of `text` after NFC normalisation; each character the model cannot spell becomes one UNK."""
        text = _UNSENDABLE.sub(self._sentinel, normalize(text))
        ids = []
        # SentencePiece gives a run of unknown characters as one piece whose text is the run: one UNK per character
        # keeps the count Vocab gives. Known pieces and unknown runs cannot be mistaken: a run holds no character
        # that any piece holds.
        for piece in self._processor.Encode(text, out_type=str):
            i = self.index.get(piece)
            ids.extend([UNK_ID] * len(piece) if i is None else [i])
        return _with_markers(ids, add_start, add_end)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, stopping at END and leaving out PAD and START; UNK comes back as U+FFFD."""
        # SentencePiece's own rule for spaces: "▁" is one, bar the first's.
        return self._processor.Decode(_text_ids(ids))


# How a character vocabulary's specials are written where tokens are strings (CTranslate2's vocabularies, Argos
# Translate's SentencePiece pieces): the names SubwordVocab's pieces have.
_PIECE_SPECIALS = dict(zip(SPECIALS, _SUBWORD_SPECIALS))


def piece_strings(vocab: Vocab | SubwordVocab) -> list[str]:
    """The token of each id as SentencePiece writes it, which CTranslate2 and Argos Translate read: subword pieces
    as they are; characters with a space as "▁", the special tokens as "<pad>", "<unk>", "<s>" and "</s>", and a
    literal "▁" (which would be read as a space) as "<U+2581>". Distinct for distinct ids."""
    if isinstance(vocab, SubwordVocab):
        return list(vocab.tokens)
    names = {**_PIECE_SPECIALS, " ": _SPACE_PIECE, _SPACE_PIECE: "<U+2581>"}
    return [names.get(token, token) for token in vocab.tokens]


def _quiet_sentencepiece() -> None:
    """Keep SentencePiece's C++ logging (to stderr, process-wide) off: the library must not print."""
    import sentencepiece as spm

    spm.SetMinLogLevel(3)


def _with_markers(ids: list[int], add_start: bool, add_end: bool) -> list[int]:
    """`ids` with START before them and END after them, as asked (one rule for both kinds of units)."""
    return [START_ID] * add_start + ids + [END_ID] * add_end


def _text_ids(ids: Iterable[int]) -> list[int]:
    """The ids that stand for text: those before END, without PAD and START."""
    kept = []
    for i in ids:
        i = int(i)
        if i == END_ID:
            break
        if i not in (PAD_ID, START_ID):
            kept.append(i)
    return kept
