"""Train tiny models from scratch on synthetic pointer chasing and compare no_cot_sft, cot_sft, coconut, its
pause control, codi (and soft_thinking when installed) on one engine: accuracy, decode steps per question,
questions/s. Writes report.md, results.json and accuracy_vs_steps.png into --out; re-running reuses finished runs.

Example: latentcot demo            (9 min 7 s on 2 quiet CPU cores, measured 2026-11-28)
         latentcot demo --quick    (about 1-2 minutes: 2-hop problems, one task)"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo; re-running reuses it)")
    p.add_argument("--quick", action="store_true", help="a 1-2 minute variant (2-hop problems, pointer_chase only)")
    p.add_argument("--tasks", help="comma list of synthetic tasks (default pointer_chase2; pointer_chase adds the "
                   "1-token task)")
    p.add_argument("--eval-questions", type=int, help="test questions per method")
    p.add_argument("--workers", type=int, help="processes training arms at once, one thread each (default: the number "
                   "of CPU cores + 1, at most 3: after cot_sft, three arms train from it, and a third process keeps "
                   "both cores busy to the end; 1 = in this process)")
    p.add_argument("--threads", type=int, help="torch CPU threads with --workers 1 (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import time
    from pathlib import Path

    import torch

    from latentcot.demo import DemoSettings, format_table, run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    s = DemoSettings.quick() if args.quick else DemoSettings.full()
    if args.tasks:
        s = dataclasses.replace(s, tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()))
    if args.eval_questions:
        s = dataclasses.replace(s, eval_questions=args.eval_questions)
    t0 = time.perf_counter()

    from tqdm.auto import tqdm

    def show(row: dict) -> None:
        tqdm.write(f"  {row['task']:15s} {row['method']:14s} accuracy {row['accuracy']:5.1f}%  "
                   f"decode steps {row['decode_steps']:5.1f}  ({time.perf_counter() - t0:.0f} s so far)")

    import os

    workers = args.workers if args.workers is not None else min(3, (os.cpu_count() or 1) + 1)
    rows = run_demo(s, Path(args.out), progress=not args.no_progress, on_row=show, workers=workers)
    print()
    print(format_table(rows))
    print(f"\nwall time {time.perf_counter() - t0:.0f} s; report in {args.out}/report.md, plot in {args.out}/accuracy_vs_steps.png")
    return 0
