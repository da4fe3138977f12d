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
    """A corpus could not be downloaded."""
