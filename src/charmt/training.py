"""Training: teacher forcing over length-bucketed batches, validation with chrF, checkpoints, resume.

Each epoch's batch order comes from a generator seeded by (seed, epoch), and the checkpoint stores the optimizer,
the RNG and the position in the epoch, so a resumed CPU run ends with the same weights as one that was never
interrupted. Under torchrun, each process trains on its own share of every epoch's batches (DDP).

`train()` leaves the calling process as it found it: the global RNG state and the thread count are restored, a
process group it started is ended, and nothing is written into the output directory before the first
checkpoint, so a run that fails early never blocks its rerun.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save as save_safetensors_bytes

from . import checkpoint as ckpt
from .batching import EncodedPairs, collate, encode_pairs, epoch_items, make_batches
from .checkpoint import TrainState
from .config import ModelConfig, SelectionConfig, TrainConfig, preset_configs
from .data import Pair, Selection, length_quantile, read_corpus, references_by_source, select
from .decode import Translator
from .errors import ConfigError, DataError
from .evaluate import teacher_forced_metrics
from .languages import bleu_tokenizer, languages_of_file
from .metrics import collapse_warning, masked_accuracy, score_translations
from .model import build_model, resolve_device
from .vocab import PAD_ID, SubwordVocab, Vocab

log = logging.getLogger("charmt")

Callback = Callable[[str, dict], None]
# "Short" sources are the shortest 18% of the training sources: 20 characters in the English of every Tatoeba
# file measured (benchmarks/RESULTS.md), 7 in Chinese.
SHORT_SOURCE_SHARE = 0.18
# The output cap's ratio: 99.9% of the training pairs have a target at most this many times their source.
LENGTH_RATIO_QUANTILE = 0.999


@dataclass
class TrainResult:
    out_dir: Path
    best_chrf: float
    best_epoch: int
    epochs_run: int
    stopped_because: str
    history: list[dict] = field(repr=False)  # one record per epoch, as in log.jsonl


# --- precision --------------------------------------------------------------------------------------------


def cpu_runs_bf16_lstm() -> bool:
    """Whether PyTorch can run the bf16 LSTM on this CPU: oneDNN has bf16 kernels only with AVX-512 (natively
    with AVX512_BF16 or AMX, emulated on plain AVX-512). PyTorch's own tests check the same way."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware, not by emulation (which is slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        native = [getattr(torch.cpu, name, lambda: False) for name in ("_is_avx512_bf16_supported",
                                                                       "_is_amx_tile_supported")]
        return cpu_runs_bf16_lstm() and any(check() for check in native)
    return False


def training_precision(precision: str, device: torch.device) -> str:
    """The precision `precision` means on `device`: "auto" is bf16 where the hardware computes it natively.

    An explicit "bf16" that the device cannot run raises ConfigError (checked before anything is written).
    """
    if precision == "auto":
        return "bf16" if _native_bf16(device) else "fp32"
    if precision == "bf16":
        if device.type == "cpu" and not cpu_runs_bf16_lstm():
            raise ConfigError("--precision bf16: this CPU cannot run PyTorch's bf16 kernels (oneDNN has them "
                              "only on CPUs with AVX-512); use --precision fp32, or auto (bf16 only where the "
                              "hardware computes it natively)")
        if device.type == "cuda" and not _native_bf16(device):
            raise ConfigError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no native bf16 (only "
                              "emulated, slower than float32); use --precision fp32 or auto")
    return precision


def training_autocast(precision: str, device: torch.device):
    """What train() runs the forward pass in: bfloat16 autocast for "bf16" (from training_precision), else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


# --- pieces of a run --------------------------------------------------------------------------------------


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "rmsprop":  # Keras's RMSprop defaults differ from PyTorch's
        return torch.optim.RMSprop(model.parameters(), lr=cfg.learning_rate, alpha=0.9, eps=1e-7,
                                   weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def learning_rate(cfg: TrainConfig, step: int, progress: float, plateau_factor: float) -> float:
    """`progress` in [0, 1]: how much of the run is done (of its epochs, or of its time budget if that ends first)."""
    lr = cfg.learning_rate * plateau_factor
    if cfg.lr_schedule == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if cfg.warmup_steps and step < cfg.warmup_steps:
        lr *= (step + 1) / cfg.warmup_steps
    return lr


def model_languages(data_path: str | os.PathLike, selection: SelectionConfig) -> tuple[str | None, str | None]:
    """(source, target) language codes: as given in `selection`, else from the file name, swapped by `reverse`."""
    from_name = languages_of_file(data_path) or (None, None)
    if selection.reverse:
        from_name = from_name[::-1]
    return selection.source_lang or from_name[0], selection.target_lang or from_name[1]


@contextlib.contextmanager
def _caller_settings_kept(threads: int, device: torch.device) -> Iterator[None]:
    """Run with `threads` torch threads (0: as they are) and a forked RNG; the caller's come back afterwards."""
    previous_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        if threads:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous_threads)


