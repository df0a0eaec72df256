"""Scoring outputs made by any other system with a task's extractors and the runner's metrics.

Each input line (formats: `eval.score_input`) is scored in one of two ways:

1. **Its own gold answer** (`gold` / `answer` / `target`; an lm-eval line's `target`): scored against it with the
   task's extractors, never matched to our split. For multiple choice the option letters are the line's own: the
   options it shows (`choices` / `options`, or "(A) ... (B) ..." / "Answer Choices: ..." in its question) set how
   many letters there are, and the gold letter must be one of them. A gold the task cannot read (a number task
   given "abc", a letter outside the options) is a bad line.
2. **Matched to a question of the task**, by `id`, by exact text (whitespace collapsed), or tolerantly (case,
   quotes, punctuation, whitespace, a leading "Q:" and a trailing options block ignored), in the asked split first
   and then every other split of the task. When the line shows its own options, the gold letter is mapped through
   the gold option's text to the line's letter (another system's option order). A line matching nothing is
   listed in `unmatched.jsonl` and counted, never silently dropped. `strict_match=True` keeps only id and exact
   text in the asked split, and an unmatched line is an error (the behaviour before tolerant matching).

A bad line (no output text, unreadable gold, options without the gold, an lm-eval line of another layout, a
repeated (id, seed, sample)) stops scoring with one error naming file:line, or with `skip_bad_lines=True` is
listed in `bad_lines.jsonl` and the other lines are scored.

Output: the same `samples.jsonl` and `metrics.json` as `latentcot eval` (`eval.metrics.compute_metrics`), with
`metrics["lines"]` counting how each line was scored, so one scorer compares every system. Optional cost fields
(`generated_tokens`, `decode_steps`, ...) are carried into the records; the metrics that need them are left out
unless every line has them, rather than reported from zeros.

The output directory is refused (one error, nothing written) when it holds another kind of run (an evaluation, a
training run) or a score run with other settings (`check_out_dir`); the same settings score it again in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latentcot import atomic
from latentcot.errors import ConfigError, DataError, LatentCotError
from latentcot.eval.metrics import compute_metrics
from latentcot.eval.runner import METRICS, SAMPLES
from latentcot.eval.score_input import (
    FORMATS,
    LETTERS,
    Line,
    detect_format,
    exact_key,
    parse_line,
    read_objects,
    tolerant_key,
)
from latentcot.preflight import RUN_KINDS, first_difference, flatten, other_settings, read_back_yaml, run_kind
from latentcot.tasks.answers import flexible_choice, strict_choice
from latentcot.tasks.base import Example, Task

log = logging.getLogger(__name__)

UNMATCHED = "unmatched.jsonl"
BAD_LINES = "bad_lines.jsonl"
# Metric keys computed from a cost field; dropped when no input line has that field.
_COST_METRICS = {
    "generated_tokens": ("generated_tokens",),
    "decode_steps": ("decode_steps",),
    "latent_steps": ("latent_steps_mean",),
    "soft_steps": ("soft_steps_mean",),
    "prefill_tokens": ("prefill_tokens_mean",),
    "seconds": ("seconds_per_question", "questions_per_second"),
}
HOW = ("own_gold", "id", "exact", "tolerant")


def _is_choice(task: Task) -> bool:
    return hasattr(task, "n_options")


def canonical_gold(task: Task, raw: Any, options: list[str] | None) -> str:
    """A line's own gold answer as the task's canonical answer string; ValueError says why it cannot be read.

    Multiple choice: a letter ("B", "(B)"), a 0-based option index (an int, or digits as lm-eval writes its
    targets) or an option's text; it must be one of the line's options (or of the task's letters when the line
    shows none). Yes/no tasks also take true/false. Other tasks: the text after GSM8K's "####" when there is one,
    then it must be what the task's strict extractor reads back from the task's own answer sentence.
    """
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]
    if not isinstance(raw, str | int | float | bool):
        raise ValueError(f"gold answer {json.dumps(raw)[:40]} is not a string or number")
    if _is_choice(task):
        n = len(options) if options else task.n_options  # type: ignore[attr-defined]
        text = str(raw).strip()
        m = re.fullmatch(r"\(?\s*([A-Ja-j])\s*\)?\.?", text)
        if isinstance(raw, int) and not isinstance(raw, bool) or text.isdigit():
            idx = int(text)
            letter = LETTERS[idx] if 0 <= idx < len(LETTERS) else "?"
        elif m:
            letter = m.group(1).upper()
        elif options and tolerant_key(text) in [tolerant_key(o) for o in options]:
            letter = LETTERS[[tolerant_key(o) for o in options].index(tolerant_key(text))]
        else:
            raise ValueError(f"gold answer {text[:40]!r} is not an option letter, a 0-based index or an option text")
        if letter not in LETTERS[:n]:
            shown = "the line's" if options else f"task {task.name}'s"
            raise ValueError(f"gold answer {text[:40]!r} is not one of {shown} {n} options (A-{LETTERS[n - 1]})")
        return letter
    if isinstance(raw, bool):
        raw = "yes" if raw else "no"
    text = str(raw).strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    if text.lower() in ("true", "false") and task.is_equivalent("yes", "yes") and not task.is_equivalent("1", "1"):
        text = "yes" if text.lower() == "true" else "no"
    ex = Example(id="gold", question="", answer=text)
    if not text or not task.score(ex, task.target(ex, with_rationale=False))["correct_strict"]:
        raise ValueError(f"gold answer {str(raw)[:40]!r} cannot be read as an answer of task {task.name}")
    return text


def score_text(task: Task, gold: str, text: str, n_options: int | None = None) -> dict[str, Any]:
    """`task.score` against `gold`; for multiple choice with `n_options` letters (the line's own options)."""
    if _is_choice(task) and n_options and n_options != task.n_options:  # type: ignore[attr-defined]
        letters = LETTERS[:n_options]
        s, f = strict_choice(text, letters), flexible_choice(text, letters)
        return {
            "pred_strict": s,
            "pred_flexible": f,
            "correct_strict": s is not None and task.is_equivalent(s, gold),
            "correct_flexible": f is not None and task.is_equivalent(f, gold),
        }
    return task.score(Example(id="", question="", answer=gold), text)


class Matcher:
    """Finds the task's question for a line: by id, exact text, or tolerant text; the asked split first, then
    the task's other splits, each loaded only when a line is still unmatched."""

    def __init__(self, task: Task, split: str, strict: bool) -> None:
        self.task, self.split, self.strict = task, split, strict
        self.maps: dict[str, dict[str, Example]] = {"id": {}, "exact": {}, "tolerant": {}}
        self.n_asked = len(self._add(task.load(split)))
        self.pending = [] if strict else [s for s in task.splits if s != split]

    def _add(self, examples: Sequence[Example]) -> Sequence[Example]:
        for ex in examples:
            self.maps["id"].setdefault(ex.id, ex)
            self.maps["exact"].setdefault(exact_key(ex.question), ex)
            if self.strict:
                continue
            stem = ex.meta.get("stem")
            if isinstance(stem, str):
                self.maps["exact"].setdefault(exact_key(stem), ex)
            self.maps["tolerant"].setdefault(tolerant_key(stem if isinstance(stem, str) else ex.question), ex)
        return examples

    def _find(self, line: Line) -> tuple[Example, str] | None:
        if line.qid is not None and line.qid in self.maps["id"]:
            return self.maps["id"][line.qid], "id"
        if line.question is not None:
            if exact_key(line.question) in self.maps["exact"]:
                return self.maps["exact"][exact_key(line.question)], "exact"
            if not self.strict and tolerant_key(line.question) in self.maps["tolerant"]:
                return self.maps["tolerant"][tolerant_key(line.question)], "tolerant"
        return None

    def match(self, line: Line) -> tuple[Example, str] | None:
        found = self._find(line)
        while found is None and self.pending:
            split = self.pending.pop(0)
            try:
                self._add(self.task.load(split))
            except LatentCotError as e:  # a split whose files are not here: the others still count
                log.info("task %s split %s not searched: %s", self.task.name, split, e)
                continue
            found = self._find(line)
        if found is None and self.strict:
            name = f"task {self.task.name} split {self.split}"
            if line.qid is not None and line.question is None:
                raise DataError(
                    f"{line.where}: id {line.qid!r} is not a question of {name} ({self.n_asked} questions): "
                    "check the task, or pass --split"
                )
            q = exact_key(line.question or "")
            raise DataError(
                f"{line.where}: question {q[:80]!r}{'...' if len(q) > 80 else ''} is not in {name}: "
                "give the question text exactly, or its id (or drop --strict-match)"
            )
        return found


def _line_gold(task: Task, line: Line, ex: Example) -> tuple[str, int | None]:
    """The gold letter/answer of a matched line in the line's own terms, and its option count."""
    if not _is_choice(task) or not line.options:
        return ex.answer, len(ex.meta.get("options") or []) or None
    gold_text = ex.meta["options"][LETTERS.index(ex.answer)]
    keys = [tolerant_key(o) for o in line.options]
    if tolerant_key(gold_text) not in keys:
        raise DataError(
            f"{line.where}: the line's options ({'; '.join(o[:20] for o in line.options)}) do not include the gold "
            f"option {gold_text!r} of question {ex.id}: fix the options or give the line its own gold"
        )
    return LETTERS[keys.index(tolerant_key(gold_text))], len(line.options)


def _fallback_id(line: Line) -> str:
    if line.qid is not None:
        return line.qid
    if line.question:
        return "q-" + hashlib.sha1(tolerant_key(line.question).encode()).hexdigest()[:12]
    return "line-" + line.where.rsplit(":", 1)[-1]


def score_lines(
    task: Task, lines: Sequence[Line], split: str, strict_match: bool = False, skip_bad_lines: bool = False
) -> tuple[list[dict[str, Any]], Counter[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """Records (the runner's format), how each line was scored, the unmatched lines and the skipped bad lines."""
    need_match = strict_match or any(line.gold is None for line in lines)
    matcher = Matcher(task, split, strict_match) if need_match else None
    next_sample: Counter[tuple[str, int]] = Counter()
    seen: set[tuple[str, int, int]] = set()
    records: list[dict[str, Any]] = []
    how: Counter[str] = Counter()
    unmatched: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for line in lines:
        try:
            if line.gold is not None and not strict_match:
                try:
                    gold = canonical_gold(task, line.gold, line.options)
                except ValueError as e:
                    raise DataError(
                        f"{line.where}: {e}: fix the gold field, or drop it to match the question"
                    ) from None
                qid, kind, n_opt = _fallback_id(line), "own_gold", len(line.options) if line.options else None
            else:
                found = matcher.match(line)  # type: ignore[union-attr]
                if found is None:
                    unmatched.append({"line": line.where, "id": line.qid, "question": line.question})
                    continue
                ex, kind = found
                gold, n_opt = _line_gold(task, line, ex)
                qid = ex.id
            new = []
            for text in line.outputs:
                seed = line.seed or 0
                sample = (
                    line.sample if line.sample is not None and len(line.outputs) == 1 else next_sample[(qid, seed)]
                )
                next_sample[(qid, seed)] = max(next_sample[(qid, seed)], sample + 1)
                if (qid, seed, sample) in seen:
                    raise DataError(f"{line.where}: a second output for question {qid!r} seed {seed} sample {sample}")
                seen.add((qid, seed, sample))
                rec: dict[str, Any] = {"id": qid, "seed": seed, "sample": sample, "gold": gold, "output": text}
                rec.update(line.costs)
                rec.update(score_text(task, gold, text, n_opt))
                new.append(rec)
        except DataError as e:
            if not skip_bad_lines:
                raise
            bad.append({"line": line.where, "error": str(e)})
            continue
        records += new
        how[kind] += 1
    return records, how, unmatched, bad


def default_ks(records: Sequence[dict[str, Any]]) -> list[int]:
    """1, the samples per question, and 4/8/16/32 below it (as the runner picks them)."""
    per_q = Counter((r["id"], r["seed"]) for r in records)
    n = min(per_q.values()) if per_q else 1
    return sorted({1, n} | {k for k in (4, 8, 16, 32) if k <= n})


def read_lines(path: Path, fmt: str, skip_bad_lines: bool) -> tuple[list[Line], list[dict[str, Any]], str]:
    """The parsed lines of `path`, the bad lines skipped (with `skip_bad_lines`), and the format used."""
    if fmt not in FORMATS:
        raise DataError(f"unknown --format {fmt!r}: choose one of {', '.join(FORMATS)}")
    rows = read_objects(path)
    fmt = detect_format(path, rows) if fmt == "auto" else fmt
    lines, bad = [], []
    for n, obj in rows:
        try:
            if isinstance(obj, DataError):
                raise obj
            lines.append(parse_line(obj, fmt, f"{path}:{n}"))
        except DataError as e:
            if not skip_bad_lines:
                raise
            bad.append({"line": f"{path}:{n}", "error": str(e)})
    return lines, bad, fmt


def check_out_dir(out: Path, config: dict[str, Any] | None = None) -> None:
    """Refuses `out` when it holds another kind of run (`preflight.run_kind`), or, given the `config` this scoring
    would save, a score run whose config.yaml differs (as `latentcot eval` refuses a run directory of other
    settings). A score run of the same settings passes: scoring it again rewrites it."""
    kind = run_kind(out)
    if kind is None:
        return
    if kind != "score":
        raise ConfigError(f"{out} holds {RUN_KINDS[kind]}, not a score run: pass another --out for the scores")
    if config is None:
        return
    old, new = flatten(read_back_yaml(out / "config.yaml")), flatten(config)
    # a setting the first scorer did not record (format, strict_match) counts as this scoring's there
    old = {**{k: v for k, v in new.items() if k.startswith("score.") and k not in old}, **old}
    # The task first (another task's default split differs too); the method is named after the file, compared itself.
    task_differs = old.get("run.task") != new.get("run.task")
    key = "run.task" if task_differs else first_difference(old, new, lambda s: s == "run.method")
    if key is not None:
        flag = {"run.task": "--task", "run.split": "--split", "score.format": "--format"}.get(key)
        resume = f"pass {flag} {old[key]} to score it again" if flag and old.get(key) is not None else None
        raise other_settings(out, key, old.get(key), new.get(key), resume)


def score_file(
    task: Task,
    path: str | Path,
    out_dir: str | Path,
    split: str | None = None,
    ks: Sequence[int] | None = None,
    fmt: str = "auto",
    strict_match: bool = False,
    skip_bad_lines: bool = False,
) -> dict[str, Any]:
    """Scores a file of outputs against `task`; writes config.yaml, samples.jsonl, metrics.json (and
    unmatched.jsonl / bad_lines.jsonl when there are such lines). Nothing is written when it raises.

    Raises ConfigError, before scoring, when `out_dir` holds another kind of run or a score run with other
    settings (`check_out_dir`).

    Args:
        task: the benchmark whose extractors (and, for lines without their own gold, questions) are used.
        path: the outputs (formats: `eval.score_input`).
        out_dir: where the results go (a score run of the same settings is rewritten, not appended: scoring is
            cheap and exact).
        split: the split searched first (default: the task's test split).
        ks: pass@k / sc@k values (default: see `default_ks`).
        fmt: "auto", "jsonl" or "lm-eval".
        strict_match: match only by id or exact text in `split`, and stop at a line that matches nothing.
        skip_bad_lines: list bad lines in bad_lines.jsonl and score the others, instead of stopping.

    Returns:
        The metrics, as written to metrics.json.
    """
    path = Path(path)
    split = split or task.default_split
    out = Path(out_dir)
    check_out_dir(out)  # another kind of run: refused before the file is read
    lines, bad, fmt = read_lines(path, fmt, skip_bad_lines)
    config = {
        "run": {"method": path.stem, "model": "external", "task": task.name, "split": split},
        "score": {"file": str(path.resolve()), "format": fmt, "strict_match": strict_match},
    }
    check_out_dir(out, config)
    records, how, unmatched, bad2 = score_lines(task, lines, split, strict_match, skip_bad_lines)
    bad += bad2
    if not records:
        first = unmatched[0] if unmatched else None
        detail = (
            f"; the first unmatched is {first['line']}: {exact_key(first['question'] or first['id'] or '')[:80]!r}"
            if first
            else ""
        )
        raise DataError(
            f"{path}: no line could be scored ({len(unmatched)} unmatched, {len(bad)} bad){detail}: give the "
            f"lines their own gold answers, or check --task {task.name} and --split"
        )
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
    metrics["lines"] = {**{k: how[k] for k in HOW}, "unmatched": len(unmatched), "bad": len(bad)}
    metrics.update({"method": path.stem, "task": task.name, "source": str(path), "format": fmt})
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / SAMPLES, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))
    for name, rows in ((UNMATCHED, unmatched), (BAD_LINES, bad)):
        if rows:
            atomic.write_text(out / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        else:
            (out / name).unlink(missing_ok=True)
    atomic.write_json(out / METRICS, metrics)
    atomic.write_yaml(out / "config.yaml", config)
    log.debug("scored %d outputs of %d questions from %s", len(records), metrics["questions"], path)
    return metrics
