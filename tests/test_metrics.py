"""Masked accuracy (the Keras example's own checks), chrF/BLEU with several references, collapse detection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sacrebleu
import torch

from charmt.metrics import collapse_warning, masked_accuracy, masked_accuracy_one_hot, score_translations

# The example's fixtures: y_true and y_pred one-hot, (batch, steps, classes); all-zero rows are padding.
Y_TRUE = [[[1, 0, 0], [0, 1, 0], [1, 0, 0]]]
Y_PRED = [[[1, 0, 0], [0, 1, 0], [0, 0, 1]]]
PADDING = [[0, 0, 0]] * 4


def keras_style(y_true, y_pred) -> float:
    """The example's masked_accuracy(y_true, y_pred), computed with charmt's: targets by argmax, mask by row sum."""
    y_true, y_pred = torch.tensor(y_true, dtype=torch.float32), torch.tensor(y_pred, dtype=torch.float32)
    return masked_accuracy(y_pred, y_true.argmax(dim=-1), y_true.sum(dim=-1) > 0)


@pytest.mark.parametrize(
    "y_true, y_pred, expected",
    [
        (Y_TRUE, Y_TRUE, 1.0),  # "Should have 100% if input and output match"
        (Y_TRUE, Y_PRED, 2 / 3),  # "Should be 2/3 if input and output have one mismatch and no padding"
        ([Y_TRUE[0] + PADDING], [Y_PRED[0] + PADDING], 2 / 3),  # "... one mismatch even with padding"
    ],
    ids=["t1", "t2", "t3"],
)
def test_keras_example_masked_accuracy_checks(y_true, y_pred, expected):
    assert keras_style(y_true, y_pred) == pytest.approx(expected, abs=1e-12)


def test_padding_counts_neither_way():
    # Unlike the example's space padding, PAD positions are out of numerator and denominator alike.
    scores = torch.tensor([[[5.0, 0.0], [0.0, 5.0], [5.0, 0.0], [5.0, 0.0]]])
    targets = torch.tensor([[0, 0, 0, 1]])
    assert masked_accuracy(scores, targets, torch.tensor([[True, True, False, False]])) == 0.5
    assert masked_accuracy(scores, targets, torch.tensor([[True, True, True, True]])) == 0.5
    assert masked_accuracy(scores, targets, torch.tensor([[True, False, True, False]])) == 1.0
    assert math.isnan(masked_accuracy(scores, targets, torch.zeros(1, 4, dtype=torch.bool)))


def test_bf16_scores_count_as_their_float32_values():
    # bf16 scores are upcast before argmax (faster on a CPU); ties still go to the first class.
    scores = torch.tensor([[[1.0, 1.0, 0.5], [0.25, 3.0, 3.0], [2.0, -1.0, 7.0]]])
    targets, mask = torch.tensor([[0, 1, 2]]), torch.ones(1, 3, dtype=torch.bool)
    assert masked_accuracy(scores.bfloat16(), targets, mask) == masked_accuracy(scores, targets, mask) == 1.0
    assert masked_accuracy(scores.bfloat16(), torch.tensor([[1, 2, 2]]), mask) == pytest.approx(1 / 3)


HYPS = ["le chat dort", "un chien", "bonjour", "il fait froid ici"]
REFS = [["le chat dort", "la chatte dort"], ["un gros chien"], ["salut", "bonjour !", "bonjour"],
        ["il fait froid", "ici il fait froid"]]
# The same references as sacrebleu's streams: one per reference position, None where a sentence has no more.
STREAMS = [
    ["le chat dort", "un gros chien", "salut", "il fait froid"],
    ["la chatte dort", None, "bonjour !", "ici il fait froid"],
    [None, None, "bonjour", None],
]


@pytest.mark.parametrize(
    "hyps, refs, streams",
    [
        (HYPS, REFS, STREAMS),
        (HYPS[:2], [["le chien dort"], ["un chien"]], [["le chien dort", "un chien"]]),
        (HYPS[1:3], REFS[1:3], [["un gros chien", "salut"], [None, "bonjour !"], [None, "bonjour"]]),
    ],
)
def test_chrf_and_bleu_equal_sacrebleu(hyps, refs, streams):
    scores = score_translations(hyps, refs)
    assert scores.chrf == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score, abs=1e-9)
    assert scores.bleu == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score, abs=1e-9)
    assert scores.sentences == len(hyps)


def test_reference_order_within_a_sentence_does_not_matter():
    reordered = [list(reversed(r)) for r in REFS]
    assert score_translations(HYPS, reordered) == score_translations(HYPS, REFS)


def test_a_matching_reference_gives_full_marks():
    scores = score_translations(["le chat dort ici"], [["un chien", "le chat dort ici"]])
    assert (scores.chrf, scores.bleu, scores.exact_match) == pytest.approx((100.0, 100.0, 1.0), abs=1e-9)


@pytest.mark.parametrize(
    "hyps, refs, expected",
    [
        (HYPS, REFS, 2 / 4),  # "le chat dort" and "bonjour" match one of their references
        (["Va ! "], [["Va !"]], 1.0),  # surrounding spaces do not count
        (["va !"], [["Va !"]], 0.0),  # case does
    ],
)
def test_exact_match(hyps, refs, expected):
    assert score_translations(hyps, refs).exact_match == expected


def test_score_translations_edge_cases():
    empty = score_translations([], [])
    assert empty.sentences == 0 and all(math.isnan(v) for v in (empty.chrf, empty.bleu, empty.exact_match))
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference lists"):
        score_translations(["a", "b"], [["a"]])
    assert set(score_translations(HYPS, REFS).to_dict()) == {"chrf", "bleu", "exact_match", "sentences"}


@pytest.mark.parametrize(
    "hyps, expected",
    [
        (["Je suis."] * 9, None),  # too few outputs to judge
        (["Je suis."] * 3 + [f"Phrase {i}." for i in range(7)],
         "outputs collapsed: 3 of 10 validation sentences got the same translation 'Je suis.'; train longer, "
         "or use a preset with attention"),
        (["Je suis."] * 2 + [f"Phrase {i}." for i in range(8)], None),
        ([f"Phrase {i}." for i in range(20)], None),
    ],
)
def test_collapse_warning(hyps, expected):
    assert collapse_warning(hyps) == expected


KERAS_CHECKS = [(Y_TRUE, Y_TRUE, 1.0), (Y_TRUE, Y_PRED, 2 / 3), ([Y_TRUE[0] + PADDING], [Y_PRED[0] + PADDING], 2 / 3)]


@pytest.mark.parametrize("y_true, y_pred, expected", KERAS_CHECKS, ids=["t1", "t2", "t3"])
@pytest.mark.parametrize("kind", [list, np.array, torch.tensor])
def test_one_hot_arguments_pass_the_example_checks(y_true, y_pred, expected, kind):
    assert masked_accuracy_one_hot(kind(y_true), kind(y_pred)) == pytest.approx(expected, abs=1e-12)


def test_padding_with_a_real_character_is_counted_as_the_example_counts_it():
    space = [0, 0, 1]  # the example pads with the space character's one-hot row: the mask keeps it
    y_true = [[[1, 0, 0], [0, 1, 0], space, space, space]]
    always_space = [[space] * 5]
    assert masked_accuracy_one_hot(y_true, always_space) == pytest.approx(3 / 5)
    zero_padded = [[[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]]
    assert masked_accuracy_one_hot(zero_padded, always_space) == 0.0


def test_one_hot_shapes_must_agree():
    with pytest.raises(ValueError, match=r"y_true \(1, 3, 3\) and y_pred \(1, 7, 3\) differ in shape"):
        masked_accuracy_one_hot(Y_TRUE, [Y_PRED[0] + PADDING])
