"""Arguments shared by `eval` and `train`: the run's names, config file and key=value settings."""

from __future__ import annotations

import argparse
from typing import Any


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help="method name (latentcot ls methods)")
    p.add_argument("--model", help="model alias, local dir, .gguf file or hub id (latentcot ls models)")
    p.add_argument("--task", help="task name (latentcot ls tasks)")
    p.add_argument("--limit", type=int, help="first N questions (0 = all)")
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
