"""Checks a run makes before it writes anything: output path, device, resume settings, context length.

`evaluate_run`, `train_run` and `score_file` call these after resolving settings and before the first file is
written, so a mistake costs one line on stderr and leaves the output directory as it was.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latentcot.errors import ConfigError, DataError, ModelError

log = logging.getLogger(__name__)


def check_out_dir(path: Path, field: str = "out") -> None:
    """Refuses an output path that is a file or cannot be created, without creating anything."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{field}: {path} is an existing file, not a directory: pass a directory path")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{field}: cannot create {path}: {probe} is a file; pass another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{field}: cannot write to {probe} (permission denied); pass another path")


# The files that say what kind of run a directory holds (`run_kind`).
TRAINING_FILES = ("train_config.yaml", "checkpoint", "trainable.safetensors", "train_log.jsonl")
RESULT_FILES = ("samples.jsonl", "metrics.json")
RUN_KINDS = {
    "training": "a training run",
    "evaluation": "an evaluation run",
    "score": "a score run",
    "unknown": "results without a config.yaml",
}


def run_kind(out_dir: Path) -> str | None:
    """The kind of run whose files `out_dir` holds (a key of `RUN_KINDS`), or None when it holds none.

    A training run's files win (an evaluation may share its directory); a config.yaml with a `score:` section is
    a score run's, any other an evaluation's; samples.jsonl or metrics.json without a config.yaml are "unknown".
    """
    out_dir = Path(out_dir)
    if any((out_dir / name).exists() for name in TRAINING_FILES):
        return "training"
    if (out_dir / "config.yaml").is_file():
        return "score" if "score" in read_back_yaml(out_dir / "config.yaml") else "evaluation"
    if any((out_dir / name).exists() for name in RESULT_FILES):
        return "unknown"
    return None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A run's saved settings as {"section.key": value} (one level: a nested value within a section stays whole)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and prefix == "":
            out.update(flatten(v, f"{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def first_difference(old: dict[str, Any], new: dict[str, Any], free: Callable[[str], bool]) -> str | None:
    """The first key (in sorted order) whose value differs between two flattened settings, keys `free` aside."""
    return next((k for k in sorted(set(old) | set(new)) if not free(k) and old.get(k) != new.get(k)), None)


def other_settings(out_dir: Path, key: str, there: Any, now: Any, resume: str | None = None) -> ConfigError:
    """The refusal of a run directory made with other settings: the first differing one (`key`) with its value
    there and now, and the ways on (`resume`: how to continue that run, when a setting can say it)."""
    how = f"{resume}, " if resume else ""
    return ConfigError(
        f"{out_dir} holds a run with other settings ({key}: {there!r} there, {now!r} now): "
        f"{how}pass another --out, or delete that directory to start over"
    )


def check_device(name: str) -> None:
    """Refuses `device=cuda` (or cuda:N) where no such GPU is visible."""
    if not name.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"device: {name} was asked for but no CUDA GPU is available here; use device=cpu or device=auto")
    if ":" in name:
        index = name.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise ConfigError(f"device: {name} does not exist ({torch.cuda.device_count()} GPU(s) here)")


def read_back_yaml(path: Path) -> dict[str, Any]:
    """A YAML file this toolkit wrote earlier (a run's config); a damaged one is one clear error."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path} is damaged ({first}): delete it (or the run directory) to start over") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(f"{path} is damaged (not a mapping of settings): delete it to start over")
    return data


def read_back_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is damaged ({e}): delete it to start over") from None


def thought_positions(method: Any) -> int:
    """Positions a method always adds beyond the prompt and the answer budget (continuous thoughts)."""
    n = getattr(method, "eval_thoughts", None)
    if isinstance(n, int):
        return n
    cfg = getattr(method, "cfg", None)
    value = getattr(cfg, "num_thoughts", None)
    return value if isinstance(value, int) else 0


def check_context(method: Any, task: Any, examples: list[Any], max_new_tokens: int) -> None:
    """Refuses a generation that would run past the model's positions: longest prompt + thoughts + budget."""
    limit = method.backbone.max_context
    if limit is None:
        return
    thoughts = thought_positions(method)
    longest, which = 0, None
    for ex in examples:
        n = len(method.prompt_ids(ex, task))
        if n > longest:
            longest, which = n, ex
    need = longest + thoughts + max_new_tokens
    if need > limit:
        raise ModelError(
            f"question {which.id if which else '?'} needs {need} positions (prompt {longest} + thoughts {thoughts} + "
            f"max_new_tokens {max_new_tokens}) but the model has {limit}: lower max_new_tokens"
            + (" or num_thoughts" if thoughts else "") + " or use a model with a longer context"
        )


def warn_untrained(method: Any, weights: str | None) -> str | None:
    """A one-line warning when a method with trainable parts is evaluated without trained weights."""
    if not getattr(method, "trains", False) or weights:
        return None
    if getattr(method, "starts_as_model", False):
        msg = (f"method {method.name}: no weights= was given, so this evaluates its start model (the model as "
               f"loaded), not a trained run (train with `latentcot train`, then pass weights=RUN_DIR)")
    else:
        msg = (f"method {method.name} has trainable parts but no weights= was given: they are untrained, so these "
               f"results are not the method's (train with `latentcot train`, then pass weights=RUN_DIR)")
    log.warning(msg)
    return msg
