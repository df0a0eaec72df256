"""The one training loop: gradient accumulation, clipping, warmup + schedule, evaluation cadence,
checkpoint/resume, JSONL metrics, a progress bar.

Only the method's trainable parameters enter the optimizer; frozen models keep no gradients and no optimizer
state. The data order is a seeded permutation per epoch and the checkpoint records the position in it, so a
killed and resumed run ends with bit-identical weights to an uninterrupted one (on CPU).

Under `accelerate launch` (or torchrun) with P processes the loop calls the method through its DDP / FSDP /
DeepSpeed wrapper (`training/distributed.py`): each optimizer step takes global = per-device micro-batch x
grad_accum x P examples, process r the r-th slice of each micro-batch of the single-process order, and the
token-weighted mean is taken over all of them, so P processes give the weights one process gets at the same
global batch. Only the main process writes checkpoints, logs and weights; a resume uses the same launch.
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

from latentcot import atomic
from latentcot.config import check
from latentcot.errors import ConfigError
from latentcot.methods.base import Method
from latentcot.tasks.base import Example, Task
from latentcot.training.checkpoint import load_checkpoint, repair_checkpoint, save_checkpoint, save_weights
from latentcot.training.distributed import MIXED_PRECISION, Runtime, launched_world_size, split_global_batch

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
    adam_beta1 / adam_beta2: AdamW's betas (beta1: how many steps the first moment averages over, about
        1 / (1 - beta1); beta2: the same for the second moment).
    eval_every: evaluate every N optimizer steps (0 = only at the end).
    save_every: checkpoint every N optimizer steps (0 = only at the end).
    log_every: write a metrics line every N optimizer steps.
    train_limit: use only the first N training examples (0 = all).
    global_batch_size: examples per optimizer step over all processes (0 = train_batch_size x grad_accum x
        processes); when set, the per-device micro-batch is derived from it and must come out whole.
    mixed_precision: "no", "bf16" or "fp16" (autocast through accelerate; fp16 with loss scaling).
    gradient_checkpointing: recompute activations in the backward pass (less memory, about 1/3 more compute).
    find_unused_parameters: DDP's option, for methods whose steps leave some trainable weights unused.
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
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    eval_every: int = 0
    save_every: int = 100
    log_every: int = 10
    train_limit: int = 0
    global_batch_size: int = 0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(self.train_batch_size >= 1, "train_batch_size", f"must be >= 1, got {self.train_batch_size}")
        check(self.grad_accum >= 1, "grad_accum", f"must be >= 1, got {self.grad_accum}")
        check(self.epochs > 0 or self.max_steps > 0, "epochs", "epochs or max_steps must be > 0")
        check(self.schedule in ("constant", "linear", "cosine"), "schedule", f"must be constant, linear or cosine, got {self.schedule!r}")
        check(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0 (0 = off), got {self.weight_decay}")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            beta = getattr(self, name)
            check(0 <= beta < 1, name, f"must be in [0, 1), got {beta}")
        check(self.global_batch_size >= 0, "global_batch_size", f"must be >= 0 (0 = derived), got {self.global_batch_size}")
        check(self.mixed_precision in MIXED_PRECISION, "mixed_precision",
              f"must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}")


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


class BatchStream:
    """Which examples each optimizer step trains on: the one definition of a run's data order.

    Each step takes `grad_accum` micro-batches; a micro-batch spans `micro` examples of every one of `world`
    processes, consecutive in the epoch's permutation (`epoch_order`), process `rank` taking the rank-th slice. A
    micro-batch that would run past the end of the epoch starts the next one (the tail is dropped). (epoch, pos) is
    the whole state: a run checkpoints it and resumes from it, and a replay of a run's steps (e.g.
    `recipes/rloo_paired_base.py`) walks the same stream from (0, 0).
    """

    def __init__(self, n: int, micro: int, grad_accum: int, seed: int, world: int = 1, rank: int = 0,
                 epoch: int = 0, pos: int = 0) -> None:
        self.n, self.micro, self.grad_accum, self.seed, self.world, self.rank = n, micro, grad_accum, seed, world, rank
        self.epoch, self.pos = epoch, pos
        self.order = epoch_order(n, epoch, seed)

    def next_step(self) -> list[list[int]]:
        """This process's micro-batches (example indices) of the next optimizer step; advances the stream."""
        batches = []
        span = self.micro * self.world  # one micro-batch of every process
        for _ in range(self.grad_accum):
            if self.pos + span > self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self.order = epoch_order(self.n, self.epoch, self.seed)
            mine = self.pos + self.rank * self.micro
            batches.append(self.order[mine : mine + self.micro])
            self.pos += span
        return batches


