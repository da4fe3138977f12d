"""The `charmt` command. The only place where errors become one line on stderr and an exit code."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import traceback
from dataclasses import fields, replace
from pathlib import Path

from .config import (
    ARCHS,
    PRECISIONS,
    PRESETS,
    UNITS,
    ModelConfig,
    SelectionConfig,
    TrainConfig,
    preset_configs,
    updated,
)
from .errors import CharmtError, ConfigError, explain_machine_error

log = logging.getLogger("charmt")


def _no_limit(value: str) -> int:
    """Integer option where 0 means "no limit" (stored as None)."""
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 (no limit) or positive")
    return number


def _add_length_penalty(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length-penalty", type=float, default=1.0, metavar="ALPHA",
                   help="beam scores are log-probabilities / length**ALPHA (default: 1; Argos Translate's: 0.2)")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda (default: auto)")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """Options that override the preset; their help shows the `seed` preset's values from the dataclasses."""
    m, t, s = ModelConfig(), TrainConfig(), SelectionConfig()
    g = p.add_argument_group("model (default: the preset's)")
    g.add_argument("--arch", choices=ARCHS,
                   help="model family: lstm (seed, tiny, base) or transformer (default preset: transformer)")
    g.add_argument("--hidden-size", type=int, help=f"LSTM size, or the Transformer's width (seed: {m.hidden_size})")
    g.add_argument("--encoder-hidden-size", type=int,
                   help="encoder LSTM size per direction, 0 for --hidden-size (seed: 0)")
    g.add_argument("--embedding-size", type=int, help="0 for one-hot inputs as in the example (seed: 0)")
    g.add_argument("--layers", type=int, help=f"LSTM layers; a Transformer's encoder and decoder layers each "
                                              f"(seed: {m.num_layers})")
    g.add_argument("--heads", type=int, help=f"Transformer attention heads ({m.heads})")
    g.add_argument("--ff-size", type=int, help="Transformer feed-forward width, 0: 4 x --hidden-size")
    g.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None,
                   help="bidirectional encoder (seed: no)")
    g.add_argument("--attention", choices=["none", "luong"], help=f"decoder attention (seed: {m.attention})")
    g.add_argument("--dropout", type=float, help=f"dropout (seed: {m.dropout})")
    g = p.add_argument_group("training (default: the preset's)")
    g.add_argument("--epochs", type=int, help=f"epochs (seed: {t.epochs})")
    g.add_argument("--batch-size", type=int, help=f"pairs per batch (seed: {t.batch_size})")
    g.add_argument("--optimizer", choices=["rmsprop", "adam", "adamw"], help=f"(seed: {t.optimizer})")
    g.add_argument("--learning-rate", "--lr", type=float, help=f"(seed: {t.learning_rate})")
    g.add_argument("--lr-schedule", choices=["constant", "plateau", "cosine"], help=f"(seed: {t.lr_schedule})")
    g.add_argument("--warmup-steps", type=int, help=f"linear learning-rate warm-up (seed: {t.warmup_steps})")
    g.add_argument("--clip-grad-norm", type=float, help="gradient clipping, 0 for none (seed: 0)")
    g.add_argument("--patience", type=int, help="early stopping after N epochs without better chrF, 0: off")
    g.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="stop cleanly after this many minutes, keeping the best checkpoint")
    g.add_argument("--checkpoint-minutes", type=float, metavar="MINUTES",
                   help=f"also save a resumable checkpoint this often within an epoch (seed: {t.checkpoint_minutes})")
    g.add_argument("--seed", type=int, help=f"random seed of initialisation and batch order (seed: {t.seed})")
    g.add_argument("--threads", type=int, help="torch CPU threads (default: PyTorch's choice)")
    g.add_argument("--precision", choices=PRECISIONS,
                   help="bf16 autocast or float32; auto: bf16 where the CPU/GPU computes it natively (default: auto)")
    g.add_argument("--short-repeats", type=int,
                   help=f"show pairs with sources of at most --short-source-length characters this many times per "
                        f"epoch (seed: {t.short_repeats}; base: 2)")
    g.add_argument("--short-source-length", type=int, help=f"(default: {t.short_source_length})")
    g.add_argument("--label-smoothing", type=float,
                   help=f"probability spread over the vocabulary in the training loss (seed: {t.label_smoothing})")
    g.add_argument("--eval-sentences", type=int, help=f"validation sentences decoded per epoch ({t.eval_sentences})")
    g = p.add_argument_group("data selection (default: the preset's; seed = the example's)")
    g.add_argument("--shuffle-seed", type=int, help=f"seed of the line shuffle (seed: {s.seed})")
    g.add_argument("--max-input-length", type=_no_limit,
                   help=f"skip sources longer than this, 0 for no limit (seed: {s.max_input_length})")
    g.add_argument("--max-target-length", type=_no_limit, help="skip targets longer than this, 0 for no limit")
    g.add_argument("--dedupe", action=argparse.BooleanOptionalAction, default=None,
                   help="skip sources whose punctuation-stripped form was seen (seed: yes)")
    g.add_argument("--num-samples", type=_no_limit, help=f"keep this many pairs, 0 for all (seed: {s.num_samples})")
    g.add_argument("--validation-fraction", type=float, help=f"(seed: {s.validation_fraction})")
    g.add_argument("--test-fraction", type=float, help=f"held out for `evaluate` (seed: {s.test_fraction})")
    g.add_argument("--reverse", action="store_true", default=None,
                   help="translate from the second column into the first (e.g. French to English)")
    g.add_argument("--canonical-spaces", action=argparse.BooleanOptionalAction, default=None,
                   help="write typographic spaces (no-break, narrow no-break, thin) as plain spaces (tiny, base: yes; "
                        "seed: no, as the example)")
    g.add_argument("--units", choices=UNITS,
                   help="char: characters (seed, tiny, base); subword: SentencePiece pieces for both languages, "
                        "trained on the training split (default: the preset's)")
    g.add_argument("--vocab-size", type=int, help=f"subword pieces with --units subword ({s.vocab_size})")
    g.add_argument("--min-char-count", type=int,
                   help=f"characters seen fewer times become <unk> (default: {s.min_char_count}, every one kept)")
    g.add_argument("--source-lang", metavar="CODE",
                   help="ISO 639 code of the source language (default: from the file name, e.g. fra.txt: en)")
    g.add_argument("--target-lang", metavar="CODE",
                   help="ISO 639 code of the target language (default: from the file name, e.g. fra.txt: fr)")


