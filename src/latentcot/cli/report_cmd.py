"""Compare run directories (from `latentcot eval` or `latentcot score`): writes report.md, a markdown table of
method, model, task, accuracies (mean ± std over seeds), pass@k / sc@k, tokens, decode steps and speed, and
accuracy_vs_steps.png, accuracy against decode steps per question with one labelled point per run.

Example: latentcot report runs/cot-smollm2-gsm8k runs/softcot-smollm2-gsm8k --out reports/gsm8k"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories holding config.yaml and metrics.json")
    p.add_argument("--out", default=".", help="where report.md and the plot go (default: the current directory)")
    p.add_argument(
        "--metric",
        default="accuracy_strict",
        choices=["accuracy_strict", "accuracy_flexible"],
        help="accuracy on the plot's y axis",
    )


def run(args: argparse.Namespace) -> int:
    from latentcot.eval.report import write_report

    table, md, png = write_report(args.runs, args.out, args.metric)
    print(table)
    print(f"wrote {md} and {png}")
    return 0
