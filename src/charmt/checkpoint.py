"""The model directory: `config.json` + `model.safetensors`, written atomically, loaded without pickle.

    MODEL_DIR/
      config.json          format version, architecture, vocabularies, selection and training options
      model.safetensors    the best weights (by validation chrF); what `translate` uses
      checkpoint.safetensors  the last checkpoint: weights, optimizer, RNG and position, for --resume
      log.jsonl            one line of metrics per epoch
      split.json           line numbers of the validation and test pairs in the data file
      README.md            the model card: languages, data and its licence, training, validation scores
      sentencepiece.model  the subword units of a model trained with --units subword (both languages)
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ModelConfig
from .errors import ConfigError, ModelFormatError
from .vocab import SubwordVocab, Vocab

if TYPE_CHECKING:  # PyTorch is imported by the functions that need it: config.json alone (ModelInfo, load_info)
    import torch  # is read without it, as an ONNX export is
    from torch import nn

FORMAT = "charmt-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
LOG_FILE = "log.jsonl"
SPLIT_FILE = "split.json"
CARD_FILE = "README.md"
SUBWORD_FILE = "sentencepiece.model"
# A CTranslate2 export's config.json is CTranslate2's own; charmt's config sits beside it under this name.
CT2_CONFIG_FILE = "charmt.json"
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, CHECKPOINT_FILE, LOG_FILE, SPLIT_FILE, CARD_FILE, SUBWORD_FILE)


@dataclass
class ModelInfo:
    """Everything in config.json: enough to rebuild and use the model without the training data."""

    model: ModelConfig
    source_vocab: Vocab | SubwordVocab
    target_vocab: Vocab | SubwordVocab
    preset: str = "custom"
    source_lang: str | None = None  # ISO 639 codes, e.g. "en" and "fr"; None where nobody said
    target_lang: str | None = None
    max_source_length: int = 0  # longest source seen in training (characters)
    max_target_length: int = 0  # longest target seen in training (characters, without START/END)
    # Target length / source length, at the 99.9th percentile of the training pairs: outputs are capped near
    # length_ratio x input + 10 characters (None, for older models: 2, today's English/French rule).
    length_ratio: float | None = None
    selection: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    # Set for models imported from the Keras example, whose decoding quirks must be reproduced:
    # {"source_length": N, "pad_char": " ", "max_decode_length": M}
    keras_compat: dict | None = None

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "preset": self.preset,
            "source_lang": self.source_lang,
            "target_lang": self.target_lang,
            "model": self.model.to_dict(),
            # Characters are listed here; subword units live in their own file beside it (written by write_info).
            "source_vocab": _vocab_json(self.source_vocab),
            "target_vocab": _vocab_json(self.target_vocab),
            "max_source_length": self.max_source_length,
            "max_target_length": self.max_target_length,
            "length_ratio": self.length_ratio,
            "selection": self.selection,
            "training": self.training,
            "data": self.data,
            "keras_compat": self.keras_compat,
        }

    @classmethod
    def from_json(cls, obj: dict, where: str, directory: str | os.PathLike | None = None) -> ModelInfo:
        """The ModelInfo of a config.json's contents; `directory` holds the files it names (subword units)."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ModelFormatError(f"{where} is not a charmt model config (no \"format\": \"{FORMAT}\")")
        version = obj.get("format_version")
        if not isinstance(version, int):
            raise ModelFormatError(f"{where} has no valid format_version ({version!r}); was it written by charmt?")
        if version > FORMAT_VERSION:
            raise ModelFormatError(
                f"{where} has format version {version!r}, newer than this charmt reads ({FORMAT_VERSION}); "
                "upgrade charmt"
            )
        try:
            model = ModelConfig(**obj["model"])
            source_vocab, target_vocab = _read_vocabs(obj["source_vocab"], obj["target_vocab"], directory, where)
            info = cls(
                model=model,
                source_vocab=source_vocab,
                target_vocab=target_vocab,
                preset=obj.get("preset", "custom"),
                source_lang=obj.get("source_lang"),
                target_lang=obj.get("target_lang"),
                max_source_length=int(obj.get("max_source_length", 0)),
                max_target_length=int(obj.get("max_target_length", 0)),
                length_ratio=None if obj.get("length_ratio") is None else float(obj["length_ratio"]),
                selection=obj.get("selection") or {},
                training=obj.get("training") or {},
                data=obj.get("data") or {},
                keras_compat=obj.get("keras_compat"),
            )
        except (KeyError, TypeError, ValueError, ConfigError) as err:  # ConfigError: an invalid model option
            raise ModelFormatError(f"{where} is malformed ({type(err).__name__}: {err})") from None
        if len(info.source_vocab) != info.model.src_vocab_size or len(info.target_vocab) != info.model.tgt_vocab_size:
            raise ModelFormatError(f"{where}: vocabulary sizes do not match the model's src/tgt_vocab_size")
        return info