# Config fields whose command-line option is not "--" + the field's name with dashes.
_RENAMED_OPTIONS = {"ModelConfig.num_layers": "--layers", "TrainConfig.time_budget_minutes": "--time-budget",
                    "SelectionConfig.seed": "--shuffle-seed"}


def _option_name(config, field_name: str) -> str:
    """The command-line option that sets `field_name` of `config` (argparse's dest is it without the dashes)."""
    return _RENAMED_OPTIONS.get(f"{type(config).__name__}.{field_name}", "--" + field_name.replace("_", "-"))


def _configs_from_args(args) -> tuple[ModelConfig, TrainConfig, SelectionConfig]:
    """The preset's configs with the options given on the command line applied."""
    given = vars(args)

    def options(config) -> dict:
        return {f.name: given.get(_option_name(config, f.name)[2:].replace("-", "_")) for f in fields(config)}

    model, training, selection = preset_configs(args.preset)
    model = updated(model, **options(model))
    training = updated(training, **options(training))
    chosen = options(selection)
    no_limit = {name: None for name in ("max_input_length", "max_target_length", "num_samples") if chosen[name] == 0}
    selection = updated(selection, **{k: v for k, v in chosen.items() if k not in no_limit})
    return model, training, replace(selection, **no_limit)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- commands ---------------------------------------------------------------------------------------------


def _options_changed(preset_name: str, configs: tuple) -> list[str]:
    """The command-line options behind `configs` (from _configs_from_args) that change the preset's
    configuration (device and threads do not)."""
    changed = []
    for given, preset in zip(configs, preset_configs(preset_name)):
        for f in fields(preset):
            if f.name not in ("device", "threads") and getattr(given, f.name) != getattr(preset, f.name):
                changed.append(_option_name(preset, f.name))
    return changed


