"""charmt: character-level recurrent sequence-to-sequence translation.

    import charmt
    charmt.train("fra-eng.zip", "models/fra", preset="tiny")
    print(charmt.Translator.load("models/fra").translate(["I am cold."]))
"""

import os

# oneDNN keeps one compiled kernel per input shape, 1,024 by default; with length-bucketed batches nearly every
# batch has a new shape, and those kernels grew a `base` training process past 3 GB. 64 keeps it near 1.5 GB at the
# same speed (benchmarks/RESULTS.md). Set before torch first uses oneDNN; a value the user set is kept.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")

from .data import SelectionConfig  # noqa: E402
from .decode import Translator  # noqa: E402
from .errors import CharmtError  # noqa: E402
from .model import ModelConfig  # noqa: E402
from .train import TrainConfig, train  # noqa: E402

__version__ = "0.1.0"
__all__ = ["CharmtError", "ModelConfig", "SelectionConfig", "TrainConfig", "Translator", "train", "__version__"]
