"""`latentcot train --launch CONFIG`: checks an accelerate config and the global batch, then starts the same
command under `accelerate launch` (one process per device, as the config says).

The checks run before any process starts, so a missing or malformed config, or a process count that does not
divide the global batch, is one line and exit status 2 with nothing written.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from latentcot.errors import ConfigError

KINDS = ("NO", "MULTI_GPU", "MULTI_CPU", "FSDP", "DEEPSPEED", "MULTI_NPU", "MULTI_XPU", "MULTI_MLU", "XLA")


def read_accelerate_config(path: str) -> dict[str, Any]:
    """The config as a dict; ConfigError naming `--launch` when it is missing, not YAML, or lacks what a launch needs."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--launch: accelerate config {path} does not exist: pass one of configs/accelerate/*.yaml "
                          "or write one with `accelerate config --config_file FILE`")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"--launch: {path} is not valid YAML{line}: fix it or use one of configs/accelerate/*.yaml") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--launch: {path} must be a mapping of accelerate settings (distributed_type, num_processes, ...)")
    kind = data.get("distributed_type")
    if kind not in KINDS:
        raise ConfigError(f"--launch: {path} has distributed_type {kind!r}: use one of {', '.join(KINDS)}")
    n = data.get("num_processes")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"--launch: {path} has num_processes {n!r}: it must be a whole number >= 1")
    return data


def launch(config: str, num_processes: int | None, argv: list[str], global_batch: int, per_device: int, grad_accum: int) -> int:
    """Checks, then runs `accelerate launch --config_file config -m latentcot <argv>`; returns its exit status."""
    from latentcot.training.distributed import split_global_batch

    data = read_accelerate_config(config)
    world = num_processes or int(data["num_processes"])
    split_global_batch(global_batch, per_device, grad_accum, world)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config]
    if num_processes:
        cmd += ["--num_processes", str(num_processes)]
    if int(data.get("num_machines", 1) or 1) == 1:  # one node: a free port, so that two runs never collide
        cmd += ["--main_process_port", str(_free_port())]
    return subprocess.call(cmd + ["-m", "latentcot", *argv])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def strip_launch(argv: list[str]) -> list[str]:
    """The command line without --launch / --num-processes (what each launched process runs)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--launch", "--num-processes"):
            skip = True
            continue
        if a.startswith(("--launch=", "--num-processes=")):
            continue
        out.append(a)
    return out
