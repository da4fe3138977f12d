"""The facts about the pair files that charmt's language-dependent defaults rest on.

    .venv/bin/python benchmarks/measure_data.py ../shared/data/*/*.txt

Per file: typographic spaces (which invisible space characters the columns use), target/source length ratios
(the output cap follows the 99.9th percentile), how long the shortest 18% of the sources are (the "short" pairs
that `base` shows twice), and how many characters are rare (candidates for <unk>).
"""

from __future__ import annotations

import argparse
import unicodedata
from collections import Counter
from pathlib import Path

from charmt.data import length_quantile, read_corpus
from charmt.vocab import normalize


def spaces(texts: list[str]) -> dict[str, int]:
    counts = Counter(f"U+{ord(ch):04X}" for text in texts for ch in text
                     if unicodedata.category(ch) == "Zs" and ch != " ")
    return dict(counts.most_common())


def rare(texts: list[str]) -> str:
    counts = Counter(ch for text in texts for ch in normalize(text))
    total = sum(counts.values())
    parts = [f"{len(counts)} characters"]
    for n in (2, 3, 5):
        chars = [c for c, k in counts.items() if k < n]
        share = sum(counts[c] for c in chars) / total
        parts.append(f"{len(chars)} seen < {n}x ({100 * share:.3f}% of the text)")
    return ", ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path)
    args = p.parse_args()
    for path in args.files:
        corpus = read_corpus(path)
        sources, targets = [p.source for p in corpus.pairs], [p.target for p in corpus.pairs]
        print(f"{path.name}: {len(corpus.pairs)} pairs")
        print(f"  typographic spaces: first column {spaces(sources)}, second column {spaces(targets)}")
        plain = sum(" ?" in t or " !" in t for t in targets)
        print(f"  second column: {plain} lines with a plain space before ? or !")
        for name, ratios in (("second/first", [len(t) / len(s) for s, t in zip(sources, targets)]),
                             ("first/second", [len(s) / len(t) for s, t in zip(sources, targets)])):
            quantiles = ", ".join(f"p{100 * q:g} {length_quantile(ratios, q):.2f}" for q in (0.5, 0.9, 0.99, 0.999))
            print(f"  length ratio {name}: {quantiles}, max {max(ratios):.2f}")
        for name, texts in (("first", sources), ("second", targets)):
            lengths = [len(t) for t in texts]
            print(f"  {name} column: 18% of the sentences have at most {length_quantile(lengths, 0.18):g} "
                  f"characters; median {length_quantile(lengths, 0.5):g}; {rare(texts)}")


if __name__ == "__main__":
    main()
