"""The peer, side by side: JoeyNMT 2.3's small Transformer recipe, trained for a wall-clock budget on a split made
by `charmt split`, decoded greedy and with beam 5, scored with charmt's own multi-reference chrF and BLEU.

    .venv/bin/python -m charmt split /work/shared/data/fra-eng/fra.txt --out /tmp/split      # fra.train/test.txt
    .venv/bin/python benchmarks/bench_joeynmt.py /tmp/split/fra.train.txt /tmp/split/fra.test.txt \\
        --minutes 10 --out benchmarks/results/joeynmt-10min                                   # and --minutes 60
    # French to English: split with `charmt split --reverse` (multi-reference in English), then --direction fr-en
    # smoke test (2,000 pairs, 1 minute, a validation every 4 steps): about 2 minutes, the first run 2 more
    .venv/bin/python benchmarks/bench_joeynmt.py /tmp/tiny.fra.train.txt /tmp/split/fra.test.txt --minutes 1 \
        --validation-freq 4 --out /tmp/joeynmt-smoke --force

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
- `python -m joeynmt train config.yaml --skip-test`: the training, stopped at the budget with SIGINT (JoeyNMT's
  documented way to stop: its KeyboardInterrupt handler saves the current weights as latest.ckpt; best.ckpt is the
  checkpoint of the best validation chrF so far).

The budget counts from JoeyNMT's "EPOCH 1" line (after it has read and tokenized the data and built the model, as
charmt's clock starts at its first epoch) to the SIGINT, and includes JoeyNMT's periodic validations, as charmt's
includes its per-epoch ones. After the stop, the candidates best.ckpt and latest.ckpt (the weights at the budget,
which charmt would also validate once more) are both decoded greedy on the validation sentences and the one with
the higher multi-reference chrF is kept, as charmt keeps its best model; the test set is decoded with that one.

Prints one JSON line with everything and writes it to OUT/result.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
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
EVAL_SENTENCES = 1000  # validation sentences decoded at each validation (charmt's base/transformer eval_sentences)


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
            "validation_freq": validation_freq, "logging_freq": math.gcd(100, validation_freq),
            "early_stopping_metric": "chrf", "keep_best_ckpts": 1, "shuffle": True, "overwrite": False,
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
    write(f"dev.{src}", [p.source for p in eval_pairs])  # JoeyNMT validates on one reference a sentence
    write(f"dev.{tgt}", [refs[0] for refs in eval_refs])
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
            "validation_sentences_decoded": len(eval_pairs), "skipped": chosen.skipped,
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


class TrainingWatch:
    """Reads JoeyNMT's training log as it grows: when the first epoch begins, the steps it logs, its validations."""

    def __init__(self, path: Path):
        self.reader = path.open(encoding="utf-8", errors="replace")
        self.partial = ""
        self.launched = time.monotonic()
        self.started: float | None = None  # when "EPOCH 1" was seen: the budget's clock
        self.steps: list[dict] = []
        self.validations: list[dict] = []
        self.generation_seconds: list[float] = []
        self.interrupt_step: int | None = None

    def read(self) -> None:
        lines = (self.partial + self.reader.read()).split("\n")
        self.partial = lines.pop()  # an unfinished line waits for the next read
        for line in lines:
            self._line(line)

    def _line(self, line: str) -> None:
        now = round(time.monotonic() - (self.started or self.launched), 1)
        if self.started is None and re.search(r" - EPOCH 1\s*$", line):
            self.started = time.monotonic()
            log(f"JoeyNMT's first epoch began after {self.started - self.launched:.1f} s of setup; the budget runs")
        elif m := STEP_LINE.search(line):
            self.steps.append({"epoch": int(m[1]), "step": int(m[2]), "loss": float(m[3]), "acc": float(m[4]),
                               "tokens_per_s": int(m[5]), "lr": float(m[6]), "t": now})
        elif m := GEN_LINE.search(line):
            self.generation_seconds.append(float(m[1]))
        elif m := EVAL_LINE.search(line):
            scores = {k: float(v) for k, v in (kv.split(": ") for kv in m[1].split(", "))}
            if "chrf" in scores:  # JoeyNMT reports chrF in [0, 1] (its metrics.chrf), BLEU in [0, 100]
                scores["chrf"] = round(100 * scores["chrf"], 2)
            self.validations.append({"step": self.steps[-1]["step"] if self.steps else 0, **scores,
                                     "decode_s": self.generation_seconds[-1] if self.generation_seconds else None,
                                     "t": now})
        elif m := INTERRUPT_LINE.search(line):
            self.interrupt_step = int(m[2])


