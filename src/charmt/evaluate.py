"""Evaluating a model on pairs it did not train on: chrF and BLEU (multi-reference), exact match, masked
character accuracy, and the same scores by source length."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import checkpoint as ckpt
from .data import Corpus, Pair, pairs_at_lines, read_corpus, references_by_source
from .decode import Translator
from .errors import DataError
from .languages import bleu_tokenizer
from .metrics import masked_accuracy, score_translations
from .vocab import PAD_ID

if TYPE_CHECKING:  # PyTorch only for the teacher-forced metrics: an ONNX export is evaluated without it
    import torch

    from .batching import EncodedPairs

LENGTH_BUCKETS = (10, 20, 30, 50, 80)  # upper bounds (characters of the source) of the breakdown's buckets


@dataclass
class EvalReport:
    split: str  # which pairs: "test", "validation" or "file"
    pairs: int
    sentences: int  # distinct sources
    references_per_sentence: float
    chrf: float  # against every reference of each sentence
    bleu: float
    exact_match: float
    masked_accuracy: float | None  # None for an ONNX export: teacher forcing needs the PyTorch model
    loss: float | None
    source_lang: str | None = None
    target_lang: str | None = None
    bleu_tokenizer: str = "13a"  # sacrebleu's, chosen for the target language (languages.bleu_tokenizer)
    bleu_note: str | None = None  # why a lesser tokenizer was used, if it was
    single_reference: dict = field(default_factory=dict)  # chrF and BLEU against each sentence's first reference
    # On the sentences with at least two references: the first reference (a person's translation) and the model,
    # each scored against the other references. None when no sentence has two.
    human_baseline: dict | None = None
    length_ratio: float = float("nan")  # characters of the outputs / mean characters of the references
    by_length: list[dict] = field(default_factory=list, repr=False)
    sources: list[str] = field(default_factory=list, repr=False)
    hypotheses: list[str] = field(default_factory=list, repr=False)
    references: list[list[str]] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        skip = {"sources", "hypotheses", "references"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}


def pick_pairs(corpus: Corpus, model_dir: str | os.PathLike, split: str) -> tuple[str, list[Pair]]:
    """The pairs to evaluate on. "auto": the model's recorded test split if this is its training file (else its
    validation split), or every pair when the file is another one (a separate test file)."""
    recorded = ckpt.read_json(os.path.join(model_dir, ckpt.SPLIT_FILE)) if split != "all" else None
    same_file = recorded is not None and recorded.get("sha256") == corpus.sha256
    if split == "all":
        return "file", corpus.pairs
    if split in ("test", "validation"):
        if not same_file:
            raise DataError(f"--split {split} needs the file the model was trained on; {corpus.path} is another file")
        if not recorded[split]:
            other = "validation" if split == "test" else "test"
            raise DataError(f"{model_dir} recorded no {split} pairs (trained with --{split}-fraction 0); "
                            f"use --split {other}, or evaluate on a separate file")
        return split, pairs_at_lines(corpus, recorded[split])
    if split != "auto":
        raise DataError(f"--split must be auto, test, validation or all, not {split!r}")
    if not same_file:
        return "file", corpus.pairs
    name = "test" if recorded["test"] else "validation"
    if not recorded[name]:
        raise DataError(f"{model_dir} was trained on all of {corpus.path}; evaluate on another file")
    return name, pairs_at_lines(corpus, recorded[name])


def evaluate(translator: Translator, pairs: list[Pair], *, split: str = "file", beam: int = 1,
             batch_size: int = 128, length_penalty: float = 1.0) -> EvalReport:
    if not pairs:
        raise DataError("no pairs to evaluate")
    unique, references = references_by_source(pairs)
    sources = [p.source for p in unique]
    hypotheses = translator.translate(sources, beam=beam, batch_size=batch_size, length_penalty=length_penalty)
    info = translator.info
    tokenize, note = bleu_tokenizer(info.target_lang)
    scores = score_translations(hypotheses, references, tokenize=tokenize)
    single = score_translations(hypotheses, [refs[:1] for refs in references], tokenize=tokenize)
    loss = accuracy = None
    if translator.model is not None:
        from .batching import encode_pairs

        loss, accuracy = teacher_forced_metrics(
            translator.model, encode_pairs(pairs, translator.source_vocab, translator.target_vocab), translator.device
        )
    reference_chars = sum(sum(map(len, refs)) / len(refs) for refs in references)
    return EvalReport(
        split=split, pairs=len(pairs), sentences=len(unique),
        references_per_sentence=len(pairs) / len(unique), chrf=scores.chrf, bleu=scores.bleu,
        exact_match=scores.exact_match, masked_accuracy=accuracy, loss=loss,
        source_lang=info.source_lang, target_lang=info.target_lang, bleu_tokenizer=tokenize, bleu_note=note,
        single_reference={"chrf": single.chrf, "bleu": single.bleu},
        human_baseline=human_baseline(hypotheses, references, tokenize=tokenize),
        length_ratio=sum(map(len, hypotheses)) / max(reference_chars, 1),
        by_length=length_breakdown(sources, hypotheses, references, tokenize=tokenize),
        sources=sources, hypotheses=hypotheses, references=references,
    )


def human_baseline(hypotheses: list[str], references: list[list[str]], *, tokenize: str = "13a") -> dict | None:
    """How far the model is from a person, on the same references: on each sentence with two or more references,
    the first reference (one person's translation) and the model's output are both scored against the others."""
    several = [i for i, refs in enumerate(references) if len(refs) >= 2]
    if not several:
        return None
    others = [references[i][1:] for i in several]
    human = score_translations([references[i][0] for i in several], others, tokenize=tokenize)
    model = score_translations([hypotheses[i] for i in several], others, tokenize=tokenize)
    return {"sentences": len(several), "human_chrf": human.chrf, "human_bleu": human.bleu,
            "model_chrf": model.chrf, "model_bleu": model.bleu,
            "chrf_ratio": model.chrf / human.chrf if human.chrf else float("nan")}


def teacher_forced_metrics(model: torch.nn.Module, data: EncodedPairs, device: torch.device, batch_size: int = 256):
    """Mean cross-entropy and masked character accuracy over all non-PAD target positions."""
    import torch

    from .batching import collate

    model.eval()
    loss_sum, correct, total = 0.0, 0.0, 0
    order = sorted(range(len(data)), key=lambda i: len(data.sources[i]))
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            src, lengths, tgt_in, tgt_out = collate(data, order[s : s + batch_size], device)
            logits, loss = model(src, lengths, tgt_in, tgt_out)
            mask = tgt_out != PAD_ID
            n = int(mask.sum())
            loss_sum += float(loss) * n
            correct += masked_accuracy(logits, tgt_out, mask) * n
            total += n
    return loss_sum / max(total, 1), correct / max(total, 1)


def length_breakdown(sources: list[str], hypotheses: list[str], references: list[list[str]], *,
                     tokenize: str = "13a") -> list[dict]:
    """chrF and BLEU per bucket of source length (characters)."""
    rows = []
    lower = 0
    for upper in (*LENGTH_BUCKETS, None):
        index = [i for i, s in enumerate(sources) if len(s) > lower and (upper is None or len(s) <= upper)]
        if index:
            scores = score_translations([hypotheses[i] for i in index], [references[i] for i in index],
                                        tokenize=tokenize)
            label = f"{lower + 1}-{upper}" if upper is not None else f">{lower}"
            rows.append({"lengths": label, "sentences": len(index), **scores.to_dict()})
        lower = upper if upper is not None else lower
    return rows


def evaluate_file(model_dir: str | os.PathLike, data_path: str | os.PathLike, *, split: str = "auto",
                  beam: int = 1, device: str = "auto", max_sentences: int | None = None,
                  length_penalty: float = 1.0) -> EvalReport:
    translator = Translator.load(model_dir, device=device)
    corpus = read_corpus(data_path, reverse=bool(translator.info.selection.get("reverse", False)))
    name, pairs = pick_pairs(corpus, model_dir, split)
    if max_sentences:
        keep = set(list(dict.fromkeys(p.source.strip() for p in pairs))[:max_sentences])
        pairs = [p for p in pairs if p.source.strip() in keep]
    return evaluate(translator, pairs, split=name, beam=beam, length_penalty=length_penalty)
