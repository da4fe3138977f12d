"""The peer, side by side: JoeyNMT 2.3's small Transformer recipe, trained for a wall-clock budget on a split made
by `charmt split`, decoded greedy and with beam 5, scored with charmt's own multi-reference chrF and BLEU.

    .venv/bin/python -m charmt split /work/shared/data/fra-eng/fra.txt --out /tmp/split      # fra.train/test.txt
    .venv/bin/python benchmarks/bench_joeynmt.py /tmp/split/fra.train.txt /tmp/split/fra.test.txt \\
        --minutes 10 --out benchmarks/results/joeynmt-10min                                   # and --minutes 60
    # French to English: split with `charmt split --reverse` (multi-reference in English), then --direction fr-en
    # smoke test (2,000 pairs, 1 minute, a validation every 4 steps): 2-4 minutes, the first run 2 more; a test file
    # of 300 pairs, for a barely trained model may write 100 pieces a sentence (2,000 sentences: 5 minutes or more);
    # --venv /other/checkout/.venv-joeynmt reuses an environment made elsewhere
    head -300 /tmp/split/fra.test.txt > /tmp/tiny.fra.test.txt
    .venv/bin/python benchmarks/bench_joeynmt.py /tmp/tiny.fra.train.txt /tmp/tiny.fra.test.txt --minutes 1 \\
        --validation-freq 4 --out /tmp/joeynmt-smoke --force
    # (the head of a split file holds its shortest pairs and few distinct sources: `shuf -n 20000` of it gives some
    # 175 validation sentences of ordinary length, for timing a validation)

The same split, the same machine and the same budgets as `charmt train --preset base` and `--preset transformer`
(issue 23). JoeyNMT is kept out of charmt's dependencies: it lives in its own virtual environment, .venv-joeynmt/
at the repository root (ignored by git), made on the first run: `pip install torch==2.13.0` first (on this machine
that is the CPU wheel; elsewhere give --torch-index https://download.pytorch.org/whl/cpu), then joeynmt==2.3.0,
importlib-metadata (which JoeyNMT imports without requiring it), sentencepiece==0.2.1 (0.2.2 removed the
SetVocabulary that JoeyNMT calls) and sacrebleu, so that JoeyNMT's `torch>=1.12.0` is already met and no CUDA build
is pulled.

What runs where:
- this process (charmt's interpreter): charmt's own selection of the training file (the transformer preset's: seed
  42, no length filter but targets up to 160 characters, typographic spaces made plain, 1% validation split by source
  sentence), the test file's multi-reference grouping, and the scoring (charmt.metrics.score_translations);
- .venv-joeynmt/bin/python running this same file as `_joey prepare|decode` (JoeyNMT's interpreter): the joint
  SentencePiece unigram model of 8,000 pieces trained on the training split only (as JoeyNMT's
  scripts/build_vocab.py trains it), the YAML config, and decoding with JoeyNMT's own `predict`;
- `python -m joeynmt train config.yaml --skip-test`: the training, stopped at the budget (below); best.ckpt is the
  checkpoint of the best validation chrF so far.

The budget counts from JoeyNMT's "EPOCH 1" line (after it has read and tokenized the data and built the model, as
charmt's clock starts at its first epoch) to the SIGINT, and includes JoeyNMT's periodic validations, as charmt's
includes its per-epoch ones. After the stop, the candidates best.ckpt and latest.ckpt (the weights at the budget,
which charmt would also validate once more) are both decoded greedy on the first 1,000 validation sentences
(charmt's eval_sentences; outside the budget) and the one with the higher multi-reference chrF is kept, as charmt
keeps its best model; the test set is decoded with that one.

Validations (--validation-sentences 200, --validation-freq 500). JoeyNMT validates every N steps by decoding its
whole dev set greedy, and its Transformer decoder recomputes the whole prefix at each output piece, so a
half-trained model that repeats itself up to max_output_length (100 pieces) is slow to validate. In the first
10-minute run on 2 cores (the machine of charmt's figures; 1,000 sentences every 100 steps) a step took 0.92 s and a
validation 5.5 s at step 100, 10.5 s at 200, 179 s at 300 and 135 s at 400 (outputs like "Il a a à la la la ..."):
about 40% of the budget. Now JoeyNMT's dev set is the first 200 of those validation sentences (chrF on 200 sentences
is enough to rank checkpoints; the final choice is made on 1,000, outside the budget) and it validates every 500
steps. The worst validation of that run, 0.18 s a sentence, is 36 s for 200, some 40 steps (its step-400 model,
decoding the first 200 alone on the idle machine: 30 s): 7% of the training time (36 s in 500 x 0.92 + 36 s), and
much less once outputs end where they should. A step's cost and a validation's both scale with the machine's speed,
so the share holds on other CPUs at the same --threads. The smoke tests (a busy 2-core machine, 175 validation
sentences) saw 1.2-8 s for a model whose outputs stop at once, and 37-54+ s for a step-4 model that writes 100
pieces for every sentence while a step took 1-5.5 s: that worst case, 0.31 s a sentence, would be 62 s for 200, some
11% at 500 steps of 1 s, but a busy machine slows decoding more than training steps (the step-400 model's 200
sentences took 143 s while it was busy). In a 10-minute budget (some 600 steps) that is one validation, at step 500,
then latest at the budget; in an hour some seven. Each validation's wall time (JoeyNMT's time stamps, from its
"Predicting" line to its last line before the next step, or to the interrupt that cut it short) and their share of
the budget are in the result (training.validations, validation_s_in_budget, validation_share): check the share
before comparing figures, and give a larger --validation-freq if it is high.

The stop is hard and bounded. At the budget the script records the step reached (the last step line read: JoeyNMT
logs every step, logging_freq 1) and sends SIGINT to JoeyNMT's process group: JoeyNMT's KeyboardInterrupt handler
logs "Interrupt at ... step N", saves the current weights as N.ckpt (latest.ckpt) and exits, once the step's
backward pass returns (1.2-3.8 s after the SIGINT in the smoke tests, on a busy 2-core machine). If it is still
running --grace seconds (30) later, SIGTERM goes to the group, and SIGKILL 5 s after that: JoeyNMT is gone at most
grace + 5 s after the budget. The first run's SIGINT was, by all signs, lost because JoeyNMT inherited SIGINT
*ignored*: it ran from a batch script started in the background, and a process that a non-interactive shell starts
in the background gets SIGINT ignored, which Python then leaves so (no KeyboardInterrupt handler); its log has no
"Interrupt at" line and it trained on to step 500, past the budget at step 400. The child now gets SIGINT's default
back before exec, and the result says whether it caught SIGINT (/proc SigCgt) and how it stopped (training.stop:
graceful, the signals sent and when, the step at the budget and JoeyNMT's interrupt step, when training ended, the
checkpoint was saved and the process exited, steps logged after the budget).

Only checkpoints that did not train past the budget are candidates: a checkpoint is named by its step, and any
N.ckpt with N above the step reached at the budget (say the SIGINT were lost again, and JoeyNMT validated or saved
after it) is left out, as is one that a SIGTERM or SIGKILL cut short while being written (torch.save writes a zip
archive in place: one without its central directory or with a bad CRC is not whole); best is then the best-scoring
whole checkpoint left before the budget (keep_best_ckpts 2: one best saved after the budget does not delete the one
before), latest the newest. They are listed in checkpoint.left_out. The step in flight at the SIGINT is discarded by
the interrupt (the KeyboardInterrupt comes when its forward or backward pass returns, before the optimizer's
update), so JoeyNMT's interrupt step N is the number of updates made before the SIGINT and N.ckpt holds the weights
at the budget; when N is one more than the last step line read (a step that ended just before the SIGINT, its line
read too late or never written), N is taken as the step at the budget. Only a SIGINT that lands inside
optimizer.step, a few ms of a ~1 s step, could leave part of one more update in the weights. The training's peak
memory is the kernel's peak resident set of JoeyNMT's process (wait4's ru_maxrss, exact rather than polled):
training.peak_rss_mb.

Prints one JSON line with everything and writes it to OUT/result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VENV = REPO / ".venv-joeynmt"
# joeynmt 2.3.0 imports importlib_metadata (joeynmt/helpers.py) without requiring it, and calls
# SentencePieceProcessor.SetVocabulary, which sentencepiece 0.2.2 removed: 0.2.1 is the newest that has it.
JOEYNMT = ["joeynmt==2.3.0", "importlib-metadata", "sentencepiece==0.2.1", "sacrebleu"]

# The recipe of issue 23 ("JoeyNMT 2.3 ... small Transformer recipe"); what the issue leaves open is taken from
# JoeyNMT's own Transformer recipes (configs/wmt17_ende_sp.yaml, iwslt14_deen_sp.yaml): AdamW with betas
# (0.9, 0.98), no weight decay, token-normalised loss, Xavier initialisation, scaled embeddings, ReLU, beam_alpha 1.
RECIPE = {
    "layers": 3, "hidden": 256, "heads": 4, "ff_size": 1024, "dropout": 0.1, "layer_norm": "pre",
    "tied_embeddings": True, "warmup_steps": 1000, "schedule": "warmupinversesquareroot", "label_smoothing": 0.1,
    "batch_tokens": 2048, "vocab_size": 8000, "model_type": "unigram",
}
EVAL_SENTENCES = 1000  # validation sentences for best against latest, after training (charmt's eval_sentences)
VALIDATION_SENTENCES = 200  # of them, those JoeyNMT decodes at each of its validations, inside the budget
VALIDATION_FREQ = 500  # steps between them: some 7% of the training time at worst (the docstring)


# --- JoeyNMT's side (runs under .venv-joeynmt/bin/python; imports nothing of charmt) ------------------------------

def joey_prepare(spec: dict) -> dict:
    """Train the joint SentencePiece model as JoeyNMT's scripts/build_vocab.py does, write its vocabulary file and the
    YAML config; return the vocabulary size and the mean target length in pieces (for pairs/s from tokens/s)."""
    import sentencepiece as spm
    import yaml

    work = Path(spec["work"])
    src, tgt = spec["src_lang"], spec["tgt_lang"]
    sentences = [line.rstrip("\n") for lang in (src, tgt)
                 for line in (work / f"train.{lang}").open(encoding="utf-8")]
    text = work / "sp_train.txt"
    text.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.Train(
        input=str(text), model_prefix=str(work / "sp"), model_type=RECIPE["model_type"],
        vocab_size=RECIPE["vocab_size"], character_coverage=1.0, accept_language=f"{src},{tgt}",
        unk_piece="<unk>", pad_piece="<pad>", bos_piece="<s>", eos_piece="</s>", unk_id=0, pad_id=1, bos_id=2, eos_id=3,
        vocabulary_output_piece_score=False,
        hard_vocab_limit=False,  # only matters for a tiny smoke-test corpus, which cannot fill 8,000 pieces
        minloglevel=2,
    )
    text.unlink()
    processor = spm.SentencePieceProcessor(model_file=str(work / "sp.model"))
    targets = (work / f"train.{tgt}").read_text(encoding="utf-8").splitlines()
    mean_target_pieces = sum(len(p) for p in processor.encode(targets, out_type=str)) / max(len(targets), 1)

    side = {
        "max_length": -1, "min_length": 1, "lowercase": False, "normalize": False, "level": "bpe",
        "voc_limit": RECIPE["vocab_size"], "voc_min_freq": 1, "voc_file": str(work / "sp.vocab"),
        "tokenizer_type": "sentencepiece",
        "tokenizer_cfg": {"model_file": str(work / "sp.model"), "model_type": RECIPE["model_type"],
                          "character_coverage": 1.0, "pretokenizer": "none"},
    }
    stack = {
        "type": "transformer", "num_layers": RECIPE["layers"], "num_heads": RECIPE["heads"],
        "embeddings": {"embedding_dim": RECIPE["hidden"], "scale": True, "dropout": 0.0},
        "hidden_size": RECIPE["hidden"], "ff_size": RECIPE["ff_size"], "dropout": RECIPE["dropout"],
        "layer_norm": RECIPE["layer_norm"], "activation": "relu",
    }
    validation_freq = spec["validation_freq"]
    config = {
        "name": "charmt_peer_transformer", "joeynmt_version": "2.3.0", "model_dir": str(work / "model"),
        "use_cuda": False, "fp16": False, "random_seed": 42, "num_workers": 0,
        "data": {
            "train": str(work / "train"), "dev": str(work / "dev"), "test": str(work / "test"),
            "dataset_type": "plain", "sample_train_subset": -1, "sample_dev_subset": -1,
            "src": {"lang": src, **side}, "trg": {"lang": tgt, **side},
            "special_symbols": {"unk_token": "<unk>", "unk_id": 0, "pad_token": "<pad>", "pad_id": 1,
                                "bos_token": "<s>", "bos_id": 2, "eos_token": "</s>", "eos_id": 3},
        },
        "testing": {
            "n_best": 1, "beam_size": 5, "beam_alpha": 1.0, "batch_size": 64, "batch_type": "sentence",
            "max_output_length": 100, "min_output_length": 1, "eval_metrics": ["chrf", "bleu"],
            "return_prob": "none", "generate_unk": True,
            "sacrebleu_cfg": {"tokenize": spec["bleu_tokenize"], "whitespace": False},
        },
        "training": {
            "optimizer": "adamw", "adam_betas": [0.9, 0.98], "weight_decay": 0.0,
            "scheduling": RECIPE["schedule"], "learning_rate": spec["learning_rate"],
            "learning_rate_warmup": RECIPE["warmup_steps"], "learning_rate_min": 1.0e-8,
            "loss": "crossentropy", "label_smoothing": RECIPE["label_smoothing"], "normalization": "tokens",
            "batch_size": RECIPE["batch_tokens"], "batch_type": "token", "batch_multiplier": 1,
            "epochs": 100000,  # the budget stops it
            # a log line every step: the step reached at the budget is read exactly
            "validation_freq": validation_freq, "logging_freq": 1,
            # 2: a best checkpoint from before the budget survives one saved after it (if the stop ever lags)
            "early_stopping_metric": "chrf", "keep_best_ckpts": 2, "shuffle": True, "overwrite": False,
            "print_valid_sents": [0, 1, 2],
        },
        "model": {
            "initializer": "xavier_uniform", "init_gain": 1.0, "bias_initializer": "zeros",
            "embed_initializer": "xavier_uniform", "embed_init_gain": 1.0,
            "tied_embeddings": RECIPE["tied_embeddings"], "tied_softmax": True,
            "encoder": stack, "decoder": stack,
        },
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return {"vocab_size": processor.get_piece_size(), "mean_target_pieces": mean_target_pieces}


def joey_decode(spec: dict) -> dict:
    """Decode each job's source file with its checkpoint and beam size through JoeyNMT's own `predict`; the model and
    data are loaded outside the timed part. Returns the hypotheses and the seconds of each job."""
    import torch
    from joeynmt.config import load_config, parse_global_args
    from joeynmt.prediction import predict, prepare

    torch.set_num_threads(spec["threads"])
    results = []
    for job in spec["jobs"]:
        cfg = load_config(Path(spec["config"]))
        cfg["testing"]["load_model"] = job["checkpoint"]
        cfg["data"]["test"] = job["data"]  # a `plain` prefix: PREFIX.<src> only, so JoeyNMT reads sources alone
        args = parse_global_args(cfg, rank=0, mode="test")
        model, _, _, data = prepare(args, rank=0, mode="test")
        for beam in job["beams"]:
            test_args = args.test._replace(beam_size=beam, n_best=1, return_prob="none")
            start = time.perf_counter()
            _, _, hypotheses, _, _, _ = predict(model=model, data=data, device=args.device, n_gpu=args.n_gpu,
                                                rank=0, compute_loss=False, normalization=args.train.normalization,
                                                num_workers=args.num_workers, args=test_args,
                                                autocast=args.autocast)
            seconds = time.perf_counter() - start
            results.append({"checkpoint": job["checkpoint"], "data": job["data"], "beam": beam,
                            "seconds": seconds, "hypotheses": hypotheses})
    return {"results": results}


def joey_main(argv: list[str]) -> int:
    action, spec_path, out_path = argv
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    result = {"prepare": joey_prepare, "decode": joey_decode}[action](spec)
    Path(out_path).write_text(json.dumps(result, ensure_ascii=False), encoding="utf-8")
    return 0


# --- the environment ----------------------------------------------------------------------------------------------

def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, python: str, torch_spec: str, torch_index: str | None) -> dict:
    """Create (or reuse) JoeyNMT's own virtual environment; return the versions it holds."""
    probe = ("import json, joeynmt, joeynmt.training, joeynmt.prediction, torch, sentencepiece, sacrebleu, yaml; "
             "assert hasattr(sentencepiece.SentencePieceProcessor, 'SetVocabulary'); "
             "print(json.dumps({'joeynmt': joeynmt.__version__, 'torch': torch.__version__, "
             "'sentencepiece': sentencepiece.__version__, 'sacrebleu': sacrebleu.__version__}))")
    py = venv_python(venv)

    def versions():
        if not py.exists():
            return None
        run = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
        return json.loads(run.stdout.strip().splitlines()[-1]) if run.returncode == 0 else None

    found = versions()
    if found:
        return found
    log(f"making JoeyNMT's environment in {venv} (once; a few minutes)")
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    # torch first, so that joeynmt's torch requirement is already met and pip pulls no other build
    subprocess.run(pip + [torch_spec] + (["--index-url", torch_index] if torch_index else []), check=True)
    subprocess.run(pip + JOEYNMT, check=True)
    found = versions()
    if not found:
        raise SystemExit(f"{venv}: joeynmt does not import after installing; remove the folder, read pip's output")
    return found


