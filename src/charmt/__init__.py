"""charmt: character-level recurrent sequence-to-sequence translation.

    import charmt
    charmt.train("fra-eng.zip", "models/fra", preset="tiny")
    print(charmt.Translator.load("models/fra").translate(["I am cold."]))
"""

from .data import SelectionConfig
from .decode import Translator
from .errors import CharmtError
from .model import ModelConfig
from .train import TrainConfig, train

__version__ = "0.1.0"
__all__ = ["CharmtError", "ModelConfig", "SelectionConfig", "TrainConfig", "Translator", "train", "__version__"]
