"""Which sentence splitter to use for paragraphs: charmt's first regex splitter, sentencex and pySBD, measured on
paragraphs made by joining real sentences, so the right answer is known.

    .venv/bin/python benchmarks/measure_splitting.py /work/runs/splits/*/*.test.txt

For each pair file and each column (the English sources, the other language's targets), consecutive distinct
sentences are joined in threes (with a space, or without for Chinese and Japanese), and a splitter scores a
paragraph when it returns exactly the three sentences. Tatoeba items that are themselves two sentences ("Go away.
I'm busy.") count against every splitter alike, so the figures compare splitters; they are not absolute error
rates. Also reported: how many single sentences each splitter cuts (a cut inside "Mr. Smith ..." is an error;
one between two real sentences is not, so this is an upper bound on wrong cuts).

With --hostile, the time each splitter takes on texts shaped to be slow (a 1x and a 4x length: a splitter linear in
the length takes about 4x as long on the second): pySBD is quadratic in the number of sentences, and exponential
on a period before a bracketed list of numbers (pySBD issue #79; here only 4 groups of digits, to stay short).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from charmt.data import read_corpus
from charmt.languages import languages_of_file, split_sentences

_SENTENCE_BREAK = re.compile(r"[.!?…][\"'»”’)\]]*\s+")
_OPENING = "\"'«“‘(¿¡["


def regex_split(text: str, lang: str) -> list[str]:
    """charmt's splitter until this measurement: end punctuation and space, then a capital letter or a digit."""
    pieces, start = [], 0
    for match in _SENTENCE_BREAK.finditer(text):
        following = text[match.end() :].lstrip(_OPENING)[:1]
        if following and (following.isupper() or following.isdigit()):
            pieces.append(text[start : match.end()])
            start = match.end()
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip()]


def splitters() -> dict:
    found = {"regex (charmt until now)": regex_split, "charmt (split_sentences)": split_sentences}
    try:
        from sentencex import segment

        found["sentencex"] = lambda text, lang: [s.strip() for s in segment(lang, text) if s.strip()]
    except ImportError:
        pass
    try:
        import pysbd

        segmenters = {}

        def pysbd_split(text, lang):
            if lang not in segmenters:
                try:
                    segmenters[lang] = pysbd.Segmenter(language=lang, clean=False)
                except ValueError:  # a language pySBD does not know
                    segmenters[lang] = pysbd.Segmenter(language="en", clean=False)
            return [s.strip() for s in segmenters[lang].segment(text) if s.strip()]

        found["pysbd"] = pysbd_split
    except ImportError:
        pass
    return found


HOSTILE = {"a. a. a.": "a. ", "e.g. e.g.": "e.g. ", "Mr. A. Mr. A.": "Mr. A. ", '"A. "A.': '"A. ',
           ".[111 ...]": "See e.g.[111 111 111 111] x. "}


def hostile(found: dict) -> None:
    print(f"{'shape':<16} {'splitter':<26} {'ms, 2,500 chars':>16} {'ms, 10,000 chars':>17} {'ratio':>6}")
    for shape, unit in HOSTILE.items():
        short, long = [(unit * (n // len(unit) + 1))[:n] for n in (2_500, 10_000)]
        for name, split in found.items():
            seconds = []
            for text in (short, long):
                start = time.perf_counter()
                split(text, "en")
                seconds.append(time.perf_counter() - start)
            print(f"{shape:<16} {name:<26} {1000 * seconds[0]:>16.1f} {1000 * seconds[1]:>17.1f} "
                  f"{seconds[1] / seconds[0]:>6.1f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", type=Path, help="pair files named after their language (fra.test.txt, ...)")
    p.add_argument("--paragraphs", type=int, default=500, help="paragraphs per file and column (default: 500)")
    p.add_argument("--hostile", action="store_true", help="time the splitters on texts shaped to be slow")
    args = p.parse_args()
    found = splitters()
    print(f"splitters: {', '.join(found)}")
    if args.hostile:
        hostile(found)
    if not args.files:
        return
    print(f"{'file':<16} {'column':<6} {'splitter':<26} {'paragraphs right':>16} {'single cut':>10} {'ms/para':>8}")
    for path in args.files:
        languages = languages_of_file(path) or ("en", "en")
        corpus = read_corpus(path)
        for column, lang in zip(("source", "target"), languages):
            sentences = list(dict.fromkeys(getattr(pair, column).strip() for pair in corpus.pairs))
            joiner = "" if lang in ("zh", "ja") else " "
            groups = [sentences[i : i + 3] for i in range(0, 3 * args.paragraphs, 3)]
            groups = [g for g in groups if len(g) == 3]
            for name, split in found.items():
                start = time.perf_counter()
                right = sum(split(joiner.join(g), lang) == g for g in groups)
                per_para = (time.perf_counter() - start) / len(groups) * 1000
                cut = sum(len(split(s, lang)) > 1 for g in groups for s in g)
                print(f"{path.name:<16} {lang:<6} {name:<26} {right:>7} of {len(groups):<6} {cut:>10} "
                      f"{per_para:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
