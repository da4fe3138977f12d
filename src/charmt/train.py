"""Training: teacher forcing over length-bucketed batches, validation with chrF, checkpoints, resume.

Each epoch's batch order comes from a generator seeded by (seed, epoch), and the checkpoint stores the optimizer,
the global RNG and the position in the epoch, so a resumed CPU run ends with the same weights as one that was
never interrupted. Under torchrun, each process trains on its own share of every epoch's batches (DDP).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save as save_safetensors_bytes

from . import checkpoint as ckpt
from .batching import EncodedPairs, collate, encode_pairs, epoch_items, make_batches
from .config import ModelConfig, SelectionConfig, TrainConfig, preset_configs
from .data import Pair, read_corpus, references_by_source, select
from .decode import Translator
from .errors import ConfigError, DataError, ModelFormatError
from .evaluate import teacher_forced_metrics
from .languages import languages_of_file
from .metrics import collapse_warning, masked_accuracy, score_translations
from .model import Seq2Seq, resolve_device
from .vocab import PAD_ID, Vocab

log = logging.getLogger("charmt")

# --- training ---------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    out_dir: Path
    best_chrf: float
    best_epoch: int
    epochs_run: int
    stopped_because: str
    history: list[dict]


Callback = Callable[[str, dict], None]


def training_precision(precision: str, device: torch.device) -> str:
    """The precision `precision` means on `device`: "auto" is bf16 where the hardware computes it natively."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":  # emulated bf16 (plain AVX-512/AVX2) is slower than fp32
        native = [getattr(torch.cpu, name, lambda: False) for name in ("_is_avx512_bf16_supported",
                                                                       "_is_amx_tile_supported")]
        return "bf16" if any(check() for check in native) else "fp32"
    return "fp32"


def training_autocast(precision: str, device: torch.device):
    """What train() runs the forward pass in: bfloat16 autocast for "bf16" (from training_precision), else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def _make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "rmsprop":  # Keras's RMSprop defaults differ from PyTorch's
        return torch.optim.RMSprop(model.parameters(), lr=cfg.learning_rate, alpha=0.9, eps=1e-7,
                                   weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def _learning_rate(cfg: TrainConfig, step: int, progress: float, plateau_factor: float) -> float:
    """`progress` in [0, 1]: how much of the run is done (of its epochs, or of its time budget if that ends first)."""
    lr = cfg.learning_rate * plateau_factor
    if cfg.lr_schedule == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if cfg.warmup_steps and step < cfg.warmup_steps:
        lr *= (step + 1) / cfg.warmup_steps
    return lr


def _distributed() -> tuple[int, int]:
    """(rank, world size); starts the process group when run under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def model_languages(data_path: str | os.PathLike, selection: SelectionConfig) -> tuple[str | None, str | None]:
    """(source, target) language codes: as given in `selection`, else from the file name, swapped by `reverse`."""
    from_name = languages_of_file(data_path) or (None, None)
    if selection.reverse:
        from_name = from_name[::-1]
    return selection.source_lang or from_name[0], selection.target_lang or from_name[1]


