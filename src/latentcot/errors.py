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


def user_error(e: BaseException) -> str | None:
    """The one place that turns an error a user can cause into one line; None for a bug (keep the traceback).

    LatentCotError carries its own message. OS errors on a named path (missing, not a directory, no permission,
    disk full), YAML/JSON errors and unreadable text in files read back become a line naming the path.
    """
    if isinstance(e, LatentCotError):
        return str(e)
    if isinstance(e, OSError) and (e.filename or e.strerror):
        where = f" {e.filename}" if e.filename else ""
        extra = f" -> {e.filename2}" if getattr(e, "filename2", None) else ""
        return f"cannot use{where}{extra}: {e.strerror or e}; check the path and its permissions"
    import json

    if isinstance(e, json.JSONDecodeError):
        return f"a JSON file read back is damaged ({e}); delete or repair it"
    if isinstance(e, UnicodeDecodeError):
        return f"a file read back is not UTF-8 text ({e.reason}); pass a text file"
    try:
        import yaml
    except ImportError:  # pragma: no cover
        return None
    if isinstance(e, yaml.YAMLError):
        return f"a YAML file read back is damaged ({str(e).splitlines()[0]}); delete or repair it"
    return None