def train_under_budget(args, venv: Path, work: Path, env: dict) -> dict:
    """Run `python -m joeynmt train`, start the clock at its first epoch, SIGINT it when the budget is spent."""
    train_log = work / "joeynmt-train.log"
    budget = args.minutes * 60
    command = [str(venv_python(venv)), "-m", "joeynmt", "train", str(work / "config.yaml"), "--skip-test"]
    log(f"training for {args.minutes} min: {' '.join(command)} (log: {train_log})")
    interrupted = None  # when the SIGINT went
    terminated = False
    with train_log.open("w") as logfile:
        watch = TrainingWatch(train_log)
        process = subprocess.Popen(command, stdout=logfile, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)  # a Ctrl+C in this terminal reaches only this script
        try:
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                watch.read()
                if pid:
                    break
                now = time.monotonic()
                if watch.started is not None and interrupted is None and now - watch.started >= budget:
                    interrupted = now
                    last = watch.steps[-1]["step"] if watch.steps else "?"
                    log(f"budget spent: SIGINT to JoeyNMT (step {last} last logged)")
                    os.kill(process.pid, signal.SIGINT)
                elif interrupted is not None and not terminated and now - interrupted > args.grace:
                    log(f"JoeyNMT still running {args.grace} s after SIGINT: SIGTERM")
                    os.kill(process.pid, signal.SIGTERM)
                    terminated = True
                elif watch.started is None and now - watch.launched > args.setup_limit:
                    raise SystemExit(f"JoeyNMT did not start training within {args.setup_limit} s; see {train_log}")
                time.sleep(0.2)
        except BaseException:  # this script stops (Ctrl+C, an error): JoeyNMT must not train on alone
            process.kill()
            process.wait()
            raise
    watch.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and watch.interrupt_step is None:
        raise SystemExit(f"JoeyNMT training failed (exit {code}); see {train_log}")
    ended = interrupted if interrupted is not None else time.monotonic()
    steps = watch.steps
    tokens_per_s = sorted(s["tokens_per_s"] for s in steps)
    return {
        "setup_s": round(watch.started - watch.launched, 1) if watch.started else None,
        "train_s": round(ended - watch.started, 1) if watch.started else 0.0,
        "stopped_by": "budget" if interrupted is not None else "JoeyNMT ended itself",
        "saved_after_sigint_s": round(time.monotonic() - interrupted, 1) if interrupted is not None else None,
        "exit_code": code,
        "steps": watch.interrupt_step if watch.interrupt_step is not None else (steps[-1]["step"] if steps else 0),
        "validations": watch.validations,
        "validation_decode_s_total": round(sum(watch.generation_seconds), 1),
        "tokens_per_s_median": tokens_per_s[len(tokens_per_s) // 2] if tokens_per_s else None,
        "last_logged": steps[-3:],
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def checkpoints(model_dir: Path) -> dict[str, Path]:
    """The candidates: best.ckpt (best validation chrF) and latest.ckpt (the weights at the stop), resolved."""
    found = {}
    for name in ("best", "latest"):
        link = model_dir / f"{name}.ckpt"
        if link.exists():
            found[name] = link.resolve()
    return found


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
    p.add_argument("--validation-freq", type=int, default=0,
                   help="validate every N steps (default: 100 for budgets up to 15 minutes, else 500; a step of "
                        "2,048 tokens takes about 2 s on 2 cores, so 10 minutes are some 300 steps)")
    p.add_argument("--learning-rate", type=float, default=5e-4,
                   help="peak learning rate after the warm-up (default: %(default)s, fairseq's for this schedule)")
    p.add_argument("--grace", type=float, default=300, help="seconds JoeyNMT may take to save after the SIGINT")
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
    if not args.validation_freq:
        args.validation_freq = 100 if args.minutes <= 15 else 500

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

    # best.ckpt against the weights at the stop, on the validation sentences (greedy, multi-reference chrF)
    candidates = checkpoints(work / "model")
    if not candidates:
        raise SystemExit(f"JoeyNMT left no checkpoint in {work / 'model'}")
    distinct = {path: name for name, path in reversed(list(candidates.items()))}  # best wins a tie of paths
    decoded, _ = run_joey_helper(args.venv, "decode", {
        "config": str(work / "config.yaml"), "threads": args.threads,
        "jobs": [{"checkpoint": str(path), "data": str(work / "devsrc"), "beams": [1]} for path in distinct],
    }, work, env, tag="validation")
    choice = {}
    for result in decoded["results"]:
        name = distinct[Path(result["checkpoint"])]
        choice[name] = {"checkpoint": Path(result["checkpoint"]).name,
                        **score(result["hypotheses"], data["eval_refs"], data["bleu_tokenize"])}
    chosen = max(choice, key=lambda name: (choice[name]["chrf"], name == "best"))
    scores = ", ".join(f"{name} {c['checkpoint']} {c['chrf']}" for name, c in choice.items())
    log(f"validation chrF: {scores}; the test set is decoded with {chosen}")

    # the test set, greedy and beam 5, with the chosen checkpoint
    decoded, decode_peak = run_joey_helper(args.venv, "decode", {
        "config": str(work / "config.yaml"), "threads": args.threads,
        "jobs": [{"checkpoint": str(candidates[chosen]), "data": str(work / "test"), "beams": [1, 5]}],
    }, work, env, tag="test")
    test = {}
    for result in decoded["results"]:
        hypotheses = result["hypotheses"]
        key = "greedy" if result["beam"] == 1 else f"beam{result['beam']}"
        (out / f"hypotheses.{key}.txt").write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
        test[key] = {**score(hypotheses, data["test_refs"], data["bleu_tokenize"]),
                     "decode_s": round(result["seconds"], 2),
                     "sentences_per_s": round(len(hypotheses) / result["seconds"], 2)}

    from _common import _cpu_model  # charmt's interpreter: the other benchmarks' helpers are importable here

    result = {
        "system": "joeynmt", "versions": versions, "direction": args.direction, "minutes": args.minutes,
        "threads": args.threads, "validation_freq": args.validation_freq, "learning_rate": args.learning_rate,
        "recipe": RECIPE, "data": {**data["summary"], "vocab_size": prepared["vocab_size"],
                                   "mean_target_pieces": round(prepared["mean_target_pieces"], 2),
                                   "bleu_tokenize": data["bleu_tokenize"]},
        "training": training,
        "checkpoint": {"chosen": chosen, "validation": choice},
        "test": test,
        "decode_peak_rss_mb": round(decode_peak, 1),
        "machine": {"cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), "processor": _cpu_model()},
        "wall_s": round(time.time() - started, 1),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
