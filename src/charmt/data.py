"""Reading Anki/Tatoeba pair files and selecting training pairs the Keras example's way.

A pair file (manythings.org/anki) holds `English<TAB>Other[<TAB>attribution]` per line. It comes as the
downloaded zip (e.g. fra-eng.zip holding fra.txt and _about.txt) or as the bare text file.
"""

from __future__ import annotations

import hashlib
import logging
import lzma
import math
import os
import random
import re
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from .config import SelectionConfig
from .errors import DataError
from .vocab import canonical_spaces, normalize

log = logging.getLogger("charmt")

# The example's dedupe key: the input with everything but letters and digits removed.
_PUNCTUATION = re.compile(r"[\W_]+", re.UNICODE)
_MAX_LINE_REPORT = 5


@dataclass(frozen=True)
class Pair:
    line: int  # 1-based line number in the file, so every pair can be traced back
    source: str
    target: str
    attribution: str = ""  # the third column, if any: licence and authors, which CC-BY asks to keep


@dataclass
class Corpus:
    path: str
    sha256: str
    n_lines: int  # as the example counts them: len(text.split("\n"))
    pairs: list[Pair]
    malformed: list[int]  # line numbers of lines that are not 2 or 3 tab-separated columns
    blank: int
    licence: str | None = None  # what the third column says, e.g. "CC-BY 2.0 (France)" in manythings' files

    def __repr__(self) -> str:
        return (f"Corpus({self.path!r}, {len(self.pairs)} pairs, {len(self.malformed)} malformed lines, "
                f"licence={self.licence!r})")

    def report(self) -> str:
        text = f"{len(self.pairs)} pairs read from {self.path}"
        if self.malformed:
            first = ", ".join(map(str, self.malformed[:_MAX_LINE_REPORT]))
            more = ", ..." if len(self.malformed) > _MAX_LINE_REPORT else ""
            text += f"; {len(self.malformed)} malformed lines skipped (lines {first}{more})"
        return text


def read_corpus(path: str | os.PathLike, *, reverse: bool = False) -> Corpus:
    """Read a pair file (.zip or .txt; 2 or 3 columns; UTF-8 with or without BOM; LF or CRLF).

    With `reverse`, the second column is the source and the first the target.
    """
    raw = _read_bytes(Path(path))
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{path} is UTF-16 text; save it as UTF-8")
    if b"\x00" in raw[:65536]:
        raise DataError(f"{path} looks like a binary file, not a text file of tab-separated pairs")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path} is not UTF-8 text (bad byte at line {line}); save it as UTF-8") from None
    lines = text.split("\n")
    pairs, malformed, blank, licences = [], [], 0, Counter()
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line.strip():
            blank += 1
            continue
        columns = line.split("\t")
        if len(columns) not in (2, 3) or not columns[0].strip() or not columns[1].strip():
            malformed.append(number)
            continue
        source, target = (columns[1], columns[0]) if reverse else (columns[0], columns[1])
        pairs.append(Pair(number, source, target, columns[2] if len(columns) == 3 else ""))
        if len(columns) == 3:  # "CC-BY 2.0 (France) Attribution: tatoeba.org #538123 (CM) & #891077 (Martha)"
            licences[columns[2].split(" Attribution:")[0].strip()] += 1
    licence = licences.most_common(1)[0][0] if licences else None
    corpus = Corpus(str(path), hashlib.sha256(raw).hexdigest(), len(lines), pairs, malformed, blank, licence)
    if not pairs:
        raise DataError(
            f"{path} holds no usable pair: expected lines of 'source<TAB>target[<TAB>attribution]'"
            + (f" ({len(malformed)} malformed lines, first at line {malformed[0]})" if malformed else "")
        )
    return corpus


def _read_bytes(path: Path) -> bytes:
    try:
        if zipfile.is_zipfile(path):
            return _read_from_zip(path)
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not a pair file") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None


def _read_from_zip(path: Path) -> bytes:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(".txt") and not n.startswith("__MACOSX/")
                     and not n.split("/")[-1].startswith(("_", "."))]
            if len(names) != 1:
                raise DataError(
                    f"{path}: expected exactly one pair file (*.txt besides _about.txt) in the zip, found {names}"
                )
            return archive.read(names[0])
    # What zipfile and its decompressors raise on damaged or unsupported archives (found by tests/test_fuzz_data.py).
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError, RuntimeError,
            UnicodeDecodeError) as err:
        raise DataError(f"{path} is a damaged zip file ({str(err) or type(err).__name__})") from None


@dataclass
class Selection:
    train: list[Pair]
    validation: list[Pair]
    test: list[Pair]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def __repr__(self) -> str:
        return (f"Selection(train={len(self.train)} pairs, validation={len(self.validation)}, test={len(self.test)}, "
                f"skipped={self.skipped})")

    @property
    def all_pairs(self) -> list[Pair]:
        return self.train + self.validation + self.test

    def summary(self) -> dict:
        pairs = self.all_pairs
        return {
            "samples": len(pairs),
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
            "max_input_length": max(len(p.source) for p in pairs),
            # counted with START and END, as the example's max_decoder_seq_length
            "max_target_length": max(len(p.target) for p in pairs) + 2,
            "skipped": dict(self.skipped),
        }