@contextlib.contextmanager
def _process_group(device: torch.device) -> Iterator[tuple[int, int, torch.device]]:
    """(rank, world size, this process's device). Under torchrun, joins the process group with the backend that
    suits the device actually used (NCCL for CUDA, gloo otherwise) and ends it afterwards if it started it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield 0, 1, device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    started = not dist.is_initialized()
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        if started:
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        try:
            yield dist.get_rank(), world, device
        finally:
            if started:
                dist.destroy_process_group()


def hardware_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with the instruction sets that decide PyTorch's kernels."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name, flags = platform.processor() or platform.machine(), []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in present]
                break
    return f"{name} ({os.cpu_count()} cores{', ' + ', '.join(flags) if flags else ''})"


def _version() -> str:
    from . import __version__

    return __version__


def _max_over_ranks(value: float, world: int, device: torch.device) -> float:
    """The largest of the processes' values, on every process (so that they all take the same decisions)."""
    if world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)  # NCCL reduces CUDA tensors only
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


# --- train ------------------------------------------------------------------------------------------------


def train(data_path: str | os.PathLike, out_dir: str | os.PathLike, *, model_config: ModelConfig | None = None,
          train_config: TrainConfig | None = None, selection: SelectionConfig | None = None,
          preset: str = "seed", resume: bool = False, overwrite: bool = False,
          callback: Callback | None = None) -> TrainResult:
    """Train a model on a pair file and write the model directory `out_dir`.

    Configs left as None come from `preset`. With `resume`, everything comes from `out_dir`'s checkpoint.
    `callback(event, info)` receives "selection", "start", "step", "epoch", "warning" and "end" events.
    """
    out_dir = Path(out_dir)
    stored = _check_output_directory(out_dir, resume=resume, overwrite=overwrite)
    if stored is not None:
        model_config, preset = stored.model, stored.preset
        device_override = {"device": train_config.device} if train_config else {}
        train_config = TrainConfig(**{**stored.training, **device_override})
        selection = SelectionConfig(**stored.selection)
    else:
        base_model, base_train, base_selection = preset_configs(preset)
        model_config, train_config = model_config or base_model, train_config or base_train
        selection = selection or base_selection
    device = resolve_device(train_config.device)
    precision = training_precision(train_config.precision, device)
    notify = callback or (lambda event, info: None)
    with _caller_settings_kept(train_config.threads, device), _process_group(device) as (rank, world, device):
        prepared = prepare_run(data_path, out_dir, model_config, train_config, selection, preset, stored)
        if rank == 0:
            notify("selection", prepared.report)
        run = _Run(prepared, out_dir, train_config, stored, rank, world, device, precision, notify)
        return run.train()