def train(data_path: str | os.PathLike, out_dir: str | os.PathLike, *, model_config: ModelConfig | None = None,
          train_config: TrainConfig | None = None, selection: SelectionConfig | None = None,
          preset: str = "seed", resume: bool = False, overwrite: bool = False,
          callback: Callback | None = None) -> TrainResult:
    """Train a model on a pair file and write the model directory `out_dir`.

    Configs left as None come from `preset`. With `resume`, everything comes from `out_dir`'s checkpoint.
    `callback(event, info)` receives "selection", "start", "step", "epoch", "warning" and "end" events.
    """
    out_dir = Path(out_dir)
    notify = callback or (lambda event, info: None)
    rank, world = _distributed()
    if resume:
        if not (out_dir / ckpt.CHECKPOINT_FILE).exists():
            raise ConfigError(f"{out_dir} holds no resumable checkpoint ({ckpt.CHECKPOINT_FILE} is missing); "
                              "train again with --overwrite")
        info = ckpt.load_info(out_dir)
        model_config, preset = info.model, info.preset
        train_config = TrainConfig(**{**info.training, **({"device": train_config.device} if train_config else {})})
        selection = SelectionConfig(**info.selection)
    else:
        if ckpt.is_model_dir(out_dir) and not overwrite:
            raise ConfigError(f"{out_dir} already holds a model; pass --overwrite to replace it, or --resume")
        base_model, base_train, base_selection = preset_configs(preset)
        model_config = model_config or base_model
        train_config = train_config or base_train
        selection = selection or base_selection
    blocking = next((p for p in (out_dir, *out_dir.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:  # checked now, not when the first file is written after reading the data
        raise ConfigError(f"{out_dir} cannot be a model directory: {blocking} is a file; choose another --out")
    if train_config.threads:
        torch.set_num_threads(train_config.threads)
    device = resolve_device(train_config.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)

    # Read and select before touching out_dir: bad data never costs an existing model.
    corpus = read_corpus(data_path, reverse=selection.reverse)
    # Checked before selecting: another file could fail the selection with a misleading message.
    if resume and info.data.get("sha256") != corpus.sha256:
        raise ConfigError(f"{data_path} is not the file {out_dir} was trained on (its sha256 differs)")
    chosen = select(corpus, selection)
    if not chosen.train:  # e.g. a file of one pair, which the validation split takes
        raise DataError(f"{data_path}: none of its {len(chosen.all_pairs)} selected pairs is left for training "
                        "after the validation and test split; add pairs or lower --validation-fraction")
    summary = chosen.summary()
    if resume:
        source_vocab, target_vocab = info.source_vocab, info.target_vocab
    else:
        pairs = chosen.all_pairs
        source_vocab = Vocab.build(p.source for p in pairs)
        target_vocab = Vocab.build(p.target for p in pairs)
    model_config = replace(model_config, src_vocab_size=len(source_vocab), tgt_vocab_size=len(target_vocab))
    summary.update(source_vocab=len(source_vocab), target_vocab=len(target_vocab))
    if rank == 0:
        notify("selection", {"corpus": corpus.report(), **summary})

    torch.manual_seed(train_config.seed)
    model = Seq2Seq(model_config).to(device)
    source_lang, target_lang = model_languages(data_path, selection)
    info = ckpt.ModelInfo(
        model=model_config, source_vocab=source_vocab, target_vocab=target_vocab, preset=preset,
        source_lang=source_lang, target_lang=target_lang,
        max_source_length=max(len(p.source) for p in chosen.train),
        max_target_length=max(len(p.target) for p in chosen.train),
        selection=asdict(selection), training=asdict(train_config),
        data={"path": str(data_path), "sha256": corpus.sha256, **summary},
    )
    train_data = encode_pairs(chosen.train, source_vocab, target_vocab)
    valid_data = encode_pairs(chosen.validation, source_vocab, target_vocab)
    eval_pairs, eval_refs = references_by_source(chosen.validation)
    eval_pairs, eval_refs = eval_pairs[: train_config.eval_sentences], eval_refs[: train_config.eval_sentences]
    optimizer = _make_optimizer(model, train_config)

    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_chrf": -1.0, "best_epoch": 0,
             "stale_epochs": 0, "plateau_factor": 1.0, "elapsed": 0.0, "history": [],
             "epoch_loss_sum": 0.0, "epoch_correct": 0.0, "epoch_tokens": 0}
    items = epoch_items(train_data, train_config.short_repeats, train_config.short_source_length)
    steps_per_epoch = math.ceil(len(items) / train_config.batch_size) // world
    if steps_per_epoch == 0:  # a process without a batch would leave the others waiting in DDP's all-reduce
        raise ConfigError(f"{len(train_data)} training pairs make fewer batches of {train_config.batch_size} than "
                          f"the {world} processes; lower --batch-size or start fewer processes")
    if world > 1:  # every process has checked out_dir before rank 0 writes into it
        dist.barrier()
    if rank == 0 and out_dir.is_dir():
        _remove_stale_temporaries(out_dir)
    if resume:
        state = _load_train_state(out_dir, model, optimizer, state)
        log.info("resuming %s at epoch %d, step %d", out_dir, state["epoch"] + 1, state["step_in_epoch"])
    elif rank == 0:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # e.g. a parent is a file, or no permission
            raise ConfigError(f"cannot create the model directory {out_dir} ({err.strerror}); choose another --out") \
                from None
        for stale in (ckpt.WEIGHTS_FILE, ckpt.CHECKPOINT_FILE):
            (out_dir / stale).unlink(missing_ok=True)
        ckpt.write_json(out_dir / ckpt.CONFIG_FILE, info.to_json())
        ckpt.write_json(out_dir / ckpt.SPLIT_FILE, {
            "data": str(data_path), "sha256": corpus.sha256, "train": len(chosen.train),
            "validation": [p.line for p in chosen.validation], "test": [p.line for p in chosen.test],
        })
        _write_log(out_dir, [])

    trained_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    precision = training_precision(train_config.precision, device)
    total_steps = steps_per_epoch * train_config.epochs
    if rank == 0:
        notify("start", {"device": str(device), "precision": precision, "parameters": model.num_parameters(),
                         "world_size": world, "steps_per_epoch": steps_per_epoch, "epochs": train_config.epochs,
                         "start_epoch": state["epoch"] + 1})
    autocast = training_autocast(precision, device)
    budget = train_config.time_budget_minutes * 60
    stopped = "epochs"
    clock = time.monotonic() - state["elapsed"]
    time_used = state["elapsed"] / budget if budget else 0.0  # fraction of the budget, the same on every process
    last_checkpoint = time.monotonic()

    while state["epoch"] < train_config.epochs:
        epoch = state["epoch"]
        generator = torch.Generator().manual_seed(train_config.seed * 100_003 + epoch)
        batches = make_batches(train_data, train_config.batch_size, generator, train_config.bucket, items)
        batches = batches[: steps_per_epoch * world][rank::world]
        epoch_start, pairs_done = time.monotonic(), 0
        model.train()
        out_of_time = False
        first_step = state["step_in_epoch"]
        for step in range(first_step, len(batches)):
            progress = state["global_step"] / total_steps
            if budget:
                progress = max(progress, time_used)
            lr = _learning_rate(train_config, state["global_step"], progress, state["plateau_factor"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            src, lengths, tgt_in, tgt_out = collate(train_data, batches[step], device)
            with autocast:
                logits, loss = trained_model(src, lengths, tgt_in, tgt_out,
                                             label_smoothing=train_config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train_config.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.clip_grad_norm)
            optimizer.step()
            mask = tgt_out != PAD_ID
            tokens = int(mask.sum())
            state["epoch_loss_sum"] += float(loss.detach()) * tokens
            state["epoch_correct"] += masked_accuracy(logits.detach(), tgt_out, mask) * tokens
            state["epoch_tokens"] += tokens
            state["step_in_epoch"], state["global_step"] = step + 1, state["global_step"] + 1
            pairs_done += len(batches[step]) * world
            elapsed = time.monotonic() - epoch_start
            if rank == 0:
                notify("step", {"epoch": epoch + 1, "step": step + 1, "steps": len(batches),
                                "loss": state["epoch_loss_sum"] / state["epoch_tokens"],
                                "accuracy": state["epoch_correct"] / state["epoch_tokens"],
                                "pairs_per_s": pairs_done / max(elapsed, 1e-9), "lr": lr,
                                "steps_per_s": (step + 1 - first_step) / max(elapsed, 1e-9)})
            # Under DDP each process has its own clock: all use the slowest one, for the lr and to stop together.
            time_used = _max_over_ranks((time.monotonic() - clock) / budget if budget else 0.0, world, device)
            out_of_time = budget > 0 and time_used >= 1.0
            if out_of_time:
                break
            if rank == 0 and time.monotonic() - last_checkpoint >= train_config.checkpoint_minutes * 60:
                state["elapsed"] = time.monotonic() - clock
                _save_train_state(out_dir, model, optimizer, state)
                last_checkpoint = time.monotonic()

        # End of epoch (or of the time budget): validate, log, keep best and last.
        record = {"epoch": epoch + 1, "steps": state["global_step"],
                  "train_loss": state["epoch_loss_sum"] / max(state["epoch_tokens"], 1),
                  "train_accuracy": state["epoch_correct"] / max(state["epoch_tokens"], 1),
                  "lr": optimizer.param_groups[0]["lr"], "partial": out_of_time}
        stop = False
        if rank == 0:
            record.update(_validate(Translator(model, info, device), valid_data, eval_pairs, eval_refs, train_config,
                                    notify))
            record["seconds"] = round(time.monotonic() - clock, 1)
            chrf = record.get("val_chrf")  # without a validation set, the last epoch is the best
            if chrf is None or chrf > state["best_chrf"]:
                state.update(best_chrf=chrf if chrf is not None else -1.0, best_epoch=epoch + 1, stale_epochs=0)
                ckpt.save_model(out_dir, model, info)
            else:
                state["stale_epochs"] += 1
                if train_config.lr_schedule == "plateau":
                    state["plateau_factor"] *= 0.5
            record["best"] = state["best_epoch"] == epoch + 1
            state["history"].append(record)
            _write_log(out_dir, state["history"])
            notify("epoch", record)
            if train_config.patience and state["stale_epochs"] >= train_config.patience:
                stop, stopped = True, "early stopping"
        if world > 1:  # only rank 0 validates: all processes must apply its lr factor and stop with it
            shared = [{k: state[k] for k in _DECIDED_BY_RANK0}, stop, stopped]
            dist.broadcast_object_list(shared, src=0, device=device if device.type == "cuda" else None)
            state.update(shared[0])
            stop, stopped = shared[1], shared[2]
        state.update(epoch=epoch + 1, step_in_epoch=0, epoch_loss_sum=0.0, epoch_correct=0.0, epoch_tokens=0)
        if out_of_time:
            stop, stopped = True, "time budget"
        if rank == 0:
            state["elapsed"] = time.monotonic() - clock
            _save_train_state(out_dir, model, optimizer, state)
            last_checkpoint = time.monotonic()
        if stop:
            break

    if world > 1:
        dist.barrier()
    if os.environ.get("CHARMT_DEBUG_RANK_DUMP"):
        _dump_rank(Path(os.environ["CHARMT_DEBUG_RANK_DUMP"]), rank, model, optimizer, state)
    result = TrainResult(out_dir, state["best_chrf"], state["best_epoch"], state["epoch"], stopped, state["history"])
    if rank == 0:
        notify("end", asdict(result))
    return result


_DECIDED_BY_RANK0 = ("best_chrf", "best_epoch", "stale_epochs", "plateau_factor", "history")


def _max_over_ranks(value: float, world: int, device: torch.device) -> float:
    """The largest of the processes' values, on every process (so that they all take the same decisions)."""
    if world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)  # NCCL reduces CUDA tensors only
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def _dump_rank(directory: Path, rank: int, model: Seq2Seq, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Debug hook, set CHARMT_DEBUG_RANK_DUMP=DIR: each process writes DIR/rank{r}.txt with the sha256 of its
    final weights, its learning rate and step, so tests can check that DDP kept the processes' copies identical."""
    weights = save_safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"rank{rank}.txt").write_text(f"{hashlib.sha256(weights).hexdigest()} "
                                               f"lr={optimizer.param_groups[0]['lr']!r} step={state['global_step']}\n")


def _validate(translator: Translator, valid_data: EncodedPairs, eval_pairs: list[Pair], eval_refs: list[list[str]],
              cfg: TrainConfig, notify: Callback) -> dict:
    if not len(valid_data):
        return {}
    val_loss, val_acc = teacher_forced_metrics(translator.model, valid_data, translator.device)
    hyps = translator.translate([p.source for p in eval_pairs], batch_size=256, split=False, warn=False)
    scores = score_translations(hyps, eval_refs)
    samples = [{"source": p.source, "reference": refs[0], "output": h}
               for p, refs, h in list(zip(eval_pairs, eval_refs, hyps))[: cfg.show_samples]]
    warning = collapse_warning(hyps)
    if warning:
        notify("warning", {"message": warning})
    return {"val_loss": val_loss, "val_accuracy": val_acc, "val_chrf": scores.chrf, "val_bleu": scores.bleu,
            "val_exact_match": scores.exact_match, "samples": samples, "collapsed": bool(warning)}


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Remove the temporary files of atomic writes cut short by a kill -9 (which skips their cleanup)."""
    for name in (ckpt.CONFIG_FILE, ckpt.WEIGHTS_FILE, ckpt.CHECKPOINT_FILE, ckpt.LOG_FILE, ckpt.SPLIT_FILE):
        for stale in out_dir.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


def _write_log(out_dir: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in history)
    ckpt.atomic_write(out_dir / ckpt.LOG_FILE, text.encode("utf-8"))


def _save_train_state(out_dir: Path, model: Seq2Seq, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """One file, written atomically, so weights, optimizer, RNG and position can never disagree."""
    opt = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors["rng.torch"] = torch.get_rng_state()
    for pid, slots in opt["state"].items():
        for name, value in slots.items():
            tensors[f"optimizer.{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    metadata = {"state": json.dumps(state), "param_groups": json.dumps(opt["param_groups"])}
    ckpt.save_tensors(out_dir / ckpt.CHECKPOINT_FILE, tensors, metadata=metadata)


def _load_train_state(out_dir: Path, model: Seq2Seq, optimizer: torch.optim.Optimizer, defaults: dict) -> dict:
    path = out_dir / ckpt.CHECKPOINT_FILE
    tensors, metadata = ckpt.load_tensors(path, with_metadata=True)
    try:
        saved, param_groups = json.loads(metadata["state"]), json.loads(metadata["param_groups"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ModelFormatError(f"{path} holds no training state; it was not written by charmt train") from None
    ckpt.load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(path))
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": param_groups})
    torch.set_rng_state(tensors["rng.torch"])
    return {**defaults, **saved}
