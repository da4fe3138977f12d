"""Errors the library raises. Each message says what went wrong and how to fix it; only the CLI turns
them into one line and an exit code."""


class CharmtError(Exception):
    """Base class of every error charmt raises on purpose."""


class DataError(CharmtError):
    """A data file cannot be read or holds no usable pair."""


class ModelFormatError(CharmtError):
    """A model directory is missing a file, or a file is truncated, foreign or of a newer format."""


class ConfigError(CharmtError):
    """An option or a combination of options is invalid."""


class DownloadError(CharmtError):
    """A corpus could not be downloaded; `transient` when trying again later may work."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class MachineError(CharmtError):
    """The hardware or the installed PyTorch cannot do what was asked (device, precision, memory)."""


# (what the error's type name or message contains, the explanation with its remedy)
_MACHINE_ERRORS = [
    (("Torch not compiled with CUDA enabled",),
     "this PyTorch has no CUDA support: use --device cpu, or install a CUDA build of PyTorch (see the README)"),
    (("OutOfMemoryError", "CUDA out of memory"),
     "the GPU ran out of memory: lower --batch-size (or --beam), or use --device cpu"),
    (("DefaultCPUAllocator: can't allocate memory", "MemoryError"),
     "the machine ran out of memory: lower --batch-size (or --beam), or free memory for charmt"),
    (("Found no NVIDIA driver", "CUDA driver version is insufficient", "no CUDA GPUs are available",
      "no kernel image is available", "CUDA error", "cuDNN error", "CUDNN_STATUS", "NCCL error"),
     "CUDA failed ({detail}): use --device cpu, or install the PyTorch build that matches your GPU and driver "
     "(see the README)"),
    (("could not create a primitive", "onednn", "mkldnn"),
     "this CPU cannot run that operation with oneDNN ({detail}): use --precision fp32"),
    (("No space left on device",),
     "the disk is full ({detail}): free some space or write elsewhere"),
]


def explain_machine_error(err: BaseException) -> MachineError | None:
    """A MachineError naming the cause and the remedy for an error PyTorch or the system raises about the
    user's setup (device, precision, memory, disk); None for any other error, which is a bug to report."""
    text = f"{type(err).__name__}: {err}"
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    for needles, explanation in _MACHINE_ERRORS:
        if any(needle.lower() in text.lower() for needle in needles):
            return MachineError(explanation.format(detail=detail))
    return None
