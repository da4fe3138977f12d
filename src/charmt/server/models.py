"""The models a server serves: which directories, which language pairs, loaded once each.

`charmt serve DIR` serves every complete model in DIR: a folder whose config.json has no weights beside it yet (a
training run in progress) or an export missing a file is skipped with a warning. An export (ONNX or CTranslate2)
and the model it was exported from (its config says `"export": {"from": "<the model's folder name>"}`) are one model
in two forms, not two models for one pair: the server serves one of them and says which. Two different models for
one pair are refused.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, ModelFormatError
from ..languages import check_code, is_rtl, name_of

if TYPE_CHECKING:
    from ..checkpoint import ModelInfo
    from ..decode import Translator

log = logging.getLogger("charmt")


@dataclass
class ServedModel:
    """One loaded model and the language pair it serves."""

    translator: Translator
    name: str
    source: str
    target: str
    load_s: float = 0.0  # seconds `Translator.load` took

    @property
    def pair(self) -> tuple[str, str]:
        return self.source, self.target

    @property
    def has_attention(self) -> bool:
        # CTranslate2 runs its own search, which the attention display does not drive.
        return self.translator.info.model.has_attention and hasattr(self.translator.engine, "step")

    def memory_mb(self) -> float:
        """What the engine says its weights take (for an export, its graphs or model.bin; int8 ones are smaller)."""
        return self.translator.engine.memory_bytes() / 2**20

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "target": self.target,
                "source_name": name_of(self.source), "target_name": name_of(self.target),
                "source_rtl": is_rtl(self.source), "target_rtl": is_rtl(self.target), "attention": self.has_attention,
                "device": str(self.translator.device), "memory_mb": round(self.memory_mb(), 2),
                "load_s": round(self.load_s, 3)}


_PAIR = re.compile(r"(?P<path>.+)=(?P<source>[^=:/\\]+):(?P<target>[^=:/\\]+)")


@dataclass
class _Found:
    directory: Path
    pair: tuple[str, str]
    exported_from: str | None  # an export: the folder name of the model it was exported from


def _parse_spec(spec: str) -> tuple[Path, tuple[str, str] | None]:
    """`DIR` or `DIR=SRC:TGT` (languages for a model whose config.json does not name them)."""
    match = _PAIR.fullmatch(spec)
    if match is None or Path(spec).exists():
        return Path(spec), None
    return Path(match["path"]), (check_code(match["source"]), check_code(match["target"]))


def _incomplete(directory: Path, config: dict) -> str | None:
    """Why a folder with a config.json is not yet a model to serve (None: it is one)."""
    from ..checkpoint import WEIGHTS_FILE
    from ..onnx_engine import ENCODER_FILE, STEP_FILE

    export = config.get("export")
    if isinstance(export, dict):
        kind, files = (("CTranslate2", ["model.bin"]) if export.get("engine") == "ct2"
                       else ("ONNX", [ENCODER_FILE, STEP_FILE]))
        missing = [name for name in files if not (directory / name).is_file()]
        return f"an incomplete {kind} export (no {' or '.join(missing)})" if missing else None
    if not (directory / WEIGHTS_FILE).is_file():
        return f"config.json but no {WEIGHTS_FILE} (a training run that has not saved yet?)"
    return None


def _read(directory: Path, pair: tuple[str, str] | None, *, skip_incomplete: bool) -> _Found | None:
    from ..checkpoint import config_path, load_info, read_json

    try:
        info: ModelInfo = load_info(directory)
        config = read_json(config_path(directory))
    except ModelFormatError as err:
        if not skip_incomplete:
            raise
        log.warning("skipping %s: %s", directory, err)
        return None
    if skip_incomplete and (why := _incomplete(directory, config)) is not None:
        log.warning("skipping %s: %s", directory, why)
        return None
    codes = pair or (info.source_lang, info.target_lang)
    if None in codes:
        raise ConfigError(f"{directory} does not say which languages it translates (its training file's name did "
                          f"not say them): serve it as DIR=SOURCE:TARGET, e.g. {directory}=en:fr, or train it with "
                          "--source-lang and --target-lang")
    export = config.get("export")
    return _Found(directory, codes, export.get("from") if isinstance(export, dict) else None)


def find_models(specs: list[str], *, prefer_export: bool = True) -> list[tuple[Path, tuple[str, str]]]:
    """(model directory, (source, target)) for each `DIR[=SRC:TGT]`; a directory that is not a model but holds
    models stands for all of its complete ones. Refuses models without language codes and two models for one pair;
    of an export and its source model, keeps the export (`prefer_export`) or the source, with a warning."""
    from ..checkpoint import is_model_dir

    found: list[_Found] = []
    for spec in specs:
        path, pair = _parse_spec(spec)
        if path.is_dir() and not is_model_dir(path):
            inside = sorted(p for p in path.iterdir() if is_model_dir(p))
            if not inside:
                raise ModelFormatError(f"{path} is neither a model directory nor a directory of model directories")
            if pair is not None and len(inside) > 1:
                raise ConfigError(f"{spec}: =SOURCE:TARGET names the pair of one model; put it after a model "
                                  "directory")
            models = [m for m in (_read(d, pair, skip_incomplete=True) for d in inside) if m is not None]
            if not models:
                raise ModelFormatError(f"{path} holds no complete model (see the warnings above)")
            found += models
        else:
            found.append(_read(path, pair, skip_incomplete=False))
    kept: dict[tuple[str, str], _Found] = {}
    for model in found:
        other = kept.get(model.pair)
        if other is None:
            kept[model.pair] = model
            continue
        export, source = (model, other) if model.exported_from is not None else (other, model)
        if export.exported_from != source.directory.resolve().name or source.exported_from is not None:
            raise ConfigError(f"{other.directory} and {model.directory} both translate {model.pair[0]} to "
                              f"{model.pair[1]}; serve one model per language pair")
        chosen = export if prefer_export else source
        log.warning("%s is an export of %s (both %s->%s): serving %s; name one of them to choose",
                    export.directory, source.directory, *model.pair, chosen.directory)
        kept[model.pair] = chosen
    chosen_dirs = {id(m) for m in kept.values()}
    return [(m.directory, m.pair) for m in found if id(m) in chosen_dirs]


def load_models(specs: list[str], device: str = "auto") -> list[ServedModel]:
    """Load each model of `specs` (see `find_models`) once, timing it. ONNX exports run on the CPU: of an export
    and its source, --device cuda serves the source."""
    from ..decode import Translator

    models = []
    for directory, (source, target) in find_models(specs, prefer_export=not str(device).startswith("cuda")):
        start = time.perf_counter()
        translator = Translator.load(directory, device=device)
        models.append(ServedModel(translator, directory.resolve().name, source, target,
                                  load_s=time.perf_counter() - start))
    return models
