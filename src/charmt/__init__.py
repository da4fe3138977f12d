"""charmt: character-level recurrent sequence-to-sequence translation.

    import charmt
    charmt.train("fra-eng.zip", "models/fra", preset="tiny")
    print(charmt.Translator.load("models/fra").translate(["I am cold."]))

The names below are imported on first use, so `import charmt` (and the command line's --help) does not pay for
PyTorch's start-up until something needs it.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "CharmtError": "errors",
    "ModelConfig": "config",
    "SelectionConfig": "config",
    "TrainConfig": "config",
    "preset_configs": "config",
    "demo_corpus": "data",
    "download": "downloads",
    "read_corpus": "data",
    "select": "data",
    "one_hot_arrays": "explain",
    "masked_accuracy": "metrics",
    "masked_accuracy_one_hot": "metrics",
    "train": "training",
    "TrainingProgress": "progress",
    "Translator": "decode",
    "attention_weights": "decode",
    "evaluate_file": "evaluate",
    "export_onnx": "export",
    "export_ctranslate2": "export",
    "export_argos": "argos",
    "attention_figure": "plots",
    "length_figure": "plots",
    "training_figure": "plots",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
