"""Score outputs made by any system with a task's extractors; writes the same samples.jsonl and metrics.json as
`latentcot eval` (pass@k and sc@k when a question has several samples).

Each line of FILE.jsonl: the question's "id" (or its "question" text), the output text as "output" (or
"response", "completion", "text"), and optionally "seed" and "sample".

Example: latentcot score --task gsm8k my_model_outputs.jsonl --out runs/my_model-gsm8k"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="task name (latentcot ls tasks)")
    p.add_argument("file", metavar="FILE.jsonl", help="outputs to score, one JSON object per line")
    p.add_argument("--out", help="output directory (default runs/score-<file name>-<task>)")
    p.add_argument("--data-dir", help="benchmark data directory (default $LATENTCOT_DATA)")
    p.add_argument("--split", help="task split the ids refer to (default: the task's test split)")


def run(args: argparse.Namespace) -> int:
    from latentcot.eval.score import score_file
    from latentcot.tasks import get_task

    task = get_task(args.task, **({"data_dir": args.data_dir} if args.data_dir else {}))
    out = Path(args.out) if args.out else Path("runs") / f"score-{Path(args.file).stem}-{task.name}"
    m = score_file(task, args.file, out, args.split)
    print(summary(m, out))
    return 0


def summary(m: dict, out: Path) -> str:
    keys = [k for k in m if k.startswith(("accuracy", "pass@", "sc@")) and not k.startswith(("pass@1_", "sc@1_"))]
    parts = [f"{k} {m[k]['mean']:.2f}" + (f"±{m[k]['std']:.2f}" if m[k]["std"] else "") for k in keys]
    return (
        f"{m['source']} on {m['task']} ({m['questions']} questions, {m['samples']} samples): "
        + ", ".join(parts)
        + f"; wrote {out}/samples.jsonl and metrics.json"
    )
