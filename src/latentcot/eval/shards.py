"""Sharded evaluation: the questions split over processes or nodes, each shard resumable on its own, the shards
merged into one samples.jsonl / metrics.json identical (sample for sample) to a single-process run's.

Layout of a sharded run directory:

    out/config.yaml                         the run's settings (num_shards recorded; a resume with another count
                                            is refused by the same check as any other changed setting)
    out/shards/shard-<i>-of-<n>/            shard i: its own samples.jsonl + metrics.json, resumed as any run
    out/samples.jsonl, out/metrics.json     the merge, written once every shard holds all of its samples

Shard i takes questions i, i+n, i+2n, ... of the selection (every seed and sample of a question stays in one
shard). Per-row random streams depend only on (seed, question id, sample), so a sample is the same whichever
shard or batch made it. The merge orders records as a single-process run writes them (seed, question, sample);
it is deterministic and written atomically, so any shard that finishes last may do it, and re-doing it is safe.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latentcot import atomic
from latentcot.decoding.sampling import GenerationConfig
from latentcot.errors import ConfigError
from latentcot.eval.runner import METRICS, SAMPLES, evaluate, metrics_of, read_samples, sample_key
from latentcot.methods.base import Method
from latentcot.tasks.base import Example, Task

log = logging.getLogger(__name__)


def launcher_rank() -> tuple[int, int] | None:
    """(rank, world size) when started by a launcher (torchrun, `accelerate launch`, SLURM srun), else None."""
    for rank_key, size_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_key in os.environ and size_key in os.environ:
            size = int(os.environ[size_key])
            if size > 1:
                return int(os.environ[rank_key]), size
    return None


def resolve_shards(num_shards: int, shard: int | None) -> tuple[int, list[int]]:
    """(shard count, the shards this process runs) from the settings and the launcher's environment.

    num_shards=0 means "one per launched process" (1 without a launcher). Under a launcher a process runs the
    shard of its rank; without one and without `shard`, it runs every shard in turn (a resume after a kill).
    """
    launched = launcher_rank()
    n = num_shards or (launched[1] if launched else 1)
    if launched and launched[1] != n:
        raise ConfigError(f"num_shards: {n} shards but {launched[1]} processes were launched: set num_shards={launched[1]} "
                          "(or 0 for one shard per process)")
    if shard is not None:
        if not 0 <= shard < n:
            raise ConfigError(f"shard: must be in [0, num_shards={n}), got {shard}")
        return n, [shard]
    if launched:
        return n, [launched[0]]
    return n, list(range(n))


def shard_dir(out_dir: Path, i: int, n: int) -> Path:
    return Path(out_dir) / "shards" / f"shard-{i}-of-{n}"


def shard_examples(examples: Sequence[Example], i: int, n: int) -> list[Example]:
    """Questions i, i+n, i+2n, ... of the selection."""
    return list(examples[i::n])


def check_shard_layout(out_dir: Path, n: int) -> None:
    """Refuses a directory whose shards were made with another shard count (nothing is touched)."""
    root = Path(out_dir) / "shards"
    if not root.is_dir():
        return
    other = sorted({p.name.rsplit("-of-", 1)[-1] for p in root.glob("shard-*-of-*")} - {str(n)})
    if other:
        raise ConfigError(f"num_shards: {out_dir} holds a run sharded {other[0]} ways, not {n}: resume with "
                          f"num_shards={other[0]}, or pass another --out")


def evaluate_sharded(
    method: Method,
    task: Task,
    examples: Sequence[Example],
    gen: GenerationConfig,
    seeds: Sequence[int],
    out_dir: Path,
    num_shards: int,
    shards: Sequence[int],
    batch_size: int = 8,
    progress: bool = True,
    refill: bool = False,
) -> dict[str, Any] | None:
    """Runs (or resumes) `shards` of an n-way sharded run, then merges when every shard is complete.

    Returns the merged metrics, or None when other shards are still missing samples.
    """
    check_shard_layout(out_dir, num_shards)
    for i in shards:
        part = shard_examples(examples, i, num_shards)
        if part:
            evaluate(method, task, part, gen, seeds, shard_dir(out_dir, i, num_shards), batch_size, progress, refill=refill)
    return merge(method, task, examples, gen, seeds, out_dir, num_shards)


def merge(
    method: Method,
    task: Task,
    examples: Sequence[Example],
    gen: GenerationConfig,
    seeds: Sequence[int],
    out_dir: Path,
    num_shards: int,
) -> dict[str, Any] | None:
    """Merges complete shards into out/samples.jsonl and out/metrics.json (None while a shard is incomplete)."""
    found: dict[tuple[str, int, int], dict[str, Any]] = {}
    for i in range(num_shards):
        for r in read_samples(shard_dir(out_dir, i, num_shards) / SAMPLES):
            found.setdefault(sample_key(r["id"], r["seed"], r["sample"]), r)
    order = [sample_key(ex.id, seed, s) for seed in seeds for ex in examples for s in range(gen.num_samples)]
    missing = [k for k in order if k not in found]
    if missing:
        log.info("%d of %d samples still missing in other shards: merge when they finish", len(missing), len(order))
        return None
    records = [found[k] for k in order]
    out_dir = Path(out_dir)
    _write_atomic(out_dir / SAMPLES, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    metrics = metrics_of(method, task, records, gen)
    _write_atomic(out_dir / METRICS, json.dumps(metrics, indent=1))
    return metrics


def _write_atomic(path: Path, text: str) -> None:
    atomic.write_text(path, text)