def cmd_train(args) -> int:
    from .progress import TrainingProgress
    from .training import train

    if args.preset is None:  # --arch transformer alone means the Transformer's preset
        args.preset = "transformer" if args.arch == "transformer" else "seed"
    model, training, selection = _configs_from_args(args)
    changed = _options_changed(args.preset, (model, training, selection)) if args.resume else []
    if changed:
        raise ConfigError(f"--resume continues with the configuration stored in the model directory; drop "
                          f"{', '.join(changed)} (or start anew with --overwrite)")
    out = args.out or f"models/{Path(args.data).stem}-{args.preset}"
    result = train(args.data, out, model_config=model, train_config=training, selection=selection,
                   preset=args.preset, resume=args.resume, overwrite=args.overwrite,
                   callback=TrainingProgress(quiet=args.quiet, file=sys.stderr))
    if result.stopped_because.startswith("already finished"):
        reason = result.stopped_because.removeprefix("already finished (").removesuffix(")")
        print(f"{out} finished at epoch {result.epochs_run} ({reason}); nothing to resume — train with "
              "--overwrite to start anew", file=sys.stderr)
    return 0


def _read_inputs(texts: list[str]) -> list[str]:
    if texts:
        return texts
    data = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    if data.startswith("\ufeff"):
        data = data[1:]
    lines = data.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start another
    return [line.rstrip("\r") for line in lines]


def cmd_translate(args) -> int:
    from .decode import Translator

    translator = Translator.load(args.model, device=args.device)
    inputs = _read_inputs(args.text)
    if args.n_best > 1:
        results = translator.translate_n_best(inputs, beam=max(args.beam, args.n_best), n_best=args.n_best,
                                              batch_size=args.batch_size, split=not args.no_split,
                                              length_penalty=args.length_penalty)
        for i, hyps in enumerate(results):
            for hyp in hyps:
                print(f"{i}\t{hyp.score:.4f}\t{hyp.text}")
            if not hyps:
                print(f"{i}\t\t")
    else:
        for line in translator.translate(inputs, beam=args.beam, batch_size=args.batch_size, split=not args.no_split,
                                         length_penalty=args.length_penalty):
            print(line)
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_file

    report = evaluate_file(args.model, args.data, split=args.split, beam=args.beam, device=args.device,
                           max_sentences=args.max_sentences, length_penalty=args.length_penalty)
    if args.output:
        try:
            Path(args.output).write_text("".join(h + "\n" for h in report.hypotheses), encoding="utf-8")
        except OSError as err:
            raise CharmtError(f"cannot write {args.output}: {err.strerror or err}") from None
    if args.plot:
        from .plots import plot_length_breakdown

        title = f"{Path(args.model).name} on {Path(args.data).name} ({report.split}, beam {args.beam})"
        plot_length_breakdown(report.by_length, args.plot, title)
    if args.json:
        print(json.dumps(report.summary(), indent=2))
        return 0
    from .languages import name_of

    print(f"model: {name_of(report.source_lang)} -> {name_of(report.target_lang)} "
          f"({report.source_lang or '?'} -> {report.target_lang or '?'})")
    print(f"pairs: {report.pairs} ({report.split}); sentences: {report.sentences}; "
          f"references per sentence: {report.references_per_sentence:.2f}")
    print(f"chrF: {report.chrf:.2f} (first reference only: {report.single_reference['chrf']:.2f})")
    print(f"BLEU: {report.bleu:.2f} (first reference only: {report.single_reference['bleu']:.2f}; tokenizer "
          f"{report.bleu_tokenizer}{'; ' + report.bleu_note if report.bleu_note else ''})")
    human = report.human_baseline
    if human:
        print(f"human baseline, {human['sentences']} sentences with 2+ references, each scored against the others: "
              f"a person chrF {human['human_chrf']:.2f} / BLEU {human['human_bleu']:.2f}, the model chrF "
              f"{human['model_chrf']:.2f} / BLEU {human['model_bleu']:.2f} ({100 * human['chrf_ratio']:.0f}% of "
              "the person's chrF)")
    else:
        print("human baseline: no sentence has two references")
    print(f"exact match: {100 * report.exact_match:.1f}%")
    print(f"output length / reference length: {report.length_ratio:.2f}")
    if report.masked_accuracy is None:
        print("masked character accuracy (teacher forcing): unavailable for an export (evaluate the model "
              "directory for it)")
    else:
        print(f"masked character accuracy (teacher forcing): {report.masked_accuracy:.4f}")
    print(f"{'source length':>14} {'sentences':>9} {'chrF':>6} {'BLEU':>6} {'exact':>6}")
    for row in report.by_length:
        print(f"{row['lengths']:>14} {row['sentences']:>9} {row['chrf']:>6.1f} {row['bleu']:>6.1f} "
              f"{100 * row['exact_match']:>5.1f}%")
    return 0


