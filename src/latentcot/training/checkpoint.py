"""Checkpoints without pickle: trainable weights and optimizer tensors in safetensors, the rest in JSON.

Layout of a checkpoint directory:
    trainable.safetensors   only the trainable weights (frozen models are never saved)
    optimizer.safetensors   the optimizer's per-parameter tensors, flattened as "state.<idx>.<key>"
    state.json              step, data position, optimizer param groups and scalar state, Python RNG state
    rng.safetensors         torch CPU (and CUDA) RNG states
A checkpoint is written to `checkpoint.tmp/` (state.json last) and published with one rename; the previous
one is set aside as `checkpoint.old/` just before and removed only after. `repair_checkpoint` turns whatever a
kill can leave (a torn temporary, a set-aside old one, no `checkpoint/` at all) back into one complete
checkpoint, the newest that was fully written, before a run reads it.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from latentcot import atomic
from latentcot.errors import CheckpointError

log = logging.getLogger(__name__)

WEIGHTS = "trainable.safetensors"
FILES = (WEIGHTS, "optimizer.safetensors", "rng.safetensors", "state.json")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Writes a safetensors file atomically."""
    atomic.write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    save_tensors(state, path)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads a safetensors weights file (a directory: its trainable.safetensors); CheckpointError if unreadable."""
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {p} is not a readable safetensors file ({e}): re-save or re-train it") from None


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for idx, d in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(d)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    directory: Path,
    weights: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    """Writes a full training checkpoint to `directory`, replacing the previous one crash-safely."""
    directory = Path(directory)
    tmp, old = _siblings(directory)
    repair_checkpoint(directory)  # at most `directory` is left: no stale temporary, no set-aside old one
    tmp.mkdir(parents=True)
    save_weights(weights, tmp / WEIGHTS)
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    save_tensors(opt_tensors, tmp / "optimizer.safetensors")
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = s
    save_tensors(rng, tmp / "rng.safetensors")
    py_state = random.getstate()
    full = {**state, "optimizer": opt_meta, "python_random": [py_state[0], list(py_state[1]), py_state[2]]}
    atomic.write_json(tmp / "state.json", full)  # last: its presence marks the temporary complete
    if directory.exists():
        atomic._replace(directory, old)
    atomic.publish_dir(tmp, directory)
    atomic.remove_tree(old)


def _siblings(directory: Path) -> tuple[Path, Path]:
    return directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")


def is_complete(directory: Path) -> bool:
    """True when `directory` holds every checkpoint file and a readable state.json (written last)."""
    if not directory.is_dir() or not all((directory / f).is_file() for f in FILES):
        return False
    try:
        json.loads((directory / "state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def repair_checkpoint(directory: Path) -> bool:
    """Restores the state a kill inside `save_checkpoint` can leave; returns whether a complete checkpoint exists.

    The newest fully written checkpoint wins: `directory` if complete, else a complete `.tmp` (killed between
    setting the old one aside and publishing), else a complete `.old`. Leftovers are removed after. A
    `directory` that exists but is incomplete was not made by this code: CheckpointError, never a silent restart.
    """
    directory = Path(directory)
    tmp, old = _siblings(directory)
    if not directory.exists():
        for candidate in (tmp, old):
            if is_complete(candidate):
                log.warning("%s: restoring the checkpoint from %s left by a killed run", directory, candidate.name)
                atomic._replace(candidate, directory)
                atomic.fsync_dir(directory.parent)
                break
    for leftover in (tmp, old):
        if leftover.exists():
            log.info("removing %s left by a killed run", leftover)
            atomic.remove_tree(leftover)
    check_checkpoint(directory)
    return directory.exists()


def check_checkpoint(directory: Path) -> None:
    """Read-only: CheckpointError when `directory` exists but is not a complete checkpoint (never a silent
    restart from step 0). A run calls it before writing anything."""
    directory = Path(directory)
    if directory.exists() and not is_complete(directory):
        missing = [f for f in FILES if not (directory / f).is_file()]
        what = f"lacks {', '.join(missing)}" if missing else "has an unreadable state.json"
        raise CheckpointError(f"checkpoint {directory} {what}: restore it, or delete it to restart training from step 0")


def load_checkpoint(directory: Path, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Reads a checkpoint: returns (trainable weights, state); restores optimizer and RNG states in place."""
    directory = Path(directory)
    weights = load_weights(directory / WEIGHTS)
    try:
        state = json.loads((directory / "state.json").read_text())
        opt_tensors = load_file(str(directory / "optimizer.safetensors"))
        rng = load_file(str(directory / "rng.safetensors"))
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointError(f"checkpoint {directory} is incomplete or damaged ({e}): delete it to restart") from None
    optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, state.pop("optimizer")))
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if states:
            torch.cuda.set_rng_state_all(states)
    v, internal, gauss = state.pop("python_random")
    random.setstate((v, tuple(internal), gauss))
    return weights, state