def _vocab_json(vocab: Vocab | SubwordVocab) -> list[str] | str:
    return SUBWORD_FILE if isinstance(vocab, SubwordVocab) else vocab.tokens


def _read_vocabs(source, target, directory, where: str) -> tuple[Vocab | SubwordVocab, Vocab | SubwordVocab]:
    """Character vocabularies from their token lists; subword units from the file config.json names (one model for
    both languages)."""
    if isinstance(source, list) and isinstance(target, list):
        return Vocab(source), Vocab(target)
    if source != SUBWORD_FILE or target != SUBWORD_FILE or directory is None:
        raise ModelFormatError(f"{where}: source_vocab and target_vocab must be lists of characters, or both "
                               f"\"{SUBWORD_FILE}\" in a model directory")
    path = Path(directory) / SUBWORD_FILE
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ModelFormatError(f"{path} is missing or unreadable ({err.strerror}): the model's subword units are in "
                               "it; copy the whole model directory") from None
    vocab = SubwordVocab(data)
    return vocab, vocab


def write_info(directory: str | os.PathLike, info: ModelInfo) -> None:
    """config.json, and the subword model it names: the units first, so a config.json never names a missing file."""
    if isinstance(info.source_vocab, SubwordVocab):
        atomic_write(Path(directory) / SUBWORD_FILE, info.source_vocab.model_bytes)
    write_json(Path(directory) / CONFIG_FILE, info.to_json())


