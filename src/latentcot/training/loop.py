"""The one training loop: gradient accumulation, clipping, warmup + schedule, evaluation cadence,
checkpoint/resume, JSONL metrics, a progress bar.

Only the method's trainable parameters enter the optimizer; frozen models keep no gradients and no optimizer
state. The data order is a seeded permutation per epoch and the checkpoint records the position in it, so a
killed and resumed run ends with bit-identical weights to an uninterrupted one (on CPU).
"""

from __future__ import annotations

import json
import logging
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from latentcot.config import check
from latentcot.methods.base import Method
from latentcot.tasks.base import Example, Task
from latentcot.training.checkpoint import load_checkpoint, save_checkpoint, save_weights

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Attributes:
    lr: peak learning rate.
    epochs: passes over the training examples (ignored when max_steps > 0).
    max_steps: optimizer steps in all (0 = from epochs).
    train_batch_size: examples per micro-batch.
    grad_accum: micro-batches per optimizer step (effective batch = train_batch_size x grad_accum).
    max_grad_norm: gradient clipping (0 = off).
    warmup_steps: linear warmup steps.
    schedule: "constant", "linear" (decay to 0) or "cosine".
    weight_decay: AdamW weight decay.
    adam_beta2: AdamW beta2.
    eval_every: evaluate every N optimizer steps (0 = only at the end).
    save_every: checkpoint every N optimizer steps (0 = only at the end).
    log_every: write a metrics line every N optimizer steps.
    train_limit: use only the first N training examples (0 = all).
    """

    lr: float = 2e-5
    epochs: float = 1.0
    max_steps: int = 0
    train_batch_size: int = 4
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    schedule: str = "constant"
    weight_decay: float = 0.0
    adam_beta2: float = 0.999
    eval_every: int = 0
    save_every: int = 100
    log_every: int = 10
    train_limit: int = 0

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(self.train_batch_size >= 1, "train_batch_size", f"must be >= 1, got {self.train_batch_size}")
        check(self.grad_accum >= 1, "grad_accum", f"must be >= 1, got {self.grad_accum}")
        check(self.epochs > 0 or self.max_steps > 0, "epochs", "epochs or max_steps must be > 0")
        check(self.schedule in ("constant", "linear", "cosine"), "schedule", f"must be constant, linear or cosine, got {self.schedule!r}")
        check(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based): linear warmup, then the schedule."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_order(n: int, epoch: int, seed: int) -> list[int]:
    """The data order of one epoch: a permutation fixed by (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def make_optimizer(method: Method, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for _, p in method.trainable_parameters()]
    if not params:
        raise ValueError(f"method {method.name!r} has no trainable parameters")
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, cfg.adam_beta2))


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(
    method: Method,
    task: Task,
    examples: Sequence[Example],
    cfg: TrainConfig,
    out_dir: Path,
    seed: int = 0,
    evaluate: Callable[[int], dict[str, Any]] | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Trains `method` on `examples`, resuming from `out_dir/checkpoint` when it exists.

    Args:
        method: a method with trainable parameters and a `loss`.
        task: gives prompts and targets.
        examples: the training set (order is shuffled per epoch by `seed`).
        cfg: optimisation settings.
        out_dir: run directory; receives checkpoint/, final weights (trainable.safetensors), train_log.jsonl.
        seed: data order and initialisation seed.
        evaluate: called with the step at the eval cadence and at the end; its dict is logged.
        progress: show a progress bar.
        stop_after: stop (after checkpointing) once this many optimizer steps are done in all (tests, kill/resume).
    Returns:
        summary: steps, final loss, seconds, peak memory.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not examples:
        raise ValueError("no training examples")
    n = len(examples)
    per_epoch = max(1, n // (cfg.train_batch_size * cfg.grad_accum))
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, int(round(cfg.epochs * per_epoch)))
    opt = make_optimizer(method, cfg)
    ckpt = out_dir / "checkpoint"
    step, epoch, pos = 0, 0, 0
    before = {"seconds": 0.0, "peak_rss_mib": 0.0}  # what earlier processes of this run spent (resume)
    if (ckpt / "state.json").is_file():
        weights, st = load_checkpoint(ckpt, opt)
        method.load_trainable_state_dict(weights, str(ckpt))
        step, epoch, pos = st["step"], st["epoch"], st["pos"]
        before = {k: float(st.get(k, 0.0)) for k in before}
        log.info("resumed from %s at step %d", ckpt, step)
        if step >= total:
            log.info("training already complete (%d steps)", step)
    log_path = out_dir / "train_log.jsonl"
    method.train()
    order = epoch_order(n, epoch, seed)
    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=step, desc=f"train {method.name}", disable=not progress, dynamic_ncols=True)
    last: dict[str, Any] = {}

    def spent() -> dict[str, float]:
        """Training seconds and peak memory of the whole run so far, across resumed processes."""
        return {"seconds": round(before["seconds"] + time.perf_counter() - t0, 3),
                "peak_rss_mib": round(max(before["peak_rss_mib"], peak_rss_mib()), 1)}

    def checkpoint() -> None:
        save_checkpoint(ckpt, method.trainable_state_dict(), opt,
                        {"step": step, "epoch": epoch, "pos": pos, "total": total, **spent()})

    while step < total:
        if method.begin_step(step, total):
            opt = make_optimizer(method, cfg)
            log.info("optimizer reset at step %d", step)
        factor = lr_factor(step, total, cfg.warmup_steps, cfg.schedule)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * factor
        opt.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        total_weight = 0.0
        for _ in range(cfg.grad_accum):
            if pos + cfg.train_batch_size > n:
                epoch, pos = epoch + 1, 0
                order = epoch_order(n, epoch, seed)
            batch = [examples[i] for i in order[pos : pos + cfg.train_batch_size]]
            pos += cfg.train_batch_size
            out = method(batch, task)  # Method.forward
            (out.loss * out.weight).backward()
            total_weight += out.weight
            for k, v in out.logs.items():
                logs[k] = logs.get(k, 0.0) + v * out.weight
        logs = {k: v / total_weight for k, v in logs.items()}
        params = [p for _, p in method.trainable_parameters()]
        for p in params:  # sum of weighted micro-batch means / total weight = the mean over the whole step
            if p.grad is not None:
                p.grad.div_(total_weight)
        if cfg.max_grad_norm > 0:
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}")
        last = {"step": step, "epoch": epoch, "lr": opt.param_groups[0]["lr"], **logs}
        if cfg.log_every and (step % cfg.log_every == 0 or step == total):
            _append(log_path, {**last, **spent()})
        if evaluate is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < total:
            _append(log_path, {"step": step, "eval": evaluate(step)})
            method.train()
        if (cfg.save_every and step % cfg.save_every == 0) or step == total or (stop_after is not None and step >= stop_after):
            checkpoint()
        if stop_after is not None and step >= stop_after and step < total:
            bar.close()
            return {"steps": step, "stopped_early": True, **last}
    bar.close()
    save_weights(method.trainable_state_dict(), out_dir / "trainable.safetensors")
    summary = {
        "steps": step,
        "total_steps": total,
        **spent(),
        "trainable_parameters": sum(p.numel() for _, p in method.trainable_parameters()),
        **{k: v for k, v in last.items() if k not in ("step",)},
    }
    if evaluate is not None:
        summary["eval"] = evaluate(step)
        _append(log_path, {"step": step, "eval": summary["eval"]})
    method.eval()
    (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
