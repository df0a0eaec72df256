"""The evaluation runner: method x model x task x seeds x samples -> samples.jsonl + metrics.json.

`samples.jsonl` is appended batch by batch and flushed; re-running the same command reads it, skips every
(question, seed, sample) already there and finishes only what is missing. A line cut short by a kill is
dropped on resume and redone.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from latentcot.decoding.sampling import GenerationConfig, RowRandom, row_seed
from latentcot.eval.metrics import compute_metrics
from latentcot.methods.base import Method, generate_batched, output_row
from latentcot.tasks.base import Example, Task

log = logging.getLogger(__name__)

SAMPLES = "samples.jsonl"
METRICS = "metrics.json"


def read_samples(path: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of a samples file; a torn last line (killed run) is dropped and the file repaired."""
    if not path.is_file():
        return []
    good: list[dict[str, Any]] = []
    raw = path.read_text()
    lines = raw.splitlines(keepends=True)
    keep_bytes = 0
    for line in lines:
        if not line.endswith("\n"):
            break
        try:
            good.append(json.loads(line))
        except json.JSONDecodeError:
            break
        keep_bytes += len(line.encode())
    if keep_bytes != len(raw.encode()):
        log.warning("%s: dropping a torn last line from an interrupted run", path)
        with path.open("rb+") as f:
            f.truncate(keep_bytes)
    return good


def sample_key(qid: str, seed: int, sample: int) -> tuple[str, int, int]:
    return (str(qid), int(seed), int(sample))


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
) -> dict[str, Any]:
    """Generates every missing (question, seed, sample), appends the records, writes and returns metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SAMPLES
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
    with path.open("a") as f:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            rand = RowRandom([row_seed(seed, ex.id, s) for ex, seed, s in chunk], method.backbone.device)
            t0 = time.perf_counter()
            outs = generate_batched(method, [ex for ex, _, _ in chunk], task, gen, rand)
            wall = time.perf_counter() - t0
            for (ex, seed, s), out in zip(chunk, outs):
                rec = {"id": ex.id, "seed": seed, "sample": s, "gold": ex.answer, **output_row(out)}
                rec["seconds"] = wall / len(chunk)
                rec.update(task.score(ex, out.text))
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(chunk))
    bar.close()
    wanted = {sample_key(ex.id, seed, s) for seed in seeds for ex in examples for s in range(gen.num_samples)}
    records = [r for r in read_samples(path) if sample_key(r["id"], r["seed"], r["sample"]) in wanted]
    metrics = metrics_of(method, task, records, gen, ks)
    (out_dir / METRICS).write_text(json.dumps(metrics, indent=1))
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