# --- atomic files -----------------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename: a crash leaves the old file whole."""
    path = Path(path)
    while True:  # like mkstemp, but created with mode 0666 so that the process's umask applies as to any file
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_json(path: str | os.PathLike, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def read_json(path: str | os.PathLike):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFormatError(f"{path} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFormatError(f"{path} is truncated or not JSON ({err})") from None


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    from safetensors.torch import save as save_safetensors_bytes

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in _one_name_each(tensors).items()}
    atomic_write(path, save_safetensors_bytes(tensors, metadata=metadata))


def _one_name_each(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` with one name per tied weight (a Transformer's embedding is its output layer): safetensors stores
    each tensor once, and `load_state` gives the other names back."""
    seen: set[tuple] = set()
    kept = {}
    for name in sorted(tensors):
        tensor = tensors[name]
        key = (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if tensor.numel() == 0 or key not in seen:
            kept[name] = tensor
        seen.add(key)
    return kept


def load_tensors(path: str | os.PathLike, *, with_metadata: bool = False):
    """Read a safetensors file: plain tensors only, never pickled code (and its metadata if asked)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors_bytes

    path = Path(path)
    try:
        data = path.read_bytes()
        tensors = load_safetensors_bytes(data)
        if not with_metadata:
            return tensors
        header_size = int.from_bytes(data[:8], "little")
        return tensors, json.loads(data[8 : 8 + header_size]).get("__metadata__", {})
    except FileNotFoundError:
        raise ModelFormatError(f"{path} is missing") from None
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise ModelFormatError(f"{path} is truncated or not a safetensors file ({err})") from None


# --- model directories ------------------------------------------------------------------------------------


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a model directory or an export of one (it has charmt's config)."""
    return config_path(path).is_file()


def save_model(directory: str | os.PathLike, model: nn.Module, info: ModelInfo,
               weights_file: str = WEIGHTS_FILE) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / weights_file, model.state_dict(), metadata={"format": FORMAT})
    write_info(directory, info)


def config_path(directory: str | os.PathLike) -> Path:
    """Where charmt's config of a model directory or an export is: config.json, or charmt.json in a CTranslate2
    export."""
    directory = Path(directory)
    beside = directory / CT2_CONFIG_FILE
    return beside if beside.is_file() else directory / CONFIG_FILE


def load_info(directory: str | os.PathLike) -> ModelInfo:
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelFormatError(f"{directory} is not a model directory (no such directory)")
    path = config_path(directory)
    if not path.exists():
        raise ModelFormatError(f"{path} is missing: {directory} is not a charmt model directory")
    return ModelInfo.from_json(read_json(path), str(path), directory)


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu",
               weights_file: str = WEIGHTS_FILE) -> tuple[nn.Module, ModelInfo]:
    """Rebuild the model from config.json and load its weights; errors name the file at fault."""
    import torch

    from .model import build_model

    info = load_info(directory)
    # Built on the CPU with the caller's RNG state saved and restored around it, so loading draws nothing from it.
    # (On the meta device, initialisation runs PyTorch's Python reference ops, whose first use imports
    # torch._dynamo: 2.5 s of start-up, against milliseconds of real initialisation.)
    with torch.random.fork_rng(devices=[]):
        model = build_model(info.model)
    weights_path = Path(directory) / weights_file
    load_state(model, load_tensors(weights_path), str(weights_path))
    return model.to(device).eval(), info


def load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Strictly load `tensors` into `model`, listing missing, unexpected or wrongly shaped weights. A tied weight
    stored once (see `save_tensors`) is given to each of its names."""
    expected = model.state_dict()
    tensors = dict(tensors)
    for name, alias in _tied_names(expected).items():
        if name not in tensors and alias in tensors:
            tensors[name] = tensors[alias]
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:4]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:4]}")
        if wrong:
            parts.append(f"wrong shape {[(k, tuple(tensors[k].shape), tuple(expected[k].shape)) for k in wrong[:3]]}")
        raise ModelFormatError(f"{where} does not match config.json: " + "; ".join(parts))
    model.load_state_dict(tensors, assign=any(p.is_meta for p in model.parameters()))


def _tied_names(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """name -> the name `_one_name_each` keeps for it, for every name that shares its tensor with another."""
    first: dict[tuple, str] = {}
    tied = {}
    for name in sorted(state):
        tensor = state[name]
        if tensor.numel() == 0:
            continue
        key = (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if key in first:
            tied[name] = first[key]
        else:
            first[key] = name
    return tied


def holds_model(directory: str | os.PathLike) -> bool:
    """Whether `directory` holds trained weights or a training checkpoint (a config.json alone is what a run
    that never reached its first checkpoint may have left, and blocks nothing)."""
    directory = Path(directory)
    return (directory / WEIGHTS_FILE).is_file() or (directory / CHECKPOINT_FILE).is_file()


# --- training state ---------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """Where a training run is. Saved with every checkpoint, so that a resumed run continues exactly."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps of the current epoch completed
    global_step: int = 0
    best_chrf: float = -1.0
    best_epoch: int = 0
    stale_epochs: int = 0  # epochs since the best one
    plateau_factor: float = 1.0  # learning-rate factor of the "plateau" schedule
    elapsed: float = 0.0  # seconds of training so far (the time budget and the cosine schedule follow it)
    history: list[dict] = field(default_factory=list)  # one record per epoch, as in log.jsonl
    epoch_loss_sum: float = 0.0  # sums over the current epoch's target characters
    epoch_correct: float = 0.0
    epoch_tokens: int = 0
    finished: str = ""  # why the run ended ("epochs", "early stopping", "time budget"); "" while it goes on


def save_train_state(directory: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     state: TrainState, device: torch.device) -> None:
    """One file, written atomically, so that weights, optimizer, RNG and position can never disagree."""
    import torch

    opt = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors["rng.torch"] = torch.get_rng_state()
    if device.type == "cuda":  # dropout on the GPU draws from the device's generator
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    for pid, slots in opt["state"].items():
        for name, value in slots.items():
            tensors[f"optimizer.{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    metadata = {"state": json.dumps(asdict(state)), "param_groups": json.dumps(opt["param_groups"])}
    save_tensors(Path(directory) / CHECKPOINT_FILE, tensors, metadata=metadata)


def load_train_state(directory: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     device: torch.device) -> TrainState:
    """Restore weights, optimizer, RNG and position from `directory`'s checkpoint."""
    import torch

    path = Path(directory) / CHECKPOINT_FILE
    tensors, metadata = load_tensors(path, with_metadata=True)
    try:
        saved, param_groups = json.loads(metadata["state"]), json.loads(metadata["param_groups"])
        state = TrainState(**saved)
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ModelFormatError(f"{path} holds no training state; it was not written by charmt train") from None
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(path))
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value  # load_state_dict moves it to the device
    optimizer.load_state_dict({"state": opt_state, "param_groups": param_groups})
    torch.set_rng_state(tensors["rng.torch"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    return state


# --- model card -------------------------------------------------------------------------------------------


def model_card(info: ModelInfo, history: list[dict], *, hardware: str, minutes: float, version: str) -> str:
    """README.md of a model directory, like a Hugging Face model card: what the model translates, the data and
    its licence with the attribution CC-BY asks for, how it was trained, and how well it did on validation."""
    from .languages import name_of

    src, tgt = info.source_lang, info.target_lang
    data, training = info.data, info.training
    best = next((r for r in reversed(history) if r.get("best")), None)  # the last epoch that improved
    scores = (f"best epoch {best['epoch']}: chrF {best['val_chrf']:.1f}, BLEU {best['val_bleu']:.1f} on "
              f"{min(training.get('eval_sentences', 0), data.get('validation', 0))} validation sentences"
              if best and "val_chrf" in best else "no validation set")
    licence = data.get("licence")
    if licence:
        licence_text = (f"The training pairs are licensed {licence}: each line of the data file names its authors "
                        "and sentence numbers on tatoeba.org (third column). Anyone sharing this model should "
                        "credit the Tatoeba Project (https://tatoeba.org) and manythings.org/anki.")
    else:
        licence_text = ("The data file does not state its licence. Files from manythings.org/anki hold Tatoeba "
                        "sentences under CC-BY 2.0 (France): credit the Tatoeba Project (https://tatoeba.org) when "
                        "sharing a model trained on them.")
    stopped = history[-1]["epoch"] if history else 0
    rows = [
        ("languages", f"{name_of(src)} → {name_of(tgt)} ({src or '?'} → {tgt or '?'})"),
        ("network", f"`{info.preset}` preset: {_describe(info.model)}"),
        ("data", f"`{Path(data.get('path', '?')).name}` (sha256 {str(data.get('sha256', '?'))[:12]}…): "
                 f"{data.get('train', '?')} training and {data.get('validation', '?')} validation pairs"),
        ("training", f"{stopped} epoch(s) in {minutes:.0f} minutes on {hardware}, charmt {version}"),
        ("validation", scores),
        ("lengths", f"outputs capped near {info.length_ratio or 2:.2f} × input + 10 characters; inputs up to "
                    f"{info.max_source_length} characters were seen in training"),
    ]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    return (f"# charmt model: {name_of(src)} → {name_of(tgt)}\n\n"
            f"A {_kind(info)} trained with charmt (sequence-to-sequence translation).\n\n"
            f"| | |\n|---|---|\n{table}\n\n"
            f"## Licence and attribution\n\n{licence_text}\n\n"
            "## Use\n\n```bash\ncharmt translate THIS_DIRECTORY \"...\"\ncharmt serve THIS_DIRECTORY\n```\n")


def _kind(info: ModelInfo) -> str:
    units = "subword" if isinstance(info.source_vocab, SubwordVocab) else "character-level"
    return f"{units} {'Transformer' if info.model.arch == 'transformer' else 'LSTM encoder-decoder'}"


def _describe(model: ModelConfig) -> str:
    if model.arch == "transformer":
        shared = ", one embedding shared by both languages and the output layer" if model.share_embeddings else \
            ", target embedding shared with the output layer"
        return (f"Transformer (pre-norm, sinusoidal positions) of {model.num_layers} encoder and {model.num_layers} "
                f"decoder layers, width {model.hidden_size}, {model.heads} heads, feed-forward "
                f"{model.ff_size or 4 * model.hidden_size}{shared}, dropout {model.dropout}")
    inputs = f"embeddings of {model.embedding_size}" if model.embedding_size else "one-hot characters"
    encoder = "bidirectional " if model.bidirectional else ""
    attention = ", Luong attention" if model.attention != "none" else ""
    return (f"{inputs}, {encoder}LSTM encoder and LSTM decoder of {model.hidden_size} units, {model.num_layers} "
            f"layer(s){attention}, dropout {model.dropout}")
