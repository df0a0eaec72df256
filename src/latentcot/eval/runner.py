"""The evaluation runner: method x model x task x seeds x samples -> samples.jsonl + metrics.json.

`samples.jsonl` is appended batch by batch and flushed; re-running the same command reads it, skips every
(question, seed, sample) already there and finishes only what is missing. A line that is not a complete
record (cut short by a kill, or damaged anywhere in the file) is moved to `samples.rejected.jsonl`, named in a
warning and redone; every good line around it is kept.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from latentcot import atomic
from latentcot.decoding.sampling import GenerationConfig, RowRandom, row_seed
from latentcot.errors import ConfigError
from latentcot.eval.metrics import compute_metrics
from latentcot.methods.base import Method, generate_batched, output_row
from latentcot.tasks.base import Example, Task

log = logging.getLogger(__name__)

SAMPLES = "samples.jsonl"
METRICS = "metrics.json"


REJECTED = "samples.rejected.jsonl"
_REQUIRED = ("id", "seed", "sample")


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The complete records of a samples file. Bad lines are set aside, never used to cut the file.

    A line is bad when it does not end in a newline (a kill tore it), is not a JSON object, or lacks
    id/seed/sample. Bad lines are appended to `samples.rejected.jsonl` beside the file (with their line
    numbers), a warning names them, and the samples file is rewritten atomically without them.
    """
    if not path.is_file():
        return []
    good: list[dict[str, Any]] = []
    kept: list[str] = []
    bad: list[tuple[int, str]] = []
    for number, line in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines(keepends=True), 1):
        try:
            rec = json.loads(line) if line.endswith("\n") else None
        except ValueError:
            rec = None
        if isinstance(rec, dict) and all(k in rec for k in _REQUIRED):
            good.append(rec)
            kept.append(line)
        else:
            bad.append((number, line))
    if bad:
        side = path.with_name(REJECTED)
        atomic.append_json(side, [{"file": path.name, "line": n, "text": text.rstrip("\n")} for n, text in bad])
        lines = ", ".join(str(n) for n, _ in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        log.warning("%s: set aside %d unreadable line(s) (line %s) into %s; they will be redone",
                    path, len(bad), lines, side.name)
        atomic.write_text(path, "".join(kept))
    return good


def sample_key(qid: str, seed: int, sample: int) -> tuple[str, int, int]:
    return (str(qid), int(seed), int(sample))


def can_refill(method: Method) -> bool:
    """Whether the runner can refill `method`'s batches: its generation is one start state + the engine's token
    loop (`Method.refills`), decoded by the engine itself (not another backend such as vLLM)."""
    return bool(method.refills) and method.generator is method.engine


def _refill(method: Method, task: Task, todo, gen: GenerationConfig, batch_size: int, path: Path, bar) -> None:
    """Continuous batching over `todo`. Records are appended in `todo` order (as a static run writes them): each
    as soon as it and every earlier one have finished, batch_size records per write + fsync."""
    device = method.backbone.device

    def start(idx: list[int]):
        return method.start_state([todo[i][0] for i in idx], task)

    def streams(idx: list[int]) -> RowRandom:
        return RowRandom([row_seed(todo[i][1], todo[i][0].id, todo[i][2]) for i in idx], device)

    was = method.training
    method.eval()
    written = 0
    ready: dict[int, dict[str, Any]] = {}
    pending: list[dict[str, Any]] = []
    try:
        with torch.no_grad():
            for i, out in method.engine.generate_stream(start, len(todo), batch_size, gen, streams):
                ex, seed, s = todo[i]
                out = method.finish_outputs([ex], [out])[0]
                rec = {"id": ex.id, "seed": seed, "sample": s, "gold": ex.answer, **output_row(out)}
                rec.update(task.score(ex, out.text))
                ready[i] = rec
                bar.update(1)
                while written in ready:
                    pending.append(ready.pop(written))
                    written += 1
                if len(pending) >= batch_size:
                    atomic.append_json(path, pending)
                    pending = []
        if pending:
            atomic.append_json(path, pending)
    finally:
        method.train(was)


def evaluate(
    method: Method,
    task: Task,
    examples: Sequence[Example],
    gen: GenerationConfig,
    seeds: Sequence[int],
    out_dir: Path,
    batch_size: int = 8,
    progress: bool = True,
    ks: Sequence[int] | None = None,
    refill: bool = False,
) -> dict[str, Any]:
    """Generates every missing (question, seed, sample), appends the records, writes and returns metrics.

    With `refill` (continuous batching; needs `can_refill(method)`), a finished row's slot takes the next
    (question, seed, sample) at once instead of waiting for its whole batch; each row's output is the same as in
    a static batch, and records are appended as rows finish.
    """
    if len(set(seeds)) < len(seeds):  # each (question, seed, sample) is one record
        raise ConfigError(f"seeds: each seed once, got {', '.join(map(str, seeds))}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SAMPLES
    atomic.clean_temporaries(out_dir)
    done = {sample_key(r["id"], r["seed"], r["sample"]) for r in read_samples(path)}
    todo = [
        (ex, seed, s)
        for seed in seeds
        for ex in examples
        for s in range(gen.num_samples)
        if sample_key(ex.id, seed, s) not in done
    ]
    if done:
        log.info("resuming: %d samples done, %d to go", len(done), len(todo))
    bar = tqdm(total=len(todo), desc=f"eval {method.name} on {task.name}", disable=not progress, dynamic_ncols=True)
    if refill:
        _refill(method, task, todo, gen, batch_size, path, bar)
    else:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            rand = RowRandom([row_seed(seed, ex.id, s) for ex, seed, s in chunk], method.backbone.device)
            t0 = time.perf_counter()
            outs = generate_batched(method, [ex for ex, _, _ in chunk], task, gen, rand)
            wall = time.perf_counter() - t0
            recs = []
            for (ex, seed, s), out in zip(chunk, outs):
                rec = {"id": ex.id, "seed": seed, "sample": s, "gold": ex.answer, **output_row(out)}
                rec["seconds"] = wall / len(chunk)
                rec.update(task.score(ex, out.text))
                recs.append(rec)
            atomic.append_json(path, recs)  # one write + fsync per batch: a kill tears at most the last line
            bar.update(len(chunk))
    bar.close()
    wanted = {sample_key(ex.id, seed, s) for seed in seeds for ex in examples for s in range(gen.num_samples)}
    records = [r for r in read_samples(path) if sample_key(r["id"], r["seed"], r["sample"]) in wanted]
    metrics = metrics_of(method, task, records, gen, ks)
    atomic.write_json(out_dir / METRICS, metrics)
    return metrics


def metrics_of(
    method: Method, task: Task, records: Sequence[dict[str, Any]], gen: GenerationConfig, ks: Sequence[int] | None = None
) -> dict[str, Any]:
    """The metrics of a run's records (also used to merge the shards of a sharded run)."""
    ks = ks or sorted({1, gen.num_samples} | ({k for k in (4, 8, 16, 32) if k <= gen.num_samples}))
    metrics = compute_metrics(records, task.is_equivalent, ks)
    metrics.update(method.extra_metrics(records, task))
    metrics.update({"method": method.name, "task": task.name})
    return metrics