def cmd_inspect(args) -> int:
    from . import checkpoint as ckpt
    from .explain import encoding_table

    if ckpt.is_model_dir(args.model_or_data):
        info = ckpt.load_info(args.model_or_data)
        source_vocab, target_vocab = info.source_vocab, info.target_vocab
    else:  # a pair file: build the vocabularies the example's way
        from .data import read_corpus, select
        from .vocab import Vocab

        pairs = select(read_corpus(args.model_or_data), SelectionConfig()).all_pairs
        source_vocab, target_vocab = Vocab.build(p.source for p in pairs), Vocab.build(p.target for p in pairs)
    print(encoding_table(args.source, args.target, source_vocab, target_vocab))
    return 0


def cmd_demo(args) -> int:
    from .data import demo_corpus, read_corpus
    from .decode import Translator
    from .evaluate import pick_pairs
    from .progress import TrainingProgress
    from .training import train

    path = demo_corpus()
    model, training, selection = preset_configs("tiny")
    training = updated(training, epochs=args.epochs, device=args.device, time_budget_minutes=args.time_budget)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "demo-model"
        _say(f"Training the tiny preset on the built-in corpus ({path.name}, written for charmt)")
        result = train(path, out, model_config=model, train_config=training, selection=selection, preset="tiny",
                       overwrite=args.overwrite, callback=TrainingProgress(quiet=args.quiet, file=sys.stderr))
        _, held_out = pick_pairs(read_corpus(path), out, "validation")
        held_out = held_out[: args.show]
        outputs = Translator.load(out, device=args.device).translate([p.source for p in held_out])
        print(f"Validation sentences (never trained on), best epoch {result.best_epoch}, "
              f"chrF {result.best_chrf:.1f}:")
        for pair, output in zip(held_out, outputs):
            mark = "=" if output == pair.target else "~"
            print(f"  {pair.source:<32} -> {output}   {mark} {pair.target}")
    return 0