def _check_output_directory(out_dir: Path, *, resume: bool, overwrite: bool) -> ckpt.ModelInfo | None:
    """Refuse an output directory that cannot take the model, before any work; with `resume`, its ModelInfo."""
    blocking = next((p for p in (out_dir, *out_dir.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"{out_dir} cannot be a model directory: {blocking} is a file; choose another --out")
    if resume:
        if not (out_dir / ckpt.CHECKPOINT_FILE).exists():
            raise ConfigError(f"{out_dir} holds no resumable checkpoint ({ckpt.CHECKPOINT_FILE} is missing); "
                              "train again with --overwrite")
        return ckpt.load_info(out_dir)
    if ckpt.holds_model(out_dir) and not overwrite:
        raise ConfigError(f"{out_dir} already holds a model; pass --overwrite to replace it, or --resume")
    existing = next(p for p in (out_dir, *out_dir.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create the model directory {out_dir} ({existing}: permission denied); "
                          "choose another --out")
    return None


# --- preparing: the data and the model's description ---------------------------------------------------


@dataclass
class Prepared:
    """What a run trains on, decided before any model exists or anything is written."""

    info: ckpt.ModelInfo  # config.json
    split: dict  # split.json: which lines of the file went to validation and test
    chosen: Selection
    short_length: int  # sources this short (in the model's units) are repeated `short_repeats` times an epoch
    report: dict  # the "selection" event


def prepare_run(data_path: str | os.PathLike, out_dir: Path, model_config: ModelConfig, train_config: TrainConfig,
                selection: SelectionConfig, preset: str, stored: ckpt.ModelInfo | None) -> Prepared:
    """Read and select the pairs, build (or, resuming, reuse) the vocabularies and describe the model."""
    # Read and select before touching out_dir: bad data never costs an existing model.
    corpus = read_corpus(data_path, reverse=selection.reverse)
    # Checked before selecting: another file could fail the selection with a misleading message.
    if stored is not None and stored.data.get("sha256") != corpus.sha256:
        raise ConfigError(f"{data_path} is not the file {out_dir} was trained on (its sha256 differs)")
    chosen = select(corpus, selection)
    if not chosen.train:  # e.g. a file of one pair, which the validation split takes
        raise DataError(f"{data_path}: none of its {len(chosen.all_pairs)} selected pairs is left for training "
                        "after the validation and test split; add pairs or lower --validation-fraction")
    if stored is not None:
        source_vocab, target_vocab = stored.source_vocab, stored.target_vocab
    else:
        source_vocab, target_vocab = build_vocabularies(chosen, selection)
    # Length rules follow this data, in the model's units: "short" sources, and the output cap (Chinese ->
    # English needs 4-7x).
    lengths = _unit_lengths(chosen.train, source_vocab, target_vocab)
    short_length = train_config.short_source_length or int(length_quantile([s for s, _ in lengths], SHORT_SOURCE_SHARE))
    length_ratio = round(length_quantile([t / max(s, 1) for s, t in lengths], LENGTH_RATIO_QUANTILE), 3)
    summary = {**chosen.summary(), "source_vocab": len(source_vocab), "target_vocab": len(target_vocab),
               "short_source_length": short_length}
    source_lang, target_lang = model_languages(data_path, selection)
    shared = source_vocab is target_vocab and model_config.arch == "transformer"
    info = ckpt.ModelInfo(
        model=replace(model_config, src_vocab_size=len(source_vocab), tgt_vocab_size=len(target_vocab),
                      share_embeddings=shared or model_config.share_embeddings),
        source_vocab=source_vocab, target_vocab=target_vocab, preset=preset,
        source_lang=source_lang, target_lang=target_lang,
        max_source_length=max(len(p.source) for p in chosen.train),
        max_target_length=max(len(p.target) for p in chosen.train), length_ratio=length_ratio,
        selection=asdict(selection), training=asdict(train_config),
        data={"path": str(data_path), "sha256": corpus.sha256, "licence": corpus.licence, **summary},
    )
    split = {"data": str(data_path), "sha256": corpus.sha256, "train": len(chosen.train),
             "validation": [p.line for p in chosen.validation], "test": [p.line for p in chosen.test]}
    return Prepared(info, split, chosen, short_length, {"corpus": corpus.report(), **summary})


def build_vocabularies(chosen: Selection, selection: SelectionConfig) -> tuple[Vocab | SubwordVocab,
                                                                              Vocab | SubwordVocab]:
    """The model's units: characters of each language (from every selected pair, as the Keras example), or one
    SentencePiece model for both, trained on the training pairs only (the held-out ones stay unseen)."""
    if selection.units == "subword":
        vocab = SubwordVocab.train((text for p in chosen.train for text in (p.source, p.target)), selection.vocab_size)
        return vocab, vocab
    return (Vocab.build((p.source for p in chosen.all_pairs), selection.min_char_count),
            Vocab.build((p.target for p in chosen.all_pairs), selection.min_char_count))


def _unit_lengths(pairs: list[Pair], source_vocab, target_vocab) -> list[tuple[int, int]]:
    """(source, target) lengths in the model's units: characters, or subword pieces."""
    if isinstance(source_vocab, Vocab) and isinstance(target_vocab, Vocab):
        return [(len(p.source), len(p.target)) for p in pairs]
    return [(len(source_vocab.encode(p.source)), len(target_vocab.encode(p.target))) for p in pairs]


# --- the run ----------------------------------------------------------------------------------------------


class _Run:
    """One training run on prepared data: the model and its restored state (`__init__`), then epochs of steps,
    each ending with validation, the end-of-epoch decision and a checkpoint. Only rank 0 writes, and nothing
    before its first checkpoint."""

    def __init__(self, prepared: Prepared, out_dir: Path, train_config: TrainConfig, stored: ckpt.ModelInfo | None,
                 rank: int, world: int, device: torch.device, precision: str, notify: Callback):
        self.out_dir, self.cfg, self.rank, self.world, self.device = out_dir, train_config, rank, world, device
        self.precision, self.notify = precision, notify
        self.info, chosen = prepared.info, prepared.chosen
        self.files = _ModelDirectory(out_dir, prepared.info, prepared.split, f"{hardware_name(device)} in {precision}",
                                     written=stored is not None)
        # The initial weights depend on the seed alone: the model is built first after seeding, as it always was.
        torch.manual_seed(train_config.seed)
        self.model = build_model(self.info.model).to(device)
        self.optimizer = make_optimizer(self.model, train_config)
        self.train_data = encode_pairs(chosen.train, self.info.source_vocab, self.info.target_vocab)
        self.valid_data = encode_pairs(chosen.validation, self.info.source_vocab, self.info.target_vocab)
        eval_pairs, eval_refs = references_by_source(chosen.validation)
        self.eval_pairs, self.eval_refs = eval_pairs[: train_config.eval_sentences], \
            eval_refs[: train_config.eval_sentences]
        self.items = epoch_items(self.train_data, train_config.short_repeats, prepared.short_length)
        self.steps_per_epoch = math.ceil(len(self.items) / train_config.batch_size) // world
        if self.steps_per_epoch == 0:  # a process without a batch would leave the others waiting in all-reduce
            raise ConfigError(f"{len(self.train_data)} training pairs make fewer batches of {train_config.batch_size} "
                              f"than the {world} processes; lower --batch-size or start fewer processes")
        self.state = self._restored_state() if stored is not None else TrainState()
        self.trained_model = torch.nn.parallel.DistributedDataParallel(self.model) if world > 1 else self.model
        self.autocast = training_autocast(precision, device)

    def _restored_state(self) -> TrainState:
        """Resuming: the checkpoint's weights, optimizer, RNG and position (the model and optimizer are filled in)."""
        if self.rank == 0:
            _remove_stale_temporaries(self.out_dir)
        state = ckpt.load_train_state(self.out_dir, self.model, self.optimizer, self.device)
        log.info("resuming %s at epoch %d, step %d", self.out_dir, state.epoch + 1, state.step_in_epoch)
        return state

    # --- the loop ---------------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        cfg, state = self.cfg, self.state
        # Checkpoints older than the `finished` field still tell a run that did all its epochs.
        finished = state.finished or ("epochs" if cfg.epochs and state.epoch >= cfg.epochs else "")
        if finished:  # resuming a finished run: nothing to do, and nothing written
            log.info("%s finished at epoch %d (%s); nothing to resume", self.out_dir, state.epoch, finished)
            return TrainResult(self.out_dir, state.best_chrf, state.best_epoch, state.epoch,
                               f"already finished ({finished})", state.history)
        if self.rank == 0:
            self.notify("start", {"device": str(self.device), "precision": self.precision,
                                  "parameters": self.model.num_parameters(), "world_size": self.world,
                                  "steps_per_epoch": self.steps_per_epoch, "epochs": cfg.epochs,
                                  "start_epoch": state.epoch + 1})
        self._start_clock()
        stopped = "epochs"
        while not cfg.epochs or state.epoch < cfg.epochs:
            out_of_time = self._train_epoch()
            reason = self._end_epoch(out_of_time)
            if reason:
                stopped = reason
                break
        if self.world > 1:
            dist.barrier()
        if os.environ.get("CHARMT_DEBUG_RANK_DUMP"):
            _dump_rank(Path(os.environ["CHARMT_DEBUG_RANK_DUMP"]), self.rank, self.model, self.optimizer, state)
        result = TrainResult(self.out_dir, state.best_chrf, state.best_epoch, state.epoch, stopped, state.history)
        if self.rank == 0:
            self.notify("end", asdict(result))
        return result

    def _start_clock(self) -> None:
        """The run's clock continues a resumed run's elapsed time (the budget and the cosine schedule follow it)."""
        self.budget = self.cfg.time_budget_minutes * 60
        self.clock = time.monotonic() - self.state.elapsed
        self.time_used = self.state.elapsed / self.budget if self.budget else 0.0  # the same on every process
        self.last_checkpoint = time.monotonic()

    # --- stepping ---------------------------------------------------------------------------------------

    def _train_epoch(self) -> bool:
        """Train the rest of the current epoch; True if the time budget ran out within it."""
        cfg, state = self.cfg, self.state
        batches = self._epoch_batches()
        total_steps = self.steps_per_epoch * cfg.epochs or math.inf  # epochs 0: the clock alone sets progress
        epoch_start, pairs_done, first_step = time.monotonic(), 0, state.step_in_epoch
        self.model.train()
        for step in range(first_step, len(batches)):
            progress = max(state.global_step / total_steps, self.time_used)
            lr = learning_rate(cfg, state.global_step, progress, state.plateau_factor)
            loss, accuracy, tokens = self._step(batches[step], lr)
            state.epoch_loss_sum += loss * tokens
            state.epoch_correct += accuracy * tokens
            state.epoch_tokens += tokens
            state.step_in_epoch, state.global_step = step + 1, state.global_step + 1
            pairs_done += len(batches[step]) * self.world
            if self.rank == 0:
                elapsed = time.monotonic() - epoch_start
                self.notify("step", {"epoch": state.epoch + 1, "step": step + 1, "steps": len(batches),
                                     "loss": state.epoch_loss_sum / state.epoch_tokens,
                                     "accuracy": state.epoch_correct / state.epoch_tokens,
                                     "pairs_per_s": pairs_done / max(elapsed, 1e-9), "lr": lr,
                                     "steps_per_s": (step + 1 - first_step) / max(elapsed, 1e-9)})
            if self._out_of_time():
                return True
            if self.rank == 0 and time.monotonic() - self.last_checkpoint >= cfg.checkpoint_minutes * 60:
                self._save_checkpoint()
        return False

    def _epoch_batches(self) -> list:
        """This process's share of the current epoch's batches, in an order that depends on (seed, epoch) only."""
        generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.state.epoch)
        batches = make_batches(self.train_data, self.cfg.batch_size, generator, self.cfg.bucket, self.items)
        return batches[: self.steps_per_epoch * self.world][self.rank :: self.world]

    def _step(self, batch, lr: float) -> tuple[float, float, int]:
        """One optimizer step on `batch` at learning rate `lr`: the batch's loss and accuracy per target unit, and
        its number of target units."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        src, lengths, tgt_in, tgt_out = collate(self.train_data, batch, self.device)
        with self.autocast:
            logits, loss = self.trained_model(src, lengths, tgt_in, tgt_out, label_smoothing=self.cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        self.optimizer.step()
        mask = tgt_out != PAD_ID
        return float(loss.detach()), masked_accuracy(logits.detach(), tgt_out, mask), int(mask.sum())

    def _out_of_time(self) -> bool:
        """Whether the time budget is spent; updates `time_used`, which the learning rate follows."""
        # Under DDP each process has its own clock: all use the slowest one, for the lr and to stop together.
        used = (time.monotonic() - self.clock) / self.budget if self.budget else 0.0
        self.time_used = _max_over_ranks(used, self.world, self.device)
        return bool(self.budget) and self.time_used >= 1.0

    # --- the end of an epoch ----------------------------------------------------------------------------

    def _end_epoch(self, out_of_time: bool) -> str:
        """Validate, decide, log, keep the best and the last model; why the run stops here ("" to go on)."""
        decision = None
        record = self._epoch_record(out_of_time) if self.rank == 0 else None
        # A budget spent during validation ends the run here, not one step into another epoch. Every process asks
        # (an all-reduce under DDP); the others wait in it while rank 0 validates.
        out_of_time = out_of_time or self._out_of_time()
        if self.rank == 0:
            decision = decide_epoch(self.state, record, self.cfg, out_of_time)
            decision.apply_to(self.state)
            if decision.best:
                self.files.save_best(self.model)
            record["best"] = decision.best
            self.state.history.append(record)
            self.files.write_epoch(self.state.history, minutes=(time.monotonic() - self.clock) / 60)
            self.notify("epoch", record)
        if self.world > 1:  # only rank 0 validates: all processes must apply its lr factor and stop with it
            decision = self._decision_of_rank0(decision)
        self._next_epoch(decision.stop)
        if self.rank == 0:
            self._save_checkpoint()
        return decision.stop

    def _epoch_record(self, out_of_time: bool) -> dict:
        """The epoch's line of log.jsonl, validation included (rank 0 only)."""
        state = self.state
        record = {"epoch": state.epoch + 1, "steps": state.global_step,
                  "train_loss": state.epoch_loss_sum / max(state.epoch_tokens, 1),
                  "train_accuracy": state.epoch_correct / max(state.epoch_tokens, 1),
                  "lr": self.optimizer.param_groups[0]["lr"], "partial": out_of_time}
        record.update(_validate(Translator(self.model, self.info, self.device), self.valid_data,
                                self.eval_pairs, self.eval_refs, self.cfg, self.notify))
        record["seconds"] = round(time.monotonic() - self.clock, 1)
        return record

    def _decision_of_rank0(self, decision: EpochDecision | None) -> EpochDecision:
        """Rank 0's decision and history, applied on every process."""
        shared = [decision, self.state.history]
        dist.broadcast_object_list(shared, src=0, device=self.device if self.device.type == "cuda" else None)
        decision, self.state.history = shared
        decision.apply_to(self.state)
        return decision

    def _next_epoch(self, stop: str) -> None:
        """Move the state to the start of the next epoch, or mark the run finished."""
        state = self.state
        state.epoch, state.step_in_epoch = state.epoch + 1, 0
        state.epoch_loss_sum, state.epoch_correct, state.epoch_tokens = 0.0, 0.0, 0
        if stop or (self.cfg.epochs and state.epoch >= self.cfg.epochs):  # recorded: --resume does not train on
            state.finished = stop or "epochs"

    def _save_checkpoint(self) -> None:
        self.state.elapsed = time.monotonic() - self.clock
        self.files.save_checkpoint(self.model, self.optimizer, self.state, self.device)
        self.last_checkpoint = time.monotonic()


# --- checkpointing: the model directory -------------------------------------------------------------------


class _ModelDirectory:
    """What a run writes into its output directory (rank 0 only): config.json and split.json once, at the first
    write, then the checkpoint, the best weights, the log and the model card."""

    def __init__(self, out_dir: Path, info: ckpt.ModelInfo, split: dict, hardware: str, written: bool):
        self.out_dir, self.info, self.split, self.hardware = out_dir, info, split, hardware
        self.written = written  # whether out_dir holds this run's files yet (it does when resuming)

    def save_checkpoint(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
                        device: torch.device) -> None:
        self._create()
        ckpt.save_train_state(self.out_dir, model, optimizer, state, device)

    def save_best(self, model: torch.nn.Module) -> None:
        """model.safetensors: the weights of the best epoch so far."""
        self._create()
        ckpt.save_model(self.out_dir, model, self.info)

    def write_epoch(self, history: list[dict], minutes: float) -> None:
        """log.jsonl and the model card, rewritten after every epoch."""
        self._create()
        _write_log(self.out_dir, history)
        card = ckpt.model_card(self.info, history, hardware=self.hardware, version=_version(), minutes=minutes)
        ckpt.atomic_write(self.out_dir / ckpt.CARD_FILE, card.encode("utf-8"))

    def _create(self) -> None:
        """Create the model directory with config.json and split.json, once, at the first write."""
        if self.written:
            return
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # e.g. the disk filled up, or permissions changed while training
            raise ConfigError(f"cannot create the model directory {self.out_dir} ({err.strerror}); "
                              "choose another --out") from None
        _remove_stale_temporaries(self.out_dir)
        for stale in (ckpt.WEIGHTS_FILE, ckpt.CHECKPOINT_FILE, ckpt.LOG_FILE, ckpt.CARD_FILE,
                      ckpt.SUBWORD_FILE):  # of the model replaced
            (self.out_dir / stale).unlink(missing_ok=True)
        ckpt.write_info(self.out_dir, self.info)
        ckpt.write_json(self.out_dir / ckpt.SPLIT_FILE, self.split)
        self.written = True


# --- the end-of-epoch decision ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochDecision:
    """What the end of an epoch decides. Rank 0 takes it from its validation; the other processes follow."""

    best: bool  # this epoch's model is the best so far (it becomes model.safetensors)
    best_chrf: float
    best_epoch: int
    stale_epochs: int  # epochs since the best one
    plateau_factor: float  # learning-rate factor of the "plateau" schedule
    stop: str  # why the run ends after this epoch ("early stopping", "time budget"); "" to go on

    def apply_to(self, state: TrainState) -> None:
        state.best_chrf, state.best_epoch = self.best_chrf, self.best_epoch
        state.stale_epochs, state.plateau_factor = self.stale_epochs, self.plateau_factor


def decide_epoch(state: TrainState, record: dict, cfg: TrainConfig, out_of_time: bool) -> EpochDecision:
    """Given the run's state before the epoch ended and the epoch's record (its "val_chrf" absent without a
    validation set), whether the epoch is the best, the learning-rate factor, and whether to stop."""
    epoch, chrf = record["epoch"], record.get("val_chrf")
    best = chrf is None or chrf > state.best_chrf  # without a validation set, the last epoch is the best
    if best:
        best_chrf, best_epoch, stale = (chrf if chrf is not None else -1.0), epoch, 0
    else:
        best_chrf, best_epoch, stale = state.best_chrf, state.best_epoch, state.stale_epochs + 1
    plateau_factor = state.plateau_factor
    if not best and cfg.lr_schedule == "plateau":
        plateau_factor *= 0.5
    stop = ""
    if cfg.patience and stale >= cfg.patience:
        stop = "early stopping"
    if out_of_time:  # the same on every process: the slowest one's clock
        stop = "time budget"
    return EpochDecision(best, best_chrf, best_epoch, stale, plateau_factor, stop)


# --- validation and files ---------------------------------------------------------------------------------


def _validate(translator: Translator, valid_data: EncodedPairs, eval_pairs: list[Pair], eval_refs: list[list[str]],
              cfg: TrainConfig, notify: Callback) -> dict:
    if not len(valid_data):
        return {}
    val_loss, val_acc = teacher_forced_metrics(translator.model, valid_data, translator.device)
    hyps = translator.translate([p.source for p in eval_pairs], batch_size=256, split=False, warn=False)
    scores = score_translations(hyps, eval_refs, tokenize=bleu_tokenizer(translator.info.target_lang)[0])
    samples = [{"source": p.source, "reference": refs[0], "output": h}
               for p, refs, h in list(zip(eval_pairs, eval_refs, hyps))[: cfg.show_samples]]
    warning = collapse_warning(hyps)
    if warning:
        notify("warning", {"message": warning})
    return {"val_loss": val_loss, "val_accuracy": val_acc, "val_chrf": scores.chrf, "val_bleu": scores.bleu,
            "val_exact_match": scores.exact_match, "samples": samples, "collapsed": bool(warning)}


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Remove the temporary files of atomic writes cut short by a kill -9 (which skips their cleanup)."""
    for name in ckpt.MODEL_FILES:
        for stale in out_dir.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)


def _write_log(out_dir: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in history)
    ckpt.atomic_write(out_dir / ckpt.LOG_FILE, text.encode("utf-8"))


def _dump_rank(directory: Path, rank: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               state: TrainState) -> None:
    """Debug hook, set CHARMT_DEBUG_RANK_DUMP=DIR: each process writes DIR/rank{r}.txt with the sha256 of its
    final weights, its learning rate and step, so tests can check that DDP kept the processes' copies identical."""
    # One name per tied weight (a Transformer's target embedding is its output layer), as the checkpoint stores it:
    # safetensors refuses tensors that share memory.
    tensors = ckpt._one_name_each(model.state_dict())
    weights = save_safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"rank{rank}.txt").write_text(f"{hashlib.sha256(weights).hexdigest()} "
                                               f"lr={optimizer.param_groups[0]['lr']!r} step={state.global_step}\n")
