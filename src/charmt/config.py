"""Configuration: the dataclasses behind the presets, the CLI options and config.json.

Imports no torch, so the command line can build and check a configuration (and print its help) without paying
for PyTorch's start-up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from .errors import ConfigError, DataError
from .languages import check_code

ARCHS = ("lstm", "transformer")  # the model families (src/charmt/families/)
ATTENTION_KINDS = ("none", "luong")
UNITS = ("char", "subword")
OPTIMIZERS = ("rmsprop", "adam", "adamw")
PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "plateau", "cosine")
# The server's limits (server/limits.py), here so that the command line's help shows them without importing the
# server.
DEFAULT_MAX_TEXTS = 64  # texts per request
DEFAULT_MAX_CHARS = 1000  # characters per text
DEFAULT_MAX_PIECES = 1024  # lines and sentences per request, what the model is given (64 texts of 16 sentences)
DEFAULT_MAX_QUEUE = 256  # requests admitted and not yet answered, per model; more are answered 503
DEFAULT_TIMEOUT_S = 30.0  # seconds a request may wait and be translated; later it is answered 504
MAX_BEAM = 10


@dataclass
class ModelConfig:
    arch: str = "lstm"  # the model family: "lstm" (the example's network and its growth) or "transformer"
    src_vocab_size: int = 0  # set from the data's vocabulary
    tgt_vocab_size: int = 0
    hidden_size: int = 512  # the example's latent_dim; the decoder's size (transformer: the model width)
    num_layers: int = 1  # transformer: layers of the encoder and of the decoder each
    dropout: float = 0.0
    # lstm only
    encoder_hidden_size: int = 0  # per direction; 0: hidden_size. Bidirectional encoders often use half of it
    embedding_size: int = 0  # 0: one-hot inputs, as in the example; else a learned embedding of this size
    bidirectional: bool = False  # encoder only; its final states are bridged to the decoder's size
    attention: str = "none"  # "none" (the example) or "luong" (global attention, "general" score)
    # transformer only
    heads: int = 4  # attention heads (hidden_size must be divisible by it)
    ff_size: int = 0  # feed-forward width, 0: 4 x hidden_size
    share_embeddings: bool = False  # source and target share one embedding (a joint subword vocabulary)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ConfigError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.hidden_size < 1 or self.num_layers < 1 or self.embedding_size < 0 or self.encoder_hidden_size < 0:
            raise ConfigError("hidden_size and num_layers must be >= 1, embedding_size and encoder_hidden_size >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def has_attention(self) -> bool:
        """Whether decoding computes attention weights over the source (a Transformer always does)."""
        return self.arch == "transformer" or self.attention != "none"

    def to_dict(self) -> dict:
        """The fields of this family (config.json stays readable: no LSTM options in a Transformer's, and back)."""
        other = _TRANSFORMER_ONLY if self.arch == "lstm" else _LSTM_ONLY
        return {k: v for k, v in asdict(self).items() if k not in other}


_LSTM_ONLY = ("encoder_hidden_size", "embedding_size", "bidirectional", "attention")
_TRANSFORMER_ONLY = ("heads", "ff_size", "share_embeddings")


@dataclass
class SelectionConfig:
    """Which pairs to train on. The defaults are the Keras example's."""

    seed: int = 42  # the example shuffles the file's lines with random.seed(42)
    max_input_length: int | None = 15  # skip pairs whose source is longer (None: keep all)
    max_target_length: int | None = None  # skip pairs whose target is longer (None: keep all)
    dedupe: bool = True  # skip a source whose punctuation-stripped form was already seen
    num_samples: int | None = 10_000  # stop after this many pairs (None: keep all)
    validation_fraction: float = 0.2  # the example's validation_split
    test_fraction: float = 0.0
    reverse: bool = False  # translate from the second column to the first
    # ISO 639 codes of the source and target language; None: from the file name (`fra.txt`: en -> fr).
    source_lang: str | None = None
    target_lang: str | None = None
    # Write every typographic space (no-break, narrow no-break, thin: French puts them before ? ! : ;) as a plain
    # space in both columns, so that the model never spreads its probability over invisible variants.
    canonical_spaces: bool = False
    # Characters seen fewer times than this in the selected pairs become <unk> (1: every character is kept).
    min_char_count: int = 1
    # What the model reads and writes: "char" (characters, every model before the Transformer) or "subword"
    # (one SentencePiece unigram model of `vocab_size` pieces for both languages, trained on the training split).
    units: str = "char"
    vocab_size: int = 8000

    def __post_init__(self):
        for code in (self.source_lang, self.target_lang):
            if code is not None:
                check_code(code)
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise DataError(f"{name} must be in [0, 1), got {value}")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise DataError("validation_fraction + test_fraction must leave some pairs for training")
        for name in ("max_input_length", "max_target_length", "num_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"{name} must be at least 1 (or None for no limit), got {value}")
        if self.min_char_count < 1:
            raise DataError(f"min_char_count must be at least 1, got {self.min_char_count}")
        if self.units not in UNITS:
            raise ConfigError(f"units must be one of {UNITS}, got {self.units!r}")
        if self.vocab_size < 16:
            raise ConfigError(f"vocab_size must be at least 16, got {self.vocab_size}")


@dataclass
class TrainConfig:
    epochs: int = 5  # the example's setting for a CPU; 0: as many as the time budget allows
    batch_size: int = 64
    optimizer: str = "rmsprop"  # "rmsprop" uses Keras's defaults (rho 0.9, epsilon 1e-7), as the example
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # "plateau": halve when validation chrF stalls; "cosine": to 0 by the end
    warmup_steps: int = 0  # linear warm-up of the learning rate
    clip_grad_norm: float = 0.0  # 0: no clipping
    patience: int = 0  # stop after this many epochs without a better validation chrF (0: never)
    time_budget_minutes: float = 0.0  # stop cleanly once training has run this long (0: no budget)
    bucket: bool = True  # batch sentences of (nearly) one length together, so little of each batch is padding
    # Show pairs whose source has at most `short_source_length` characters this many times per epoch: short
    # sentences are cheap to train on and idiomatic, and upweighting them costs the long ones little.
    short_repeats: int = 1
    short_source_length: int = 0  # 0: the length of the shortest 18% of the sources (20 characters for English)
    # "auto": bfloat16 autocast where the hardware computes bf16 natively (CUDA; CPUs with AVX512_BF16 or AMX),
    # float32 elsewhere. Weights, optimizer state and decoding stay float32 either way.
    precision: str = "auto"
    # Share of each target's probability spread evenly over the vocabulary in the training loss (Szegedy et al.
    # 2016); validation loss and accuracy are always computed without it.
    label_smoothing: float = 0.0
    seed: int = 0
    eval_sentences: int = 500  # validation sentences decoded each epoch to compute chrF
    show_samples: int = 3  # decoded validation sentences printed each epoch
    checkpoint_minutes: float = 5.0  # also save a resumable checkpoint this often within an epoch
    device: str = "auto"
    threads: int = 0  # torch CPU threads (0: PyTorch's default)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.short_repeats < 1:
            raise ConfigError("short_repeats must be at least 1")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.epochs < 0 or self.batch_size < 1:
            raise ConfigError("epochs must not be negative and batch_size must be at least 1")
        if self.epochs == 0 and not self.time_budget_minutes:
            raise ConfigError("epochs 0 means \"until the time budget\": give --time-budget MINUTES too, or --epochs N")
        if self.short_source_length < 0:
            raise ConfigError("short_source_length must not be negative (0: chosen from the data)")
        if self.learning_rate <= 0:
            raise ConfigError("learning_rate must be positive")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.threads < 0 or self.checkpoint_minutes < 0 or self.time_budget_minutes < 0:
            raise ConfigError("threads, checkpoint_minutes and time_budget_minutes must not be negative")


# name -> (model, training, selection) options; everything not named keeps the dataclass default.
PRESETS: dict[str, tuple[dict, dict, dict]] = {
    # The Keras example: one-hot LSTM encoder-decoder, latent 512, rmsprop, batch 64, its data selection.
    "seed": ({}, {}, {}),
    # Small and quick: for tests and `charmt demo`.
    "tiny": (
        dict(hidden_size=96, embedding_size=32, bidirectional=True, attention="luong"),
        dict(epochs=40, batch_size=16, optimizer="adam", learning_rate=3e-3, clip_grad_norm=1.0,
             precision="fp32"),  # bf16 is slower for matrices this small
        dict(max_input_length=None, dedupe=False, num_samples=None, validation_fraction=0.1, canonical_spaces=True),
    ),
    # The quality preset: trains for an hour (or until validation chrF stops rising) on the whole pool, all
    # sentence lengths.
    "base": (
        dict(hidden_size=256, embedding_size=64, bidirectional=True, attention="luong", dropout=0.1),
        dict(epochs=0, batch_size=64, optimizer="adamw", learning_rate=2e-3, weight_decay=0.01,
             lr_schedule="cosine", warmup_steps=300, clip_grad_norm=1.0, patience=3, time_budget_minutes=60,
             eval_sentences=1000, checkpoint_minutes=5.0, short_repeats=2, label_smoothing=0.1),
        dict(max_input_length=None, max_target_length=160, dedupe=False, num_samples=None,
             validation_fraction=0.01, canonical_spaces=True, min_char_count=2),
    ),
    # The Transformer's quality preset: the same hour and data as `base`, in subword units (README, "Presets" and
    # the attempts table: how the sizes and the schedule were chosen at equal wall-clock time).
    "transformer": (
        dict(arch="transformer", hidden_size=256, num_layers=2, heads=4, ff_size=1024, dropout=0.1),
        dict(epochs=0, batch_size=64, optimizer="adamw", learning_rate=1e-3, weight_decay=0.01,
             lr_schedule="cosine", warmup_steps=500, clip_grad_norm=1.0, patience=3, time_budget_minutes=60,
             eval_sentences=1000, checkpoint_minutes=5.0, label_smoothing=0.1),
        dict(max_input_length=None, max_target_length=160, dedupe=False, num_samples=None,
             validation_fraction=0.01, canonical_spaces=True, units="subword", vocab_size=8000),
    ),
}


def preset_configs(name: str) -> tuple[ModelConfig, TrainConfig, SelectionConfig]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    model, training, selection = PRESETS[name]
    return ModelConfig(**model), TrainConfig(**training), SelectionConfig(**selection)


def updated(config, **changes):
    """A copy of a config dataclass with the given fields changed (None values are ignored)."""
    names = {f.name for f in fields(config)}
    unknown = set(changes) - names
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)} for {type(config).__name__}")
    return replace(config, **{k: v for k, v in changes.items() if v is not None})
