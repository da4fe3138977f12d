"""`charmt export MODEL --argos FILE.argosmodel`: a Transformer model as an Argos Translate package, which
argostranslate installs and LibreTranslate serves.

A package is a zip of one folder (Argos Translate 1.11's format, read in its package.py and translate.py):

    translate-en_fr-1_0/
      metadata.json         languages (codes and names), package version, type "translate"
      model/                the CTranslate2 model folder (export.export_ctranslate2; int8 by default)
      sentencepiece.model   what Argos cuts a sentence into before CTranslate2 and joins the output with
      minisbd/<lang>.onnx   sentence splitting that needs no download (below)
      README.md             the model card: data, licence and attribution

Argos runs each sentence as: split the paragraph (MiniSBD), SentencePiece pieces, CTranslate2's
translate_batch (beam 4, length penalty 0.2, unknown outputs replaced from the source), SentencePiece's
decode_pieces, first space dropped. So the pieces must be charmt's units, written as the CTranslate2 folder's
vocabulary writes them (vocab.piece_strings): a subword model ships its own SentencePiece model; a character
model ships a SentencePiece "char" model that cuts text into single characters (a space as "▁"), with charmt's
input normalisation (NFC, every whitespace character as a space, runs of them as one) as its normalisation rules.

Without a sentence splitter in the package, Argos downloads MiniSBD's model for the language (LibreTranslate always
uses MiniSBD). MiniSBD models are ONNX graphs that label each character of a paragraph; the one written here is a
punctuation rule instead of a trained network, built with onnx.helper: a sentence ends at . ! ? … (and the
full-width, Arabic, Devanagari, Armenian and Ethiopic ends), after any closing quotes or brackets, where a space and
no lower-case letter follow, or the paragraph ends (after 。！？ no space is needed). charmt's own splitting (pySBD)
also knows abbreviations; this rule does not ("Mr. Smith" is two sentences here).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import unicodedata
import zipfile
from pathlib import Path

from . import checkpoint as ckpt
from .errors import ConfigError
from .languages import name_of
from .vocab import SubwordVocab, Vocab

log = logging.getLogger("charmt")

PACKAGE_VERSION = "1.0"
ARGOS_VERSION = "1.11"  # the argostranslate release whose format this is

# The sentence splitter's character classes.
SENTENCE_ENDS = ".!?\u2026\u203c\u2047\u2048\u2049\u0589\u061f\u06d4\u0964\u0965\u1362\uff01\uff0e\uff1f"
UNSPACED_ENDS = "\u3002\uff01\uff1f"  # 。！？: Chinese and Japanese write no space after them
CLOSERS = "\"')]}\u00bb\u2019\u201d\u203a\u300d\u300f\u3011\uff09\uff3d"


def export_argos(model_dir: str | os.PathLike, path: str | os.PathLike, *, quantization: str = "int8",
                 overwrite: bool = False) -> Path:
    """Write the Argos Translate package of the Transformer model in `model_dir` to `path` (.argosmodel)."""
    from .export import export_ctranslate2

    path = Path(path)
    if path.suffix != ".argosmodel":
        raise ConfigError(f"an Argos Translate package is a .argosmodel file (argostranslate installs no other), got "
                          f"{path.name}")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; choose another name or add --overwrite")
    info = ckpt.load_info(model_dir)
    source, target = info.source_lang, info.target_lang
    if not source or not target:
        raise ConfigError(f"{model_dir} does not say which languages it translates (its training file's name did "
                          "not say them), and an Argos package must: train it with --source-lang and --target-lang")
    if not isinstance(info.target_vocab, SubwordVocab):
        # Argos joins the pieces of a paragraph's sentences and lets each piece's "▁" make the spaces; a subword
        # translation begins with one, a character translation does not, and a space cannot be added without
        # changing what the decoder sees (CTranslate2 writes out target-prefix tokens, never its start token).
        log.warning("%s translates characters: Argos Translate and LibreTranslate will join the sentences of a "
                    "paragraph without a space between them (subword models, --units subword, do not have this "
                    "problem)", model_dir)
    folder = f"translate-{source}_{target}-{PACKAGE_VERSION.replace('.', '_')}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / folder
        model = root / "model"
        export_ctranslate2(model_dir, model, quantization=quantization)
        (root / "sentencepiece.model").write_bytes(sentencepiece_model(info))
        (root / "minisbd").mkdir()
        (root / "minisbd" / f"{source}.onnx").write_bytes(sentence_splitter(source, info.source_vocab))
        metadata = {"package_version": PACKAGE_VERSION, "argos_version": ARGOS_VERSION, "type": "translate",
                    "from_code": source, "from_name": name_of(source), "to_code": target, "to_name": name_of(target),
                    "code": folder, "description": f"charmt {name_of(source)} → {name_of(target)} Transformer"}
        (root / "metadata.json").write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
        card = (Path(model_dir) / ckpt.CARD_FILE)
        readme = card.read_text(encoding="utf-8") if card.is_file() else f"# charmt model: {source} → {target}\n"
        (root / "README.md").write_text(readme + _ARGOS_NOTE.format(quantization=quantization), encoding="utf-8")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(root.rglob("*")):
                archive.write(file, file.relative_to(Path(tmp)).as_posix())
        path.parent.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write(path, buffer.getvalue())
    return path


_ARGOS_NOTE = """
## In this Argos Translate package

