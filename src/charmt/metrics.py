"""Measuring translations: a truly masked character accuracy, and chrF/BLEU from sacrebleu with multiple
references per source sentence."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .vocab import collapse_whitespace

if TYPE_CHECKING:
    import torch


def masked_accuracy(scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    """Share of positions where argmax(scores) == targets, counting only positions where mask is True.

    scores (..., V) logits or probabilities; targets (...) class ids; mask (...) bool. Padding, unlike in the
    Keras example (which padded with the space character), is left out of both numerator and denominator.
    """
    mask = mask.bool()
    total = int(mask.sum())
    if total == 0:
        return float("nan")
    if scores.is_floating_point() and scores.element_size() < 4:  # bf16/fp16: on a CPU, upcast + argmax is 2-3x faster
        scores = scores.float()
    correct = ((scores.argmax(dim=-1) == targets) & mask).sum()
    return float(correct) / total


@dataclass
class Scores:
    chrf: float
    bleu: float
    exact_match: float  # share of hypotheses equal to one of their references (whitespace aside)
    sentences: int

    def to_dict(self) -> dict:
        return {"chrf": self.chrf, "bleu": self.bleu, "exact_match": self.exact_match, "sentences": self.sentences}


def score_translations(hypotheses: list[str], references: list[list[str]], *, tokenize: str = "13a") -> Scores:
    """chrF and BLEU (sacrebleu's defaults; BLEU with the tokenizer `tokenize`, see languages.bleu_tokenizer) where
    references[i] holds every reference of hypothesis i."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        return Scores(float("nan"), float("nan"), float("nan"), 0)
    width = max(len(r) for r in references)
    # sacrebleu takes one stream per reference position; None marks "no further reference for this sentence".
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    chrf = sacrebleu.corpus_chrf(hypotheses, streams).score
    bleu = sacrebleu.corpus_bleu(hypotheses, streams, tokenize=tokenize).score
    exact = sum(collapse_whitespace(h) in {collapse_whitespace(r) for r in refs}
                for h, refs in zip(hypotheses, references))
    return Scores(chrf, bleu, exact / len(hypotheses), len(hypotheses))


def collapse_warning(hypotheses: list[str], threshold: float = 0.3) -> str | None:
    """A message when one output answers a large share of different inputs (the example's known failure)."""
    if len(hypotheses) < 10:
        return None
    text, count = Counter(hypotheses).most_common(1)[0]
    if count / len(hypotheses) >= threshold:
        return (f"outputs collapsed: {count} of {len(hypotheses)} validation sentences got the same translation "
                f"{text!r}; train longer, or use a preset with attention")
    return None


def masked_accuracy_one_hot(y_true, y_pred) -> float:
    """`masked_accuracy` called the Keras example's way: `y_true` one-hot targets and `y_pred` scores, both
    (..., classes), as NumPy arrays, nested lists or tensors. Steps where `y_true` is all zero are padding and are
    not counted (the example's mask, `reduce_max(y_true, axis=-1)`): so padding must be all-zero rows, as in
    `one_hot_arrays`, not a real character's one-hot as in the example's own arrays.
    """
    import torch

    y_true, y_pred = torch.as_tensor(y_true, dtype=torch.float32), torch.as_tensor(y_pred, dtype=torch.float32)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)} differ in shape")
    return masked_accuracy(y_pred, y_true.argmax(dim=-1), y_true.amax(dim=-1) > 0)
