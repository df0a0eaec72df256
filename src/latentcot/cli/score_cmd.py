"""Score outputs made by any system with a task's extractors; writes the same samples.jsonl and metrics.json as
`latentcot eval` (pass@k and sc@k when a question has several samples).

Each line of FILE.jsonl: the output text as "output" (or "response", "completion", "text"), and either its own
gold answer ("gold", "answer" or "target"; for multiple choice with the options it shows, as "choices" /
"options" or "(A) ... (B) ..." in the question) or the question's "id" / "question" text, matched to the task
(by id, exact text, then tolerantly, in every split; unmatched lines are listed in unmatched.jsonl).
lm-evaluation-harness --log_samples files (samples_<task>_*.jsonl) are read directly (--format lm-eval).

Example: latentcot score --task gsm8k my_model_outputs.jsonl --out runs/my_model-gsm8k"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="task name (latentcot ls tasks)")
    p.add_argument("file", metavar="FILE.jsonl", help="outputs to score, one JSON object per line")
    p.add_argument("--out", help="output directory (default runs/score-<file name>-<task>); the same command "
                   "rewrites it, another run's directory is refused")
    p.add_argument("--data-dir", help="benchmark data directory (default $LATENTCOT_DATA)")
    p.add_argument("--source", choices=("auto", "local", "hub"), help="where the task's questions come from (default auto)")
    p.add_argument("--split", help="split searched first for questions (default: the task's test split)")
    p.add_argument(
        "--format", default="auto", choices=("auto", "jsonl", "lm-eval"),
        help="input layout: plain JSONL, an lm-eval --log_samples file, or auto (by name and fields)",
    )  # fmt: skip
    p.add_argument(
        "--strict-match", action="store_true",
        help="match questions only by id or exact text in --split, ignore the lines' gold, and stop at an unmatched line",
    )  # fmt: skip
    p.add_argument(
        "--skip-bad-lines", action="store_true",
        help="list bad lines in bad_lines.jsonl and score the others, instead of stopping at the first",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from latentcot.eval.score import score_file
    from latentcot.tasks import get_task

    settings = {"data_dir": args.data_dir, "source": args.source}
    task = get_task(args.task, **{k: v for k, v in settings.items() if v})
    out = Path(args.out) if args.out else Path("runs") / f"score-{Path(args.file).stem}-{task.name}"
    m = score_file(task, args.file, out, args.split, None, args.format, args.strict_match, args.skip_bad_lines)
    print(summary(m, out))
    return 0


def summary(m: dict, out: Path) -> str:
    keys = [k for k in m if k.startswith(("accuracy", "pass@", "sc@")) and not k.startswith(("pass@1_", "sc@1_"))]
    parts = [f"{k} {m[k]['mean']:.2f}" + (f"±{m[k]['std']:.2f}" if m[k]["std"] else "") for k in keys]
    n = m.get("lines", {})
    lines = (
        f"lines: {n.get('own_gold', 0)} own gold, matched {n.get('id', 0)} by id, {n.get('exact', 0)} exact, "
        f"{n.get('tolerant', 0)} tolerant, {n.get('unmatched', 0)} unmatched"
        + (f" (listed in {out}/unmatched.jsonl)" if n.get("unmatched") else "")
        + (f", {n['bad']} bad skipped (listed in {out}/bad_lines.jsonl)" if n.get("bad") else "")
    )
    return (
        f"{m['source']} on {m['task']} ({m['questions']} questions, {m['samples']} samples): "
        + ", ".join(parts)
        + f"; {lines}; wrote {out}/samples.jsonl and metrics.json"
    )