def run_joey_helper(venv: Path, action: str, spec: dict, work: Path, env: dict, tag: str = "") -> tuple[dict, float]:
    """Run this file's JoeyNMT side in JoeyNMT's interpreter; (its result, its peak RSS in MB). Its files are
    WORK/ACTION[-TAG].{spec.json,out.json,log}."""
    stem = work / f"{action}{'-' + tag if tag else ''}"
    spec_path, out_path, log_path = (Path(f"{stem}{suffix}") for suffix in (".spec.json", ".out.json", ".log"))
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    with log_path.open("w") as logfile:
        process = subprocess.Popen([str(venv_python(venv)), str(Path(__file__).resolve()), "_joey", action,
                                    str(spec_path), str(out_path)], stdout=logfile, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"JoeyNMT {action} failed (exit {process.returncode}); see {log_path}")
    return json.loads(out_path.read_text(encoding="utf-8")), usage.ru_maxrss / 1024


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env.update(CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def log(message: str) -> None:
    print(f"[bench_joeynmt {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- charmt's side: the data and the scores -----------------------------------------------------------------------

def import_charmt():
    try:
        import charmt  # noqa: F401
    except ImportError:  # run from a checkout without charmt installed
        sys.path.insert(0, str(REPO / "src"))


def prepare_data(args, work: Path) -> dict:
    """The training and validation pairs exactly as charmt's transformer (and base) preset selects them from the
    training file, the first EVAL_SENTENCES validation sources (charmt's eval_pairs), and the test file's sources."""
    from charmt.config import preset_configs
    from charmt.data import read_corpus, references_by_source, select
    from charmt.languages import bleu_tokenizer, languages_of_file
    from charmt.vocab import canonical_spaces, collapse_whitespace

    _, _, selection = preset_configs("transformer")
    from dataclasses import replace

    selection = replace(selection, reverse=args.reverse)
    corpus = read_corpus(args.train, reverse=args.reverse)
    chosen = select(corpus, selection)
    src, tgt = direction(args)
    eval_pairs, eval_refs = references_by_source(chosen.validation)
    eval_pairs, eval_refs = eval_pairs[:EVAL_SENTENCES], eval_refs[:EVAL_SENTENCES]

    def write(name: str, lines: list[str]) -> None:
        # one sentence a line: whitespace runs (never a newline in a pair file, but a tab or two) become one space
        (work / name).write_text("".join(collapse_whitespace(s) + "\n" for s in lines), encoding="utf-8")

    write(f"train.{src}", [p.source for p in chosen.train])
    write(f"train.{tgt}", [p.target for p in chosen.train])
    # JoeyNMT's periodic validations (inside the budget): the first VALIDATION_SENTENCES of them, one reference each
    dev_pairs, dev_refs = eval_pairs[:args.validation_sentences], eval_refs[:args.validation_sentences]
    write(f"dev.{src}", [p.source for p in dev_pairs])
    write(f"dev.{tgt}", [refs[0] for refs in dev_refs])
    write(f"devsrc.{src}", [p.source for p in eval_pairs])  # sources alone, for choosing best vs latest
    test = read_corpus(args.test, reverse=args.reverse)
    test_unique, test_refs = references_by_source(test.pairs)
    # the sources as charmt's Translator prepares them (typographic spaces plain, as the model was trained)
    write(f"test.{src}", [canonical_spaces(p.source) for p in test_unique])
    tokenize, note = bleu_tokenizer(tgt)
    return {
        "src": src, "tgt": tgt, "bleu_tokenize": tokenize, "bleu_note": note,
        "eval_refs": eval_refs, "test_refs": test_refs,
        "summary": {
            "train_file": str(args.train), "train_sha256": corpus.sha256, "test_file": str(args.test),
            "test_sha256": test.sha256, "train_pairs": len(chosen.train), "validation_pairs": len(chosen.validation),
            "validation_sentences_decoded": len(eval_pairs), "validation_sentences_in_training": len(dev_pairs),
            "skipped": chosen.skipped,
            "test_pairs": len(test.pairs), "test_sentences": len(test_unique),
            "test_references_per_sentence": round(len(test.pairs) / len(test_unique), 3),
        },
        "languages_of_file": languages_of_file(args.train),
    }


def direction(args) -> tuple[str, str]:
    return tuple(args.direction.split("-", 1))


def score(hypotheses: list[str], references: list[list[str]], tokenize: str) -> dict:
    from charmt.metrics import score_translations

    multi = score_translations(hypotheses, references, tokenize=tokenize)
    single = score_translations(hypotheses, [refs[:1] for refs in references], tokenize=tokenize)
    return {"chrf": round(multi.chrf, 2), "bleu": round(multi.bleu, 2), "exact_match": round(multi.exact_match, 4),
            "single_reference": {"chrf": round(single.chrf, 2), "bleu": round(single.bleu, 2)}}


# --- training under the budget ------------------------------------------------------------------------------------

STEP_LINE = re.compile(r"Epoch\s+(\d+), Step:\s+(\d+), Batch Loss:\s+([\d.naif]+), Batch Acc: ([\d.naif]+), "
                       r"Tokens per Sec:\s+(\d+), Lr: ([\d.e-]+)")
EVAL_LINE = re.compile(r"Evaluation result \(greedy\): (.*), ([\d.]+)\[sec\]")
GEN_LINE = re.compile(r"Generation took ([\d.]+)\[sec\]")
INTERRUPT_LINE = re.compile(r"Interrupt at epoch (\d+), step (\d+)\.")
SAVED_LINE = re.compile(r"Checkpoint saved in (.*?(\d+)\.ckpt)\.")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) - ")
PREDICT_LINE = re.compile(r"joeynmt\.prediction - Predicting (\d+) example")
TERM_WAIT = 5.0  # seconds between SIGTERM and SIGKILL


class TrainingWatch:
    """Reads JoeyNMT's training log as it grows: when the first epoch begins, the steps it logs (each one: logging_freq
    is 1), its validations, its interrupt and the checkpoints it saves. Times `t` are seconds from the budget's start
    (from launch before it) as this process reads the lines (every 0.2 s); a validation's wall_s is measured on
    JoeyNMT's own time stamps, from its "Predicting" line to its last line before the next step (decoding, loss,
    scores, checkpoint, examples)."""

    def __init__(self, path: Path):
        self.reader = path.open(encoding="utf-8", errors="replace")
        self.partial = ""
        self.launched = time.monotonic()
        self.started: float | None = None  # when "EPOCH 1" was seen: the budget's clock
        self.steps: list[dict] = []
        self.validations: list[dict] = []
        self.generation_seconds: list[float] = []
        self.interrupt: dict | None = None
        self.saved: list[dict] = []
        self.stamp: float | None = None  # JoeyNMT's time stamp of its last line (seconds since the epoch)
        self.validating: dict | None = None  # the validation under way

    def read(self) -> None:
        lines = (self.partial + self.reader.read()).split("\n")
        self.partial = lines.pop()  # an unfinished line waits for the next read
        for line in lines:
            self._line(line)

    def elapsed(self) -> float:
        return round(time.monotonic() - (self.started or self.launched), 1)

    def close_validation(self, end: float | None = None) -> None:
        """The validation under way ends at END (a time stamp; default: JoeyNMT's last line)."""
        if self.validating is not None:
            self.validating["wall_s"] = round((end or self.stamp) - self.validating.pop("start"), 1)
            self.validating = None

    def _line(self, line: str) -> None:
        now = self.elapsed()
        if m := STAMP.match(line):
            stamp = time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000
            if STEP_LINE.search(line):
                self.close_validation()  # its end: the last line before this one
            elif INTERRUPT_LINE.search(line):
                self.close_validation(stamp)  # the SIGINT cut it short: it ran until this line
            self.stamp = stamp
        if self.started is None and re.search(r" - EPOCH 1\s*$", line):
            self.started = time.monotonic()
            log(f"JoeyNMT's first epoch began after {self.started - self.launched:.1f} s of setup; the budget runs")
        elif m := STEP_LINE.search(line):
            self.steps.append({"epoch": int(m[1]), "step": int(m[2]), "loss": float(m[3]), "acc": float(m[4]),
                               "tokens_per_s": int(m[5]), "lr": float(m[6]), "t": now})
        elif (m := PREDICT_LINE.search(line)) and self.started is not None:
            self.validating = {"step": self.steps[-1]["step"] if self.steps else 0, "sentences": int(m[1]),
                               "t": now, "start": self.stamp}
            self.validations.append(self.validating)
        elif m := GEN_LINE.search(line):
            self.generation_seconds.append(float(m[1]))
            if self.validating is not None:
                self.validating["decode_s"] = float(m[1])
        elif m := EVAL_LINE.search(line):
            scores = {k: float(v) for k, v in (kv.split(": ") for kv in m[1].split(", "))}
            if "chrf" in scores:  # JoeyNMT reports chrF in [0, 1] (its metrics.chrf), BLEU in [0, 100]
                scores["chrf"] = round(100 * scores["chrf"], 2)
            if self.validating is not None:
                self.validating.update(scores)
        elif m := INTERRUPT_LINE.search(line):
            self.interrupt = {"epoch": int(m[1]), "step": int(m[2]), "t": now}
        elif m := SAVED_LINE.search(line):
            self.saved.append({"checkpoint": Path(m[1]).name, "step": int(m[2]), "t": now})


def sigint_caught(pid: int) -> bool | None:
    """Whether the process has a handler for SIGINT (Python's, which raises KeyboardInterrupt), from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    except (OSError, ValueError):
        pass
    return None


def _default_sigint() -> None:
    # In the child, before exec: SIGINT back to its default, so that JoeyNMT's Python installs its KeyboardInterrupt
    # handler. A process started in the background by a non-interactive shell (`cmd &`, nohup, a batch script)
    # inherits SIGINT *ignored*, and Python then leaves it ignored: by all signs, how the SIGINT of the first
    # 10-minute run was lost and JoeyNMT trained on.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def signal_group(pgid: int, sig: int) -> bool:
    """Send SIG to the process group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def train_under_budget(args, venv: Path, work: Path, env: dict) -> dict:
    """Run `python -m joeynmt train`, start the clock at its first epoch; at the budget, SIGINT it (JoeyNMT saves the
    current weights as latest.ckpt and exits), and if it is still alive GRACE seconds later, SIGTERM and then SIGKILL
    its process group. The stop is bounded: the process is gone at most GRACE + 5 s after the budget."""
    train_log = work / "joeynmt-train.log"
    budget = args.minutes * 60
    command = [str(venv_python(venv)), "-m", "joeynmt", "train", str(work / "config.yaml"), "--skip-test"]
    log(f"training for {args.minutes} min: {' '.join(command)} (log: {train_log})")
    interrupted = None  # when the SIGINT went (monotonic)
    step_at_budget = None  # the last step JoeyNMT had logged when the SIGINT went
    signals: list[dict] = []  # the signals sent, with when (seconds after the SIGINT)
    caught = None
    with train_log.open("w") as logfile:
        watch = TrainingWatch(train_log)
        process = subprocess.Popen(command, stdout=logfile, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True,  # its own group: a Ctrl+C here reaches only this script
                                   preexec_fn=_default_sigint)
        pgid = process.pid
        try:
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                watch.read()
                if pid:
                    break
                now = time.monotonic()
                if caught is None and watch.started is not None:
                    caught = sigint_caught(process.pid)
                    if caught is False:
                        log("warning: JoeyNMT does not catch SIGINT; it will be stopped by SIGTERM after the grace")
                if watch.started is not None and interrupted is None and now - watch.started >= budget:
                    interrupted = now
                    step_at_budget = watch.steps[-1]["step"] if watch.steps else 0
                    log(f"budget spent: SIGINT to JoeyNMT (step {step_at_budget} last logged)")
                    signal_group(pgid, signal.SIGINT)
                    signals.append({"signal": "SIGINT", "after_s": 0.0})
                elif interrupted is not None and len(signals) == 1 and now - interrupted > args.grace:
                    log(f"JoeyNMT still running {args.grace} s after SIGINT: SIGTERM to its process group")
                    signal_group(pgid, signal.SIGTERM)
                    signals.append({"signal": "SIGTERM", "after_s": round(now - interrupted, 1)})
                elif len(signals) == 2 and now - interrupted > args.grace + TERM_WAIT:
                    log(f"JoeyNMT still running {TERM_WAIT} s after SIGTERM: SIGKILL to its process group")
                    signal_group(pgid, signal.SIGKILL)
                    signals.append({"signal": "SIGKILL", "after_s": round(now - interrupted, 1)})
                elif watch.started is None and now - watch.launched > args.setup_limit:
                    raise SystemExit(f"JoeyNMT did not start training within {args.setup_limit} s; see {train_log}")
                time.sleep(0.2)
        except BaseException:  # this script stops (Ctrl+C, an error): JoeyNMT must not train on alone
            signal_group(pgid, signal.SIGKILL)
            process.wait()
            raise
        exited, exited_stamp = time.monotonic(), time.time()
        if signal_group(pgid, 0):  # anything it started that outlived it
            signal_group(pgid, signal.SIGKILL)
    watch.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and interrupted is None:
        raise SystemExit(f"JoeyNMT training failed (exit {code}); see {train_log}")
    if interrupted is None:  # it ended by itself (the epochs are 100,000: not in these budgets)
        interrupted = exited
        step_at_budget = watch.steps[-1]["step"] if watch.steps else 0
    train_s = interrupted - watch.started if watch.started else 0.0
    interrupt = watch.interrupt
    step_logged_at_sigint = step_at_budget
    if interrupt and interrupt["step"] == step_at_budget + 1:
        # A caught SIGINT raises KeyboardInterrupt at JoeyNMT's next Python instruction, before any further update
        # (a forward or backward pass in progress returns first, and the step is dropped): its step is the number of
        # updates made before the SIGINT. One more than the last line read is a step that ended just before the
        # SIGINT, its line read too late or never written (the interrupt came between the update and the log).
        step_at_budget = interrupt["step"]
    saved_at_stop = [c for c in watch.saved if interrupt and c["t"] >= interrupt["t"]]  # the handler's save
    graceful = bool(interrupt and saved_at_stop and len(signals) == 1 and code == 0)
    watch.close_validation(exited_stamp)  # one that a SIGTERM or SIGKILL cut short ran until the exit
    # the validations' share of the budget: their wall time up to the SIGINT
    validation_s = sum(max(0.0, min(v["t"] + v.get("wall_s", 0.0), train_s) - v["t"]) for v in watch.validations)
    times = {s["step"]: s["t"] for s in watch.steps}
    gaps = sorted(times[k] - times[k - 1] for k in times if k - 1 in times)
    steps = watch.steps
    tokens_per_s = sorted(s["tokens_per_s"] for s in steps)
    return {
        "setup_s": round(watch.started - watch.launched, 1) if watch.started else None,
        "budget_s": budget,
        "train_s": round(train_s, 1),  # the budget's start to the SIGINT: the training time reported
        "stopped_by": "budget" if signals else "JoeyNMT ended itself",
        "steps": step_at_budget,  # the step reached at the budget
        "stop": {
            "graceful": graceful,  # SIGINT alone: JoeyNMT logged its interrupt, saved and exited 0
            "sigint_caught": caught,  # JoeyNMT's process had a SIGINT handler (/proc SigCgt) when training began
            "signals": signals,
            "step_logged_at_sigint": step_logged_at_sigint,  # the last step line read when the SIGINT went
            "interrupt_step": interrupt["step"] if interrupt else None,  # JoeyNMT's "Interrupt at ... step N"
            # the actual end of training: JoeyNMT's "Interrupt at" line (seconds after the budget's start)
            "training_ended_s": interrupt["t"] if interrupt else round(exited - watch.started, 1),
            "checkpoint_saved_s": saved_at_stop[-1]["t"] if saved_at_stop else None,
            "exited_s": round(exited - watch.started, 1),
            "exited_after_sigint_s": round(exited - interrupted, 1),
            "exit_code": code,
            "last_step_logged": steps[-1]["step"] if steps else 0,
            "steps_after_budget": (steps[-1]["step"] if steps else 0) - step_at_budget,
            "ended_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(exited_stamp)),
        },
        "checkpoints_saved": watch.saved,
        "validations": watch.validations,
        "validation_s_in_budget": round(validation_s, 1),
        "validation_share": round(validation_s / train_s, 3) if train_s else None,  # of the budget
        "validation_decode_s_total": round(sum(watch.generation_seconds), 1),
        "step_s_median": round(gaps[len(gaps) // 2], 2) if gaps else None,  # validations' steps included
        "tokens_per_s_median": tokens_per_s[len(tokens_per_s) // 2] if tokens_per_s else None,
        "last_logged": steps[-3:],
        # the kernel's peak resident set of the training process (wait4's ru_maxrss: exact, not polled)
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def intact(path: Path) -> bool:
    """Whether a checkpoint was written whole: torch.save writes a zip archive in place, so a save cut short by the
    SIGTERM or SIGKILL leaves a file without its central directory, or with a member whose CRC fails."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


def checkpoints(model_dir: Path, step_at_budget: int, validations: list[dict]) -> tuple[dict[str, Path], dict]:
    """The candidates, only among whole checkpoints written at or before the step reached at the budget: latest (the
    weights at the stop: the checkpoint JoeyNMT saves on the SIGINT, else the newest one left) and best (best.ckpt,
    JoeyNMT's best validation chrF so far; if it trained past the budget, the best one before it that is left).
    Returns them and the checkpoints left out: trained past the budget, or cut short by the stop."""
    files = {int(p.stem): p for p in model_dir.glob("*.ckpt") if p.stem.isdigit()}
    left_out = {"past_budget": [files[n].name for n in sorted(files) if n > step_at_budget],
                "not_intact": [files[n].name for n in sorted(files) if n <= step_at_budget and not intact(files[n])]}
    usable = {n: p for n, p in files.items() if n <= step_at_budget and p.name not in left_out["not_intact"]}
    found = {}
    best = model_dir / "best.ckpt"
    if best.exists() and best.resolve() in usable.values():
        found["best"] = best.resolve()
    else:
        scored = [v for v in validations if v["step"] in usable and "chrf" in v]
        if scored:
            found["best"] = usable[max(scored, key=lambda v: v["chrf"])["step"]]
    if usable:
        found["latest"] = usable[max(usable)]
    return found, left_out


# --- the whole run ------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_joey"]:
        return joey_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("train", type=Path, help="training pair file as `charmt split` writes it (NAME.train.txt)")
    p.add_argument("test", type=Path, help="held-out test pair file (NAME.test.txt), several references a source")
    p.add_argument("--direction", help="SRC-TGT language codes, e.g. en-fr (default: from the file name; with "
                                       "--reverse, the other way)")
    p.add_argument("--reverse", action="store_true", help="translate from the second column to the first (as "
                                                          "charmt's --reverse); a direction whose source is the "
                                                          "file's second language implies it")
    p.add_argument("--minutes", type=float, required=True, help="wall-clock training budget (10 and 60 in issue 23)")
    p.add_argument("--out", type=Path, required=True, help="folder for the data, JoeyNMT's model and result.json")
    p.add_argument("--threads", type=int, default=2, help="torch threads for training and decoding (default: 2)")
    p.add_argument("--validation-freq", type=int, default=VALIDATION_FREQ,
                   help="JoeyNMT validates every N steps (default: %(default)s; see the docstring)")
    p.add_argument("--validation-sentences", type=int, default=VALIDATION_SENTENCES,
                   help="held-out validation sentences JoeyNMT decodes at each validation (default: %(default)s; "
                        f"best against latest is chosen afterwards on {EVAL_SENTENCES:,}, outside the budget)")
    p.add_argument("--learning-rate", type=float, default=5e-4,
                   help="peak learning rate after the warm-up (default: %(default)s, fairseq's for this schedule)")
    p.add_argument("--grace", type=float, default=30,
                   help="seconds JoeyNMT may take to save and exit after the SIGINT before SIGTERM, then SIGKILL "
                        f"{TERM_WAIT:.0f} s later, go to its process group (default: %(default)s)")
    p.add_argument("--setup-limit", type=float, default=1800, help="seconds JoeyNMT may take before its first epoch")
    p.add_argument("--force", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="JoeyNMT's environment (default: %(default)s)")
    p.add_argument("--python", default="python3", help="interpreter that makes the environment (default: python3)")
    p.add_argument("--torch", default=os.environ.get("TORCH", "torch==2.13.0"),
                   help="torch requirement installed first into the environment (default: %(default)s)")
    p.add_argument("--torch-index", default=os.environ.get("TORCH_INDEX") or None,
                   help="index for torch, e.g. https://download.pytorch.org/whl/cpu (default: pip's own)")
    args = p.parse_args(argv)
    import_charmt()
    from charmt.languages import languages_of_file

    from_name = languages_of_file(args.train) or ("en", "xx")
    if args.direction is None:
        args.direction = "-".join(from_name[::-1] if args.reverse else from_name)
    elif args.direction.split("-", 1) == list(from_name[::-1]):
        args.reverse = True

    out = args.out.resolve()
    work = out / "joeynmt"
    if work.exists():
        if not args.force:
            raise SystemExit(f"{work} holds an earlier run; give --force to replace it, or another --out")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = thread_env(args.threads)
    started = time.time()

    versions = ensure_venv(args.venv.resolve(), args.python, args.torch, args.torch_index)
    log(f"JoeyNMT's environment: {versions}")
    data = prepare_data(args, work)
    log(f"data: {data['summary']}")
    prepared, _ = run_joey_helper(args.venv, "prepare", {
        "work": str(work), "src_lang": data["src"], "tgt_lang": data["tgt"],
        "bleu_tokenize": data["bleu_tokenize"] if data["bleu_tokenize"] != "ja-mecab" else "char",
        "validation_freq": args.validation_freq, "learning_rate": args.learning_rate,
    }, work, env)
    log(f"SentencePiece: {prepared['vocab_size']} pieces, {prepared['mean_target_pieces']:.2f} per target")

    training = train_under_budget(args, args.venv, work, env)
    # pairs/s from JoeyNMT's target tokens/s: a pair's target is its pieces plus </s>
    if training["tokens_per_s_median"]:
        training["pairs_per_s_estimate"] = round(training["tokens_per_s_median"]
                                                 / (prepared["mean_target_pieces"] + 1), 1)
    log(f"trained: {training['steps']} steps in {training['train_s']} s, peak RSS {training['peak_rss_mb']} MB")

    from _common import _cpu_model  # charmt's interpreter: the other benchmarks' helpers are importable here

    result = {
        "system": "joeynmt", "versions": versions, "direction": args.direction, "minutes": args.minutes,
        "threads": args.threads, "validation_freq": args.validation_freq,
        "validation_sentences": args.validation_sentences, "grace_s": args.grace, "learning_rate": args.learning_rate,
        "recipe": RECIPE, "data": {**data["summary"], "vocab_size": prepared["vocab_size"],
                                   "mean_target_pieces": round(prepared["mean_target_pieces"], 2),
                                   "bleu_tokenize": data["bleu_tokenize"]},
        "training": training,
        "machine": {"cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), "processor": _cpu_model()},
    }

    def write_result() -> None:
        result.update(wall_s=round(time.time() - started, 1), time=time.strftime("%Y-%m-%d %H:%M:%S"))
        (out / "result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    # best.ckpt against the weights at the stop, on the validation sentences (greedy, multi-reference chrF); only
    # whole checkpoints that did not train past the budget
    candidates, left_out = checkpoints(work / "model", training["steps"], training["validations"])
    for why, names in left_out.items():
        if names:
            log(f"checkpoints left out ({why.replace('_', ' ')}, step at the budget {training['steps']}): "
                f"{', '.join(names)}")
    result["checkpoint"] = {"chosen": None, "left_out": left_out}
    if not candidates:
        result["error"] = f"no whole checkpoint at or before step {training['steps']}"
    write_result()  # the training's figures, whatever becomes of the decoding; written again at the end
    if not candidates:
        raise SystemExit(f"JoeyNMT left no whole checkpoint at or before step {training['steps']} in "
                         f"{work / 'model'}; the training figures are in {out / 'result.json'}")
    distinct = {path: name for name, path in reversed(list(candidates.items()))}  # best wins a tie of paths
    decoded, _ = run_joey_helper(args.venv, "decode", {
        "config": str(work / "config.yaml"), "threads": args.threads,
        "jobs": [{"checkpoint": str(path), "data": str(work / "devsrc"), "beams": [1]} for path in distinct],
    }, work, env, tag="validation")
    choice = {}
    for job in decoded["results"]:
        name = distinct[Path(job["checkpoint"])]
        choice[name] = {"checkpoint": Path(job["checkpoint"]).name,
                        **score(job["hypotheses"], data["eval_refs"], data["bleu_tokenize"])}
    chosen = max(choice, key=lambda name: (choice[name]["chrf"], name == "best"))
    scores = ", ".join(f"{name} {c['checkpoint']} {c['chrf']}" for name, c in choice.items())
    log(f"validation chrF: {scores}; the test set is decoded with {chosen}")

    # the test set, greedy and beam 5, with the chosen checkpoint
    decoded, decode_peak = run_joey_helper(args.venv, "decode", {
        "config": str(work / "config.yaml"), "threads": args.threads,
        "jobs": [{"checkpoint": str(candidates[chosen]), "data": str(work / "test"), "beams": [1, 5]}],
    }, work, env, tag="test")
    test = {}
    for job in decoded["results"]:
        hypotheses = job["hypotheses"]
        key = "greedy" if job["beam"] == 1 else f"beam{job['beam']}"
        (out / f"hypotheses.{key}.txt").write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
        test[key] = {**score(hypotheses, data["test_refs"], data["bleu_tokenize"]),
                     "decode_s": round(job["seconds"], 2),
                     "sentences_per_s": round(len(hypotheses) / job["seconds"], 2)}

    result.update(checkpoint={"chosen": chosen, "validation": choice, "left_out": left_out}, test=test,
                  decode_peak_rss_mb=round(decode_peak, 1))
    write_result()
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
