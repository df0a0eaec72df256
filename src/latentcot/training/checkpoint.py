"""Checkpoints without pickle: trainable weights and optimizer tensors in safetensors, the rest in JSON.

Layout of a checkpoint directory:
    trainable.safetensors   only the trainable weights (frozen models are never saved)
    optimizer.safetensors   the optimizer's per-parameter tensors, flattened as "state.<idx>.<key>"
    state.json              step, data position, optimizer param groups and scalar state, Python RNG state
    rng.safetensors         torch CPU (and CUDA) RNG states
A checkpoint is written to a temporary directory and renamed into place, so a killed run never leaves a
half-written one.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from latentcot.errors import CheckpointError

WEIGHTS = "trainable.safetensors"


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))


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
    """Atomically writes a full training checkpoint to `directory`."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_weights(weights, tmp / WEIGHTS)
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = s
    save_file(rng, str(tmp / "rng.safetensors"))
    py_state = random.getstate()
    full = {**state, "optimizer": opt_meta, "python_random": [py_state[0], list(py_state[1]), py_state[2]]}
    (tmp / "state.json").write_text(json.dumps(full, indent=1))
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    if old.exists():
        shutil.rmtree(old)


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