def cmd_attention(args) -> int:
    from .decode import ATTENTION_SHOWN, Translator, attention_weights
    from .plots import plot_attention

    translator = Translator.load(args.model, device=args.device)
    source, output, weights = attention_weights(translator, args.sentence)
    print("".join(output))
    print(plot_attention(source, output, weights, args.png, title=ATTENTION_SHOWN[translator.info.model.arch]),
          file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    import warnings

    from . import export

    if sum(x is not None for x in (args.onnx, args.ctranslate2, args.argos)) != 1:
        raise ConfigError("name one export: --onnx DIR, --ctranslate2 DIR or --argos FILE.argosmodel")
    if args.int8 and args.onnx is None:
        raise ConfigError("--int8 is for --onnx; CTranslate2 exports take --quantization int8")
    if args.quantization is not None and args.onnx is not None:
        raise ConfigError("--quantization is for --ctranslate2 and --argos; ONNX exports take --int8")
    if args.onnx is not None:
        with warnings.catch_warnings():  # the TorchScript exporter's notes (deprecation, shape inference), not ours
            warnings.simplefilter("ignore")
            out = export.export_onnx(args.model, args.onnx, int8=args.int8, overwrite=args.overwrite)
        _say(f"Exported {args.model} to {out} ({'int8' if args.int8 else 'float32'} ONNX); translate with: charmt "
             f"translate {out} \"...\" (needs only onnxruntime: pip install 'charmt[onnx]')")
    elif args.ctranslate2 is not None:
        out = export.export_ctranslate2(args.model, args.ctranslate2, quantization=args.quantization or "float32",
                                        overwrite=args.overwrite)
        _say(f"Exported {args.model} to {out} (CTranslate2, {args.quantization or 'float32'}); translate with: "
             f"charmt translate {out} \"...\" (needs only ctranslate2: pip install 'charmt[ct2]')")
    else:
        from .argos import export_argos

        out = export_argos(args.model, args.argos, quantization=args.quantization or "int8", overwrite=args.overwrite)
        _say(f"Wrote the Argos Translate package {out}; install it with argostranslate (python -c \"import "
             f"argostranslate.package as p; p.install_from_path('{out}')\"), and LibreTranslate serves it")
    return 0


def cmd_split(args) -> int:
    from .data import hold_out, read_corpus, write_pairs

    corpus = read_corpus(args.data, reverse=args.reverse)
    train, test = hold_out(corpus, args.test_sentences, seed=args.seed)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create {out} ({err.strerror}); choose another --out") from None
    # Named after the data file (fra.txt -> fra.train.txt), so that training on a part still knows its languages.
    stem = Path(args.data).name.split(".")[0]
    paths = out / f"{stem}.train.txt", out / f"{stem}.test.txt"
    for path, pairs in zip(paths, (train, test)):
        write_pairs(path, pairs, reverse=args.reverse)
    column = "second-column" if args.reverse else "source"
    print(f"{paths[0]}: {len(train)} pairs; {paths[1]}: {len(test)} pairs ({args.test_sentences} {column} sentences, "
          "every translation of each)")
    return 0


def cmd_download(args) -> int:
    from .downloads import download

    print(download(args.lang, url=args.url, directory=args.dir, force=args.force))
    return 0


def cmd_serve(args) -> int:
    from .server import Limits, create_app, load_models, serve

    limits = Limits(max_texts=args.max_texts, max_chars=args.max_chars, max_pieces=args.max_pieces,
                    max_queue=args.max_queue, timeout_s=args.timeout, beam=args.beam,
                    length_penalty=args.length_penalty)  # checked before loading
    api_keys = None
    if args.api_keys:
        from .server.keys import ApiKeys

        api_keys = ApiKeys.read(args.api_keys)
    models = load_models(args.models, device=args.device)
    app = create_app(models, limits=limits, api_keys=api_keys)

    def ready(url: str) -> None:
        served = ", ".join(f"{m.name} ({m.source}->{m.target}, {m.translator.device})" for m in models)
        _say(f"Serving {served} on {url} - the web page is there, the API docs at {url}/docs; Ctrl+C stops")

    try:
        serve(app, args.host, args.port, log_level="warning" if args.quiet else "info", on_ready=ready)
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it handled; stopping is the normal end here
        pass
    _say("Stopped")
    return 0


def _escaped(value: str) -> str:
    """A command-line string with its escapes (\\t, \\n, \\\\, \\uXXXX) decoded."""
    try:
        return value.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as err:
        raise argparse.ArgumentTypeError(f"bad escape sequence ({err.reason})") from None


def cmd_import_keras(args) -> int:
    from .keras_import import import_keras

    selection = replace(SelectionConfig(), seed=args.shuffle_seed, max_input_length=args.max_input_length or None,
                        num_samples=args.num_samples or None, dedupe=not args.no_dedupe)
    info = import_keras(args.keras_model, args.out, data=args.data, source_chars=args.source_chars,
                        target_chars=args.target_chars, selection=selection, source_length=args.source_length,
                        max_decode_length=args.max_decode_length, overwrite=args.overwrite)
    _say(f"Imported {args.keras_model} (latent {info.model.hidden_size}; the example's "
         f"{len(info.source_vocab.chars)} input and {len(info.target_vocab.chars) + 2} output characters) "
         f"into {args.out}")
    return 0


def cmd_plot(args) -> int:
    from .checkpoint import LOG_FILE
    from .plots import plot_training

    model = Path(args.model)
    log_path = model if model.is_file() else model / LOG_FILE
    print(plot_training(log_path, args.out or log_path.with_name("training.png")))
    return 0


def _args_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="pair file: English<TAB>Other[<TAB>attribution] per line, or the downloaded .zip")
    p.add_argument("--preset", choices=list(PRESETS),
                   help="seed: the Keras example; tiny: small and fast; base: the LSTM quality preset; transformer: "
                        "the Transformer's (default: seed, or transformer with --arch transformer)")
    p.add_argument("--out", help="model directory to write (default: models/DATA-PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted training in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    _add_device(p)
    _add_train_options(p)


def _args_translate(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory, or an ONNX or CTranslate2 export of one (charmt export)")
    p.add_argument("text", nargs="*", help="sentences (default: read stdin, one per line)")
    p.add_argument("--beam", type=int, default=1, help="beam size, 1 for greedy (default: 1)")
    _add_length_penalty(p)
    p.add_argument("--n-best", type=int, default=1, help="print the K best hypotheses with their scores")
    p.add_argument("--batch-size", type=int, default=128, help="sentences per batch (default: 128)")
    p.add_argument("--no-split", action="store_true", help="do not split paragraphs into sentences")
    _add_device(p)


def _args_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory, or an ONNX or CTranslate2 export of one (charmt export)")
    p.add_argument("data", help="pair file; the model's own training file evaluates on its recorded test split")
    p.add_argument("--split", default="auto", choices=["auto", "test", "validation", "all"],
                   help="auto: the recorded test (or validation) split of the training file, else all pairs")
    p.add_argument("--beam", type=int, default=1, help="beam size (default: 1, greedy)")
    _add_length_penalty(p)
    p.add_argument("--max-sentences", type=int, help="evaluate on the first N distinct sources only")
    p.add_argument("--output", help="write the hypotheses here, one per line")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw chrF and BLEU by source length into this PNG")
    _add_device(p)


def _args_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_or_data", help="model directory, or a pair file (vocabulary built the example's way)")
    p.add_argument("source", help="source sentence")
    p.add_argument("target", nargs="?", help="target sentence")


def _args_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the tiny preset's)")
    p.add_argument("--time-budget", type=float, default=1.5, metavar="MINUTES", help="(default: 1.5)")
    p.add_argument("--out", help="keep the model in this directory")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    p.add_argument("--show", type=int, default=10, help="held-out sentences to translate (default: 10)")
    _add_device(p)


def _args_attention(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory (trained with --attention luong)")
    p.add_argument("sentence", help="sentence to translate")
    p.add_argument("--png", required=True, help="where to write the heatmap")
    _add_device(p)


def _args_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory")
    p.add_argument("--onnx", metavar="DIR", help="write encoder.onnx, decoder_step.onnx and config.json here")
    p.add_argument("--int8", action="store_true", help="with --onnx: int8 weights (onnxruntime's dynamic "
                   "quantization)")
    p.add_argument("--ctranslate2", metavar="DIR", help="write a CTranslate2 model folder here (Transformer models)")
    p.add_argument("--argos", metavar="FILE.argosmodel",
                   help="write an Argos Translate package (a CTranslate2 model) that LibreTranslate serves")
    p.add_argument("--quantization", choices=["float32", "int8", "int8_float32"],
                   help="CTranslate2 weights (default: float32 for --ctranslate2, int8 for --argos)")
    p.add_argument("--overwrite", action="store_true", help="replace what DIR or FILE holds")


def _args_split(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="pair file (.txt or .zip)")
    p.add_argument("--test-sentences", type=int, default=2000, help="distinct sources to hold out (default: 2000)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the choice (default: 1)")
    p.add_argument("--out", required=True, help="directory for NAME.train.txt and NAME.test.txt (NAME: the data's)")
    p.add_argument("--reverse", action="store_true",
                   help="hold out sentences of the second column (a test set for a --reverse model, e.g. French to "
                        "English, multi-reference in English)")


def _args_download(p: argparse.ArgumentParser) -> None:
    p.add_argument("lang", help="language code as on manythings.org/anki: fra, deu, spa, ...")
    p.add_argument("--dir", help="directory to save into (default: ~/.cache/charmt or $CHARMT_CACHE)")
    p.add_argument("--url", help="download from this address instead")
    p.add_argument("--force", action="store_true", help="download again even when cached")


def _args_import_keras(p: argparse.ArgumentParser) -> None:
    s = SelectionConfig()
    p.add_argument("keras_model", help="the .keras file the example's model.save() wrote (Keras 3)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    g = p.add_argument_group("character tables (the example did not save them: rebuild them, or give them)")
    g.add_argument("--data", help="the pair file the notebook trained on; its tables are rebuilt the example's way")
    g.add_argument("--source-chars", type=_escaped, help="every input character once (escapes like \\t allowed)")
    g.add_argument("--target-chars", type=_escaped, help="every output character once, with \\t and \\n")
    g.add_argument("--source-length", type=int, help="the example's max_encoder_seq_length (default: from --data, "
                   "else --max-input-length)")
    g.add_argument("--max-decode-length", type=int,
                   help="the example's max_decoder_seq_length (default: from --data; needed with --source-chars)")
    g = p.add_argument_group("the notebook's data selection (with --data; default: the example's)")
    g.add_argument("--max-input-length", type=_no_limit, default=s.max_input_length,
                   help=f"0 for no limit (default: {s.max_input_length})")
    g.add_argument("--num-samples", type=_no_limit, default=s.num_samples, help=f"(default: {s.num_samples})")
    g.add_argument("--shuffle-seed", type=int, default=s.seed, help=f"(default: {s.seed})")
    g.add_argument("--no-dedupe", action="store_true", help="the notebook did not skip duplicate sources")


def _args_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory (or its log.jsonl)")
    p.add_argument("--out", help="PNG file to write (default: MODEL/training.png)")


def _args_serve(p: argparse.ArgumentParser) -> None:
    from .config import (
        DEFAULT_MAX_CHARS,
        DEFAULT_MAX_PIECES,
        DEFAULT_MAX_QUEUE,
        DEFAULT_MAX_TEXTS,
        DEFAULT_TIMEOUT_S,
        MAX_BEAM,
    )

    p.add_argument("models", nargs="+", metavar="MODEL_DIR",
                   help="model directories, one per language pair, or a directory of them; DIR=SRC:TGT gives the "
                        "languages of a model whose config.json does not name them")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; elsewhere, give --api-keys)")
    p.add_argument("--port", type=int, default=8000, help="port, 0 for any free one (default: 8000)")
    p.add_argument("--api-keys", metavar="FILE",
                   help="accept only requests with one of these keys: one a line, KEY [REQUESTS_PER_MINUTE "
                        "[CHARACTERS_PER_REQUEST]] (default: no key needed)")
    p.add_argument("--beam", type=int, default=1,
                   help=f"beam size of LibreTranslate's /translate, 1 to {MAX_BEAM} (default: 1, greedy)")
    _add_length_penalty(p)
    g = p.add_argument_group("limits (GET /health shows them)")
    g.add_argument("--max-texts", type=int, default=DEFAULT_MAX_TEXTS,
                   help=f"texts per request (default: {DEFAULT_MAX_TEXTS})")
    g.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS,
                   help=f"characters per text (default: {DEFAULT_MAX_CHARS})")
    g.add_argument("--max-pieces", type=int, default=DEFAULT_MAX_PIECES,
                   help=f"lines and sentences per request, what the model translates (default: {DEFAULT_MAX_PIECES})")
    g.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                   help=f"requests waiting or being translated, per model; more are answered 503 "
                        f"(default: {DEFAULT_MAX_QUEUE})")
    g.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"seconds a request may wait and be translated; later it is answered 504 (default: "
                        f"{DEFAULT_TIMEOUT_S:g})")
    _add_device(p)


# name, help, arguments, command: the table of contents of the command line.
COMMANDS = [
    ("train", "train a model on an Anki/Tatoeba pair file (.txt or .zip)", _args_train, cmd_train),
    ("translate", "translate sentences given as arguments or one per line on stdin", _args_translate, cmd_translate),
    ("evaluate", "chrF, BLEU, exact match and masked accuracy on held-out pairs", _args_evaluate, cmd_evaluate),
    ("inspect", "show the one-hot encodings of a pair (the example's exercise)", _args_inspect, cmd_inspect),
    ("demo", "train the tiny preset on the built-in corpus and show translations", _args_demo, cmd_demo),
    ("attention", "translate one sentence and draw its attention heatmap as PNG", _args_attention, cmd_attention),
    ("export", "write a model for other runtimes: ONNX (onnxruntime), CTranslate2, an Argos Translate package",
     _args_export,
     cmd_export),
    ("split", "hold out a multi-reference test set by source sentence (NAME.train.txt, NAME.test.txt)", _args_split,
     cmd_split),
    ("download", "download a manythings.org pair zip (e.g. fra) into the cache", _args_download, cmd_download),
    ("import-keras", "convert the Keras example's saved s2s_model.keras into a model directory", _args_import_keras,
     cmd_import_keras),
    ("plot", "draw a model's training curves (loss, accuracy, chrF) into a PNG", _args_plot, cmd_plot),
    ("serve", "LibreTranslate-compatible HTTP API, charmt's own API and a web page for several models", _args_serve,
     cmd_serve),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="charmt", description="Sequence-to-sequence translation: character-level "
                                     "LSTMs and Transformers.")
    parser.add_argument("--version", action="version", version=f"charmt {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="print debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of any error (also: environment variable CHARMT_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add_arguments, command in COMMANDS:
        p = sub.add_parser(name, help=help_text)
        add_arguments(p)
        p.set_defaults(func=command)
    return parser


def _configure_process() -> None:
    """Settings that belong to the process, which the command line owns (the library never sets them)."""
    if "torch" not in sys.modules:  # read when PyTorch first uses oneDNN: too late once it is imported
        # oneDNN keeps one compiled kernel per input shape, 1,024 by default; with length-bucketed batches nearly
        # every batch has a new shape, and those kernels grew a `base` training process past 3 GB. 64 keeps it
        # near 1.5 GB at the same speed (benchmarks/RESULTS.md). A value the user set is kept.
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")


@contextlib.contextmanager
def _messages_to_stderr(level: int):
    """The `charmt` logger's messages on stderr while a command runs; the logger is as it was afterwards (the
    library itself never configures logging, and the root logger is the host program's)."""
    logger = logging.getLogger("charmt")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("charmt: %(levelname)s: %(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # printed here once, not again by a root handler
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def main(argv: list[str] | None = None) -> int:
    _configure_process()
    parser = build_parser()
    # Sentences may follow options (`translate M --beam 5 "Hi."`): argparse leaves them over as extras.
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "text") or any(x.startswith("-") for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.text += extra
    debug = args.debug or os.environ.get("CHARMT_DEBUG", "") not in ("", "0")
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    with _messages_to_stderr(level):
        try:
            return args.func(args)
        except KeyboardInterrupt:
            print("charmt: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            return 0
        except Exception as err:
            if debug:
                raise
            if isinstance(err, ModuleNotFoundError) and err.name == "torch":  # an install for ONNX exports only
                print(f"charmt: error: charmt {args.command} needs PyTorch, which is not installed: pip install torch "
                      "(the README names the CPU and CUDA builds)", file=sys.stderr)
                return 1
            explained = err if isinstance(err, CharmtError) else explain_machine_error(err)
            if explained is not None:
                print(f"charmt: error: {explained}", file=sys.stderr)
                return 1
            traceback.print_exc()
            print(f"charmt: internal error ({type(err).__name__}): this is a bug in charmt {_version()}; please "
                  "report it with the traceback above (CHARMT_DEBUG=1 or --debug shows it for every error)",
                  file=sys.stderr)
            return 1


def _version() -> str:
    from . import __version__

    return __version__
