"""Train a method's trainable parts on a task's training split. Writes train_config.yaml, checkpoint/
(weights, optimizer, RNG, data position), train_log.jsonl and trainable.safetensors into --out;
re-running the same command resumes from the checkpoint.

Example: latentcot train --method cot_sft --model tiny-gpt2 --task pointer_chase max_steps=50 lr=1e-3"""

from __future__ import annotations

import argparse

from latentcot.cli.common import add_run_arguments, collect


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)


def run(args: argparse.Namespace) -> int:
    from latentcot.pipeline import resolve, train_run

    res = resolve(collect(args), args.config)
    summary = train_run(res)
    loss = summary.get("loss")
    print(
        f"trained {res.run.method} for {summary['steps']} steps"
        + (f", final loss {loss:.4f}" if loss is not None else "")
        + f"; weights in {res.out_dir}/trainable.safetensors"
    )
    print(f"evaluate with: latentcot eval --method {res.run.method} --model {res.run.model} --task {res.run.task} weights={res.out_dir}")
    return 0
