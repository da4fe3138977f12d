"""The example's one-hot arrays from charmt's vocabularies (`one_hot_arrays`), and its printed data summary."""

from __future__ import annotations

import numpy as np
import pytest

from charmt.errors import ConfigError
from charmt.explain import data_summary, encoding_table, one_hot_arrays
from charmt.vocab import Vocab

PAIRS = [("Hi.", "Salut !"), ("Go away!", "Va-t-en !")]
# Ids in the vocabularies built from PAIRS: 0-3 are <pad>, <unk>, \t, \n; then the characters sorted.
SOURCE_IDS = {" ": 4, "!": 5, ".": 6, "G": 7, "H": 8, "a": 9, "i": 10, "o": 11, "w": 12, "y": 13}
TARGET_IDS = {" ": 4, "!": 5, "-": 6, "S": 7, "V": 8, "a": 9, "e": 10, "l": 11, "n": 12, "t": 13, "u": 14}


def ids(array: np.ndarray) -> list[int]:
    """Token id per step; an all-zero (padding) row gives 0, the id of <pad>."""
    return array.argmax(axis=-1).tolist()


def test_one_hot_arrays_are_shaped_like_the_example_with_the_one_step_shift():
    arrays = one_hot_arrays(PAIRS)
    assert arrays.source_vocab.index == {**{t: i for i, t in enumerate(["<pad>", "<unk>", "\t", "\n"])},
                                         **SOURCE_IDS}
    assert arrays.encoder_input_data.shape == (2, 8, 14)  # longest source "Go away!"; 10 characters + 4 special
    assert arrays.decoder_input_data.shape == arrays.decoder_target_data.shape == (2, 10, 15)  # "Va-t-en !" + 1
    assert ids(arrays.encoder_input_data[0]) == [8, 10, 6, 0, 0, 0, 0, 0]  # H i . then padding
    salut = [TARGET_IDS[c] for c in "Salut !"]
    assert ids(arrays.decoder_input_data[0]) == [2, *salut, 0, 0]  # START, the target, padding
    assert ids(arrays.decoder_target_data[0]) == [*salut, 3, 0, 0]  # the target, END, padding
    for name in ("encoder_input_data", "decoder_input_data", "decoder_target_data"):
        array = getattr(arrays, name)
        assert array.dtype == np.float32
        # exactly one 1 at every real step, all-zero rows at padding
        assert (array.sum(axis=-1) == (array.argmax(axis=-1) != 0)).all(), name


def test_space_padding_as_the_example_pads_leaves_every_row_with_a_one():
    pad, space = one_hot_arrays(PAIRS), one_hot_arrays(PAIRS, padding="space")
    assert ids(space.encoder_input_data[0]) == [8, 10, 6, 4, 4, 4, 4, 4]
    assert ids(space.decoder_target_data[0]) == [*(TARGET_IDS[c] for c in "Salut !"), 3, 4, 4]
    assert space.decoder_target_data.max(axis=-1).all()  # the example's mask keeps every step
    assert pad.decoder_target_data.max(axis=-1).sum() == len("Salut !") + 1 + len("Va-t-en !") + 1
    real = pad.decoder_target_data.max(axis=-1).astype(bool)
    assert np.array_equal(space.decoder_target_data[real], pad.decoder_target_data[real])


def test_given_vocabularies_are_used_and_unknown_characters_become_unk():
    arrays = one_hot_arrays(PAIRS)
    other = one_hot_arrays([("Hi☃", "Salut")], arrays.source_vocab, arrays.target_vocab)
    assert other.source_vocab is arrays.source_vocab
    assert ids(other.encoder_input_data[0]) == [8, 10, 1]  # ☃ is <unk>
    assert other.encoder_input_data.shape[-1] == len(arrays.source_vocab)


def test_summary_repr_and_table():
    arrays = one_hot_arrays(PAIRS)
    summary = ("Number of samples: 2\nNumber of unique input tokens: 10 (+4 special)\n"
               "Number of unique output tokens: 11 (+4 special)\nMax sequence length for inputs: 8\n"
               "Max sequence length for outputs: 11 (with start and end)")
    assert arrays.summary() == summary
    assert repr(arrays) == ("OneHotArrays of 2 pairs, padding 'pad'\n" + summary + "\n"
                            "encoder_input_data: (2, 8, 14) float32\ndecoder_input_data: (2, 10, 15) float32\n"
                            "decoder_target_data: (2, 10, 15) float32")
    assert arrays.table(1) == encoding_table("Go away!", "Va-t-en !", arrays.source_vocab, arrays.target_vocab)


def test_data_summary_with_the_split_of_the_selection_event():
    info = {"samples": 10, "train": 8, "validation": 2, "test": 0, "source_vocab": 30, "target_vocab": 40,
            "max_input_length": 15, "max_target_length": 59}
    assert data_summary(info).splitlines() == [
        "Number of samples: 10 (train 8, validation 2, test 0)",
        "Number of unique input tokens: 26 (+4 special)",
        "Number of unique output tokens: 36 (+4 special)",
        "Max sequence length for inputs: 15",
        "Max sequence length for outputs: 59 (with start and end)",
    ]


@pytest.mark.parametrize("pairs, kwargs, message", [
    ([], {}, "no pairs to encode"),
    (PAIRS, {"padding": "zeros"}, "padding must be 'pad' or 'space', got 'zeros'"),
    ([("Hi.", "Salut")], {"padding": "space"}, "padding 'space' needs the space character in both vocabularies"),
])
def test_bad_arguments_are_refused(pairs, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        one_hot_arrays(pairs, **kwargs)


def test_pairs_from_a_selection(pair_file):
    from charmt.config import SelectionConfig
    from charmt.data import read_corpus, select

    pairs = select(read_corpus(pair_file), SelectionConfig(max_input_length=None)).all_pairs
    arrays = one_hot_arrays(pairs)
    assert arrays.sources == [p.source for p in pairs] and arrays.targets == [p.target for p in pairs]
    assert arrays.source_vocab == Vocab.build(p.source for p in pairs)
    assert arrays.encoder_input_data.shape[:2] == (len(pairs), max(len(p.source) for p in pairs))


def test_wide_characters_and_combining_marks_keep_the_columns_aligned():
    from wcwidth import wcswidth

    from charmt.explain import encoding_table
    from charmt.vocab import Vocab

    source, target = "नमस्ते", "你好。"  # a vowel sign and a virama; two-column Chinese characters
    table = encoding_table(source, target, Vocab.build([source]), Vocab.build([target])).splitlines()
    rows = [line for line in table[2:] if line[:4].strip().isdigit()]
    # The third column starts at the same terminal column on every row that has a decoder target.
    starts = {wcswidth(line[: line.rindex("(")]) for line in rows if line.count("(") == 3}
    assert len(starts) == 1, table
    assert "'\u25cc\u094d'" in "\n".join(table)  # the virama shown on a dotted circle, not on the quote


def test_results_print_readably(pair_file):
    from charmt.config import SelectionConfig
    from charmt.data import read_corpus, select

    corpus = read_corpus(pair_file)
    chosen = select(corpus, SelectionConfig(max_input_length=None, num_samples=None))
    assert repr(corpus) == f"Corpus({str(pair_file)!r}, 150 pairs, 0 malformed lines, licence=None)"
    assert repr(chosen).startswith(f"Selection(train={len(chosen.train)} pairs, validation=")
    assert len(repr(chosen)) < 200