- `model/`: the model as CTranslate2 runs it ({quantization} weights), written by `charmt export --argos`.
- `sentencepiece.model`: charmt's units (subword pieces, or single characters) as Argos Translate cuts text.
- `minisbd/`: sentence splitting by punctuation, so that nothing is downloaded (charmt's own splitter also knows
  abbreviations; this one does not).

Argos Translate decodes with beam 4 and length penalty 0.2: `charmt translate MODEL --beam 4 --length-penalty 0.2`
gives the same translations. It writes an underscore in a translation as a space.
"""


# --- SentencePiece -----------------------------------------------------------------------------------------


def sentencepiece_model(info: ckpt.ModelInfo) -> bytes:
    """The SentencePiece model that cuts text into the model's units: a subword model's own; for characters, a
    "char" model over both vocabularies' characters, with charmt's input normalisation as its rules."""
    if isinstance(info.source_vocab, SubwordVocab):
        return info.source_vocab.model_bytes
    import sentencepiece as spm

    chars = sorted((set(info.source_vocab.chars) | set(info.target_vocab.chars)) - {"\u2581"})
    rules = _normalisation_rules()
    model = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        rule_file = Path(tmp) / "rules.tsv"
        rule_file.write_text(rules, encoding="utf-8")
        spm.SetMinLogLevel(3)
        spm.SentencePieceTrainer.Train(
            sentence_iterator=iter(["".join(c for c in chars if not c.isspace()) + " x"]), model_writer=model,
            model_type="char", vocab_size=len(chars) + 4, hard_vocab_limit=False, character_coverage=1.0,
            normalization_rule_tsv=str(rule_file), add_dummy_prefix=False, remove_extra_whitespaces=True,
            split_by_whitespace=True, byte_fallback=False, unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
            pad_id=-1, num_threads=1, minloglevel=3)
    return model.getvalue()


def _normalisation_rules() -> str:
    """SentencePiece normalisation rules (source code points TAB target code points, in hex) doing what charmt
    does to an input before its characters: canonical composition (NFC), and every whitespace character as a space
    (vocab.collapse_whitespace: what str.split splits at, the typographic spaces and U+3000 among them, whether or
    not the model was trained with canonical spaces)."""
    rules = {}
    for code in range(0x110000):
        char = chr(code)
        decomposed = unicodedata.normalize("NFD", char)
        if decomposed != char and unicodedata.normalize("NFC", decomposed) == char:
            rules[decomposed] = char
        if char.isspace() and char != " ":
            rules[char] = " "
    return "".join(f"{' '.join(f'{ord(c):X}' for c in source)}\t{' '.join(f'{ord(c):X}' for c in target)}\n"
                   for source, target in sorted(rules.items()))


# --- sentence splitting ------------------------------------------------------------------------------------


def sentence_splitter(language: str, vocab: Vocab | SubwordVocab) -> bytes:
    """A MiniSBD model (ONNX) that ends sentences by the punctuation rule of the module's docstring. Its units are
    characters: PAD, UNK, the characters the rule reads, and the lower-case letters of the model's source."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    lower = sorted(c for c in (vocab.chars if isinstance(vocab, Vocab) else _subword_chars(vocab)) if c.islower())
    units = ["<PAD>", "<UNK>", " ", *SENTENCE_ENDS, *UNSPACED_ENDS, *CLOSERS, *lower]
    units = list(dict.fromkeys(units))
    # One row per unit: is it a sentence end, one that needs no space, a closer, a space, lower case, padding.
    table = np.zeros((len(units), 6), dtype=np.float32)
    for i, unit in enumerate(units):
        table[i] = [unit in SENTENCE_ENDS or unit in UNSPACED_ENDS, unit in UNSPACED_ENDS, unit in CLOSERS,
                    unit == " ", len(unit) == 1 and unit.islower(), unit == "<PAD>"]
    nodes, constants = [], [numpy_helper.from_array(table, "table")]

    def const(name, values, dtype=np.int64):
        constants.append(numpy_helper.from_array(np.array(values, dtype=dtype), name))
        return name

    def op(kind, inputs, output, **attrs):
        nodes.append(helper.make_node(kind, inputs, [output], **attrs))
        return output

    # The units (B, T) one and two places after each position and one before, padded with PAD (id 0).
    op("Mul", [op("Slice", ["units", const("s0", [0]), const("s1", [1]), const("ax", [1])], "first"),
               const("z", 0)], "pad_column")
    op("Concat", [op("Slice", ["units", "s1", const("big", [2**62]), "ax"], "tail1"), "pad_column"], "after1",
       axis=1)
    op("Concat", [op("Slice", ["after1", "s1", "big", "ax"], "tail2"), "pad_column"], "after2", axis=1)
    op("Concat", ["pad_column", op("Slice", ["units", "s0", const("m1", [-1]), "ax"], "head1")], "before1", axis=1)
    columns: dict[tuple[str, int], str] = {}

    def column(ids: str, j: int) -> str:  # (B, T) float: property j of the unit at each position
        if (ids, j) not in columns:
            if (ids, -1) not in columns:
                columns[ids, -1] = op("Gather", ["table", ids], f"{ids}_props")
            columns[ids, j] = op("Gather", [columns[ids, -1], const(f"{ids}_col{j}", j)], f"{ids}_p{j}", axis=2)
        return columns[ids, j]

    END, UNSPACED, CLOSER, SPACE, LOWER, PAD = range(6)
    one = const("one", 1.0, np.float32)

    def both(a, b, name):
        return op("Mul", [a, b], name)

    def either(a, b, name):
        return op("Max", [a, b], name)

    def negate(a, name):
        return op("Sub", [one, a], name)

    # After this position: the paragraph ends, or a space comes and then no lower-case letter.
    spaced = either(column("after1", PAD),
                    both(column("after1", SPACE), negate(column("after2", LOWER), "not_lower2"), "space_then"),
                    "spaced")
    not_followed = negate(either(column("after1", END), column("after1", CLOSER), "end_or_closer1"), "free")
    at_end = both(column("units", END), both(not_followed, either(spaced, column("units", UNSPACED), "ok"), "fe"),
                  "at_end")
    closing = both(both(column("units", CLOSER), column("before1", END), "closer_after_end"),
                   either(spaced, both(column("before1", UNSPACED),
                                       negate(column("after1", CLOSER), "not_closer1"), "unspaced_close"),
                          "close_ok"), "closing")
    ends = either(at_end, closing, "ends")  # (B, T) 1 where a sentence ends
    ends3 = op("Unsqueeze", [ends, const("last", [2])], "ends3")
    zeros3 = op("Mul", [ends3, const("zf", 0.0, np.float32)], "zeros3")
    half3 = op("Add", [zeros3, const("h", 0.5, np.float32)], "half3")
    op("Concat", [half3, zeros3, ends3], "scores", axis=2)  # classes: none, token end, sentence end
    graph = helper.make_graph(
        nodes, "charmt_sentence_ends",
        [helper.make_tensor_value_info("units", TensorProto.INT64, ["batch", "time"]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "time", "features"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "time", 3])], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="charmt")
    config = {"skip_newline": False, "max_seqlen": 1000, "no_ssplit": False, "batch_size": 32, "feat_funcs": [],
              "use_dictionary": False, "num_dict_feat": 0}
    vocab_state = {"lang": language, "idx": 0, "cutoff": 0, "lower": False,
                   "_unit2id": {u: i for i, u in enumerate(units)}, "_id2unit": units}
    helper.set_model_props(model, {"lang_code": language, "config": json.dumps(config),
                                   "vocab": json.dumps(vocab_state, ensure_ascii=False), "lexicon": "null"})
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _subword_chars(vocab: SubwordVocab) -> list[str]:
    return sorted({c for piece in vocab.tokens for c in piece})
