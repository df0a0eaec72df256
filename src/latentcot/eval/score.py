"""Scoring outputs made by any other system with a task's extractors and the runner's metrics.

Input: a JSONL file, one line per (question, sample): the question's `id` (a task Example id) or its `question`
text, the output text under `output` (or `response`, `completion`, `text`), and optionally `seed` and `sample`
(default: seed 0, samples numbered in file order per question and seed). Optional `generated_tokens`,
`decode_steps`, `prefill_tokens` and `seconds` are carried into the records; the metrics that need them are left
out unless every line has them, rather than reported from zeros.

Output: the same `samples.jsonl` and `metrics.json` as `latentcot eval` (`eval.metrics.compute_metrics`), so one
scorer compares every system.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latentcot import atomic
from latentcot.errors import DataError
from latentcot.eval.metrics import compute_metrics
from latentcot.eval.runner import METRICS, SAMPLES
from latentcot.tasks.base import Example, Task

log = logging.getLogger(__name__)

OUTPUT_FIELDS = ("output", "response", "completion", "text")
# Per-sample cost fields another system may report; copied when present.
COST_FIELDS = ("generated_tokens", "decode_steps", "latent_steps", "soft_steps", "prefill_tokens", "seconds")
# Metric keys computed from a cost field; dropped when no input line has that field.
_COST_METRICS = {
    "generated_tokens": ("generated_tokens",),
    "decode_steps": ("decode_steps",),
    "latent_steps": ("latent_steps_mean",),
    "soft_steps": ("soft_steps_mean",),
    "prefill_tokens": ("prefill_tokens_mean",),
    "seconds": ("seconds_per_question", "questions_per_second"),
}


def read_outputs(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSONL file.

    Raises:
        DataError: the file cannot be read, or a line is not a JSON object (naming file and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    rows: list[tuple[int, dict[str, Any]]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg}): each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{n}: expected a JSON object with an id or question and an output")
        rows.append((n, obj))
    if not rows:
        raise DataError(f"{path} holds no outputs: expected JSON lines with an id or question and an output")
    return rows


def _norm_question(q: str) -> str:
    return " ".join(q.split())


def _output_text(obj: dict[str, Any], where: str) -> str:
    for key in OUTPUT_FIELDS:
        if obj.get(key) is not None:
            if not isinstance(obj[key], str):
                raise DataError(f"{where}: field {key!r} must be a string, got {type(obj[key]).__name__}")
            return obj[key]
    raise DataError(f"{where}: no output text: give it as one of the fields {', '.join(OUTPUT_FIELDS)}")


def _int_field(obj: dict[str, Any], key: str, where: str) -> int | None:
    if key not in obj or obj[key] is None:
        return None
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int | str) or not str(v).lstrip("-").isdigit():
        raise DataError(f"{where}: {key!r} must be an integer, got {v!r}")
    return int(v)


def score_records(
    task: Task, examples: Sequence[Example], rows: list[tuple[int, dict[str, Any]]], source: str, split: str
) -> list[dict[str, Any]]:
    """One sample record per input line (the runner's record format), scored with the task's extractors.

    Raises:
        DataError: a line whose id or question is not in the task split, that has neither, that has no output,
            or that repeats an (id, seed, sample) already seen.
    """
    by_id = {ex.id: ex for ex in examples}
    by_question = {_norm_question(ex.question): ex for ex in examples}
    next_sample: Counter[tuple[str, int]] = Counter()
    seen: set[tuple[str, int, int]] = set()
    records = []
    for n, obj in rows:
        where = f"{source}:{n}"
        if obj.get("id") is not None:
            ex = by_id.get(str(obj["id"]))
            if ex is None:
                raise DataError(
                    f"{where}: id {str(obj['id'])!r} is not a question of task {task.name} split {split} "
                    f"({len(examples)} questions): check the task, or pass --split"
                )
        elif isinstance(obj.get("question"), str):
            ex = by_question.get(_norm_question(obj["question"]))
            if ex is None:
                q = _norm_question(obj["question"])
                raise DataError(
                    f"{where}: question {q[:80]!r}{'...' if len(q) > 80 else ''} is not in task {task.name} "
                    f"split {split}: give the question text exactly, or its id"
                )
        else:
            raise DataError(f"{where}: no 'id' or 'question' field to match the line to a question of {task.name}")
        text = _output_text(obj, where)
        seed = _int_field(obj, "seed", where) or 0
        sample = _int_field(obj, "sample", where)
        if sample is None:
            sample = next_sample[(ex.id, seed)]
        next_sample[(ex.id, seed)] = max(next_sample[(ex.id, seed)], sample + 1)
        key = (ex.id, seed, sample)
        if key in seen:
            raise DataError(f"{where}: a second output for question {ex.id!r} seed {seed} sample {sample}")
        seen.add(key)
        rec: dict[str, Any] = {"id": ex.id, "seed": seed, "sample": sample, "gold": ex.answer, "output": text}
        rec.update(
            {k: obj[k] for k in COST_FIELDS if isinstance(obj.get(k), int | float) and not isinstance(obj[k], bool)}
        )
        rec.update(task.score(ex, text))
        records.append(rec)
    return records


def default_ks(records: Sequence[dict[str, Any]]) -> list[int]:
    """1, the samples per question, and 4/8/16/32 below it (as the runner picks them)."""
    per_q = Counter((r["id"], r["seed"]) for r in records)
    n = min(per_q.values()) if per_q else 1
    return sorted({1, n} | {k for k in (4, 8, 16, 32) if k <= n})


def score_file(
    task: Task, path: str | Path, out_dir: str | Path, split: str | None = None, ks: Sequence[int] | None = None
) -> dict[str, Any]:
    """Scores a JSONL file of outputs against `task` and writes config.yaml, samples.jsonl and metrics.json.

    Args:
        task: the benchmark whose extractors and gold answers are used.
        path: the outputs (see the module docstring for the line format).
        out_dir: where the results go (samples.jsonl is rewritten, not appended: scoring is cheap and exact).
        split: task split the ids refer to (default: the task's test split).
        ks: pass@k / sc@k values (default: see `default_ks`).

    Returns:
        The metrics, as written to metrics.json.
    """
    path = Path(path)
    split = split or task.default_split
    rows = read_outputs(path)
    examples = task.load(split)
    records = score_records(task, examples, rows, str(path), split)
    metrics = compute_metrics(records, task.is_equivalent, ks or default_ks(records))
    for field, keys in _COST_METRICS.items():
        have = sum(field in r for r in records)
        if have < len(records):  # a missing value would count as 0: leave the metric out instead
            if have:
                log.warning(
                    "%s: only %d of %d lines give %r; its metrics are left out", path, have, len(records), field
                )
            for k in keys:
                metrics.pop(k, None)
    metrics.update({"method": path.stem, "task": task.name, "source": str(path)})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / SAMPLES, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))
    atomic.write_json(out / METRICS, metrics)
    config = {
        "run": {"method": path.stem, "model": "external", "task": task.name, "split": split},
        "score": {"file": str(path.resolve())},
    }
    atomic.write_yaml(out / "config.yaml", config)
    log.debug("scored %d outputs of %d questions from %s", len(records), metrics["questions"], path)
    return metrics