def make_optimizer(method: Method, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for _, p in method.trainable_parameters()]
    if not params:
        raise ValueError(f"method {method.name!r} has no trainable parameters")
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.adam_beta1, cfg.adam_beta2))


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
    if not examples:
        raise ValueError("no training examples")
    n = len(examples)
    micro, global_batch = split_global_batch(cfg.global_batch_size, cfg.train_batch_size, cfg.grad_accum,
                                             launched_world_size())
    rt = Runtime(cfg.mixed_precision, cfg.find_unused_parameters, cfg.grad_accum)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_epoch = max(1, n // global_batch)
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, int(round(cfg.epochs * per_epoch)))
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(method)
    opt = make_optimizer(method, cfg)
    ckpt = out_dir / "checkpoint"
    step, epoch, pos = 0, 0, 0
    before = {"seconds": 0.0, "peak_rss_mib": 0.0}  # what earlier processes of this run spent (resume)
    last: dict[str, Any] = {}  # the last optimizer step's logs (loss, lr, grad_norm, ...): the summary reports them
    log_path = out_dir / "train_log.jsonl"
    if rt.is_main:  # one process puts back what a kill left; the others wait for it
        atomic.clean_temporaries(out_dir)
        repair_checkpoint(ckpt)
    rt.wait()
    if (ckpt / "state.json").is_file():
        weights, st = load_checkpoint(ckpt, opt)
        if st.get("global_batch", global_batch) != global_batch:
            raise ConfigError(f"global_batch_size: {ckpt} was made with {st['global_batch']} examples per step, now "
                              f"{global_batch}: resume with the same global batch (per-device x grad_accum x processes)")
        method.load_trainable_state_dict(weights, str(ckpt))
        step, epoch, pos = st["step"], st["epoch"], st["pos"]
        before = {k: float(st.get(k, 0.0)) for k in before}
        last = dict(st.get("last") or {})  # checkpoints made before it was recorded have none
        log.info("resumed from %s at step %d", ckpt, step)
        if step >= total:
            log.info("training already complete (%d steps)", step)
    if rt.is_main:
        log.info("global batch %d = %d per device x %d accumulation x %d processes (%s)", global_batch, micro,
                 cfg.grad_accum, rt.world, rt.kind)
        trim_log(log_path, step)
    done = finished_summary(out_dir, step, total, evaluate is not None)
    if done is not None:  # a re-run of a finished run: its summary stands as written
        method.eval()
        return done
    model = rt.wrap(method)  # what is called: the method, or its DDP / FSDP wrapper
    opt = rt.optimizer(opt)
    method.train()
    stream = BatchStream(n, micro, cfg.grad_accum, seed, rt.world, rt.rank, epoch, pos)
    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=step, desc=f"train {method.name}",
               disable=not progress or not rt.is_main, dynamic_ncols=True)

    def spent() -> dict[str, float]:
        """Training seconds and peak memory of the whole run so far, across resumed processes."""
        return {"seconds": round(before["seconds"] + time.perf_counter() - t0, 3),
                "peak_rss_mib": round(max(before["peak_rss_mib"], peak_rss_mib()), 1)}

    def checkpoint() -> None:
        if rt.is_main:
            save_checkpoint(ckpt, method.trainable_state_dict(), opt,
                            {"step": step, "epoch": epoch, "pos": pos, "total": total, "global_batch": global_batch,
                             "last": last, **spent()})
        rt.wait()

    while step < total:
        if method.begin_step(step, total):
            opt = rt.optimizer(make_optimizer(method, cfg))
            log.info("optimizer reset at step %d", step)
        first, length = method.schedule_window(step, total)
        factor = lr_factor(step - first, length, cfg.warmup_steps, cfg.schedule)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * factor
        opt.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        total_weight = 0.0
        batches = [[examples[i] for i in part] for part in stream.next_step()]
        epoch, pos = stream.epoch, stream.pos
        # A loss whose terms are means over different units (CODI) is normalised by the step's totals over every
        # process, counted before any forward; each micro-batch's loss is then its share of the step's mean.
        units = method.step_units(batches, task)
        if units is not None:
            unit_keys = sorted(units)
            units = dict(zip(unit_keys, rt.sum([units[k] for k in unit_keys])))
        method.step_totals = units
        for j, batch in enumerate(batches):
            with rt.no_sync(model, skip=j < cfg.grad_accum - 1):
                out = model(batch, task)  # Method.forward (through DDP / FSDP when launched)
                rt.backward(out.loss * out.weight if units is None else out.loss)
            total_weight += out.weight
            for k, v in out.logs.items():
                logs[k] = logs.get(k, 0.0) + v * out.weight
        method.step_totals = None
        keys = sorted(logs)
        sums = rt.sum([total_weight] + [logs[k] for k in keys])  # over processes
        total_weight, logs = sums[0], {k: v / sums[0] for k, v in zip(keys, sums[1:])}
        if units is not None:
            total_weight = 1.0  # the shares already sum to the step's mean
        params = [p for _, p in method.trainable_parameters()]
        rt.unscale(opt)
        # The all-reduce averaged the processes' sums over their micro-batches of weighted means; x P / total
        # weight = the token-weighted mean over the whole global batch (on one process: sum / total weight).
        for p in params:
            if p.grad is not None:
                p.grad.div_(total_weight / rt.world)
        if cfg.max_grad_norm > 0:
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}")
        last = {"step": step, "epoch": epoch, "lr": opt.param_groups[0]["lr"], **logs}
        if cfg.log_every and (step % cfg.log_every == 0 or step == total):
            if rt.is_main:
                _append(log_path, {**last, **spent()})
        if evaluate is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < total:
            if rt.is_main:
                _append(log_path, {"step": step, "eval": evaluate(step)})
                method.train()
            rt.wait()
        if (cfg.save_every and step % cfg.save_every == 0) or step == total or (stop_after is not None and step >= stop_after):
            checkpoint()
        if stop_after is not None and step >= stop_after and step < total:
            bar.close()
            return {"steps": step, "stopped_early": True, **last}
    bar.close()
    if rt.is_main:
        save_weights(method.trainable_state_dict(), out_dir / "trainable.safetensors")
    summary = {
        "steps": step,
        "total_steps": total,
        "global_batch": global_batch,
        "processes": rt.world,
        **spent(),
        "trainable_parameters": sum(p.numel() for _, p in method.trainable_parameters()),
        **{k: v for k, v in last.items() if k not in ("step",)},
    }
    if evaluate is not None and rt.is_main:
        summary["eval"] = evaluate(step)
        _append(log_path, {"step": step, "eval": summary["eval"]})
    method.eval()
    if rt.is_main:
        atomic.write_json(out_dir / "train_summary.json", summary)
    rt.wait()
    return summary


