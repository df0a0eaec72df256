"""Errors a user can cause. The CLI turns each into one line on stderr and exit status 2."""


class LatentCotError(Exception):
    """Base class of user-facing errors: the message names the problem and the fix."""


class ConfigError(LatentCotError):
    """A config field has a bad value, an unknown key, or the wrong type."""


class UnknownNameError(LatentCotError):
    """A registry lookup (method, task, model alias, ...) found no such name."""


class DataError(LatentCotError):
    """A data file is missing, malformed, or a selection is empty."""


class ModelError(LatentCotError):
    """A model cannot be loaded, or two models are incompatible."""


class CheckpointError(LatentCotError):
    """A checkpoint is missing, truncated, not safetensors, or does not fit the models."""
