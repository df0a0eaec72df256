"""Arguments shared by `eval` and `train` (the run's names, config file and key=value settings), and what the benches
and recipes share with the CLI: argparse types for whole numbers and the way a script ends on a user's error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_run_arguments(p: argparse.ArgumentParser, limit: str = "first N questions (0 = all)") -> None:
    p.add_argument("--method", help="method name (latentcot ls methods)")
    p.add_argument("--model", help="model alias, local dir, .gguf file or hub id (latentcot ls models)")
    p.add_argument("--task", help="task name (latentcot ls tasks)")
    p.add_argument("--limit", type=int, help=limit)
    p.add_argument("--out", help="output directory (re-running with the same one resumes)")
    p.add_argument("--config", help="YAML file of settings (key=value arguments win over it)")
    p.add_argument("--data-dir", help="benchmark data directory (default $LATENTCOT_DATA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--smoke", action="store_true",
                   help="tiny models and a few steps (a recipe's smoke: section on top): checks that a recipe runs")
    p.add_argument("settings", nargs="*", metavar="key=value", help="any config field, e.g. temperature=0.7 num_thoughts=6")


def require_method(values: dict[str, Any], config: str | None, command: str) -> None:
    """`eval`/`train` never fall back to a default method: the user names one."""
    from latentcot.config import load_yaml
    from latentcot.errors import ConfigError

    if "method" in values or "run.method" in values:
        return
    data = load_yaml(config) if config else {}
    run = data.get("run") if isinstance(data.get("run"), dict) else {}
    if isinstance(data.get("method"), str) or "method" in run:
        return
    raise ConfigError(f"{command} needs a method: pass --method NAME (see `latentcot ls methods`)")


def collect(args: argparse.Namespace) -> dict[str, Any]:
    from latentcot.config import parse_kv

    values: dict[str, Any] = parse_kv(args.settings)
    for key in ("method", "model", "task", "limit", "out"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.data_dir:
        values["data_dir"] = args.data_dir
    if args.no_progress:
        values["progress"] = False
    return values


def _whole_number(text: str, least: int) -> int:
    """`text` as an integer >= least, or argparse's one-line error (exit 2)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}") from None
    if n < least:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {n}")
    return n


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad one is argparse's one-line error and exit 2)."""
    return _whole_number(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _whole_number(text, 0)


def positive_ints(text: str) -> list[int]:
    """argparse type: comma-separated integers >= 1, e.g. "8,32"."""
    try:
        return [positive_int(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1 separated by commas, got {text!r}") from None


def guarded(call: Callable[[], int | None], name: str, resumable: bool = False) -> int:
    """call() ended the way every entry point ends (the CLI's commands, the benches, the recipes); its exit status.

    An error a user can cause (an unknown model, a missing file, a setting the method refuses: `errors.user_error`)
    is one line on stderr, `NAME: error: ...`, and status 2; any other error keeps its traceback. A reader that
    closes the output early (`latentcot ls tasks | head`) is one line and status 2; Ctrl-C one line (saying that the
    same command resumes, when `resumable`) and status 130."""
    from latentcot.errors import user_error

    try:
        return int(call() or 0)
    except BrokenPipeError:
        _silence_stdout()
        print(f"{name}: error: output closed early (broken pipe)", file=sys.stderr)
        return 2
    except Exception as e:
        message = user_error(e)
        if message is None:
            raise
        print(f"{name}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted" + ("; re-run the same command to resume" if resumable else ""), file=sys.stderr)
        return 130


def run_script(main: Callable[[], None], resumable: bool = False) -> None:
    """Runs a script's `main` (a bench, a recipe) through `guarded`, named after the script, and exits with its
    status. Like the `latentcot` command, a script keeps freed heap memory for reuse (`latentcot.heap`)."""
    from latentcot.heap import keep_freed_memory

    keep_freed_memory()
    raise SystemExit(guarded(main, Path(sys.argv[0]).name, resumable))


def _silence_stdout() -> None:
    """Points stdout at /dev/null so the interpreter's final flush cannot raise a second BrokenPipeError."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # in-process (tests): stdout is not a real file
        pass