def finished_summary(out_dir: Path, step: int, total: int, evaluates: bool) -> dict[str, Any] | None:
    """The summary a finished run wrote, when this process resumed it at its last step; None when there is training
    (or a summary) left to do: no summary, a damaged one, one of another step count, or one without the `eval` asked
    for now."""
    path = out_dir / "train_summary.json"
    if step < total or not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("steps") != step or (evaluates and "eval" not in summary):
        return None
    return summary


def enable_gradient_checkpointing(method: Method) -> None:
    """Activation checkpointing on every HF model the method trains through (non-reentrant, so frozen inputs and
    LoRA work)."""
    from transformers import PreTrainedModel

    for m in method.modules():
        if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing:
            if hasattr(m, "activation_checkpointing_enable"):  # the newer transformers name
                m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _append(path: Path, row: dict[str, Any]) -> None:
    atomic.append_json(path, [row])


def trim_log(path: Path, step: int) -> None:
    """Keeps the log rows of steps <= `step` (the checkpoint a run resumes from): each step is logged once.

    Rows written after the last checkpoint by a killed process are redone by the resumed one; a torn or
    unreadable line is dropped with them (the log is rebuilt, never trusted past the checkpoint).
    """
    if not path.is_file():
        return
    keep: list[str] = []
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(line)
    if keep != lines:
        atomic.write_text(path, "".join(keep))