def select(corpus: Corpus, config: SelectionConfig) -> Selection:
    """Shuffle, filter and split the pairs exactly as the Keras example selects them.

    The example shuffles the list `text.split("\\n")` with random.seed(seed); shuffling the line positions with
    the same seed gives the same order, because the permutation depends only on the list's length.
    """
    by_line = {p.line: p for p in corpus.pairs}
    order = list(range(1, corpus.n_lines + 1))
    random.Random(config.seed).shuffle(order)
    skipped: Counter[str] = Counter()
    seen: set[str] = set()
    chosen: list[Pair] = []
    for line in order:
        pair = by_line.get(line)
        if pair is None:
            continue  # blank or malformed, counted by read_corpus
        if config.max_input_length is not None and len(pair.source) > config.max_input_length:
            skipped["source too long"] += 1
            continue
        if config.max_target_length is not None and len(pair.target) > config.max_target_length:
            skipped["target too long"] += 1
            continue
        if config.canonical_spaces:
            pair = replace(pair, source=canonical_spaces(pair.source), target=canonical_spaces(pair.target))
        if config.dedupe:
            key = _PUNCTUATION.sub("", pair.source)
            if key in seen:
                skipped["duplicate source"] += 1
                continue
            seen.add(key)
        chosen.append(pair)
        if config.num_samples is not None and len(chosen) >= config.num_samples:
            break
    if corpus.malformed:
        skipped["malformed line"] = len(corpus.malformed)
    if not chosen:
        raise DataError(
            f"no pair of {corpus.path} passes the selection ({dict(skipped)}); "
            "raise --max-input-length or turn off --dedupe"
        )
    train, validation, test = split_by_source(chosen, config.validation_fraction, config.test_fraction)
    return Selection(train, validation, test, dict(skipped))


def source_key(source: str) -> str:
    """What makes two sources the same sentence: equal after NFC normalisation and outer whitespace."""
    return normalize(source).strip()


def group_by_source(pairs: list[Pair]) -> dict[str, list[Pair]]:
    """The pairs of each distinct source (by `source_key`), in order of first appearance."""
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(source_key(pair.source), []).append(pair)
    return groups


def references_by_source(pairs: list[Pair]) -> tuple[list[Pair], list[list[str]]]:
    """One pair per distinct source, with every target of that source as its references."""
    groups = group_by_source(pairs).values()
    return [g[0] for g in groups], [[p.target for p in g] for g in groups]


def split_by_source(pairs: list[Pair], validation_fraction: float, test_fraction: float):
    """Split in order into train | validation | test, keeping all translations of one source on one side.

    Like Keras's validation_split, the held-out parts are taken from the end of the (shuffled) list.
    """
    groups = group_by_source(pairs)
    keys = list(groups)
    n_train = math.floor(len(keys) * (1.0 - validation_fraction - test_fraction))
    n_validation = math.floor(len(keys) * (1.0 - test_fraction)) - n_train
    if validation_fraction > 0 and n_validation == 0 and len(keys) - n_train >= 1:
        n_validation = 1
    parts = (keys[:n_train], keys[n_train : n_train + n_validation], keys[n_train + n_validation :])
    return tuple([p for key in part for p in groups[key]] for part in parts)


def hold_out(corpus: Corpus, test_sentences: int, *, seed: int = 1) -> tuple[list[Pair], list[Pair]]:
    """Split a corpus by source sentence into (train, test): `test_sentences` distinct sources, chosen at random,
    go to the test side with every one of their translations, so the test set is multi-reference and none of its
    sources is ever seen in training."""
    groups = group_by_source(corpus.pairs)
    if not 0 < test_sentences < len(groups):
        raise DataError(f"--test-sentences must be between 1 and {len(groups) - 1} for {corpus.path}")
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    test_keys = set(keys[:test_sentences])
    train = [p for p in corpus.pairs if source_key(p.source) not in test_keys]
    test = [p for p in corpus.pairs if source_key(p.source) in test_keys]
    return train, test


def write_pairs(path: str | os.PathLike, pairs: list[Pair], *, reverse: bool = False) -> None:
    """Write pairs as a pair file (UTF-8, LF), with their attribution as a third column where they have one;
    with `reverse` (pairs read with reverse=True), in the file's own column order again."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for p in pairs:
            columns = [p.target, p.source] if reverse else [p.source, p.target]
            f.write("\t".join(columns + ([p.attribution] if p.attribution else [])) + "\n")


def demo_corpus() -> Path:
    """The built-in demo corpus (531 English-French pairs written for charmt; see its ABOUT.md)."""
    from importlib import resources

    return Path(str(resources.files("charmt") / "demo" / "eng-fra.txt"))


def length_quantile(lengths: list[int] | list[float], q: float) -> float:
    """The value below which a share `q` of `lengths` lies (nearest rank)."""
    ordered = sorted(lengths)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def pairs_at_lines(corpus: Corpus, lines: list[int]) -> list[Pair]:
    """The pairs at the given line numbers, in that order (used to rebuild a recorded split)."""
    by_line = {p.line: p for p in corpus.pairs}
    missing = [n for n in lines if n not in by_line]
    if missing:
        raise DataError(f"{corpus.path} has no pair at lines {missing[:5]}: is it the file the model was trained on?")
    return [by_line[n] for n in lines]
