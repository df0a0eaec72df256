"""Train a method's trainable parts on a task's training split. Writes train_config.yaml, checkpoint/
(weights, optimizer, RNG, data position), train_log.jsonl and trainable.safetensors into --out;
re-running the same command resumes from the checkpoint.

Several devices or nodes: --launch configs/accelerate/ddp.yaml (or fsdp.yaml, deepspeed_zero2/3.yaml) starts the
same command under `accelerate launch`; global batch = per-device batch x grad_accum x processes (or set
global_batch_size). `accelerate launch ... -m latentcot train ...` works as well.

Example: latentcot train --method cot_sft --model tiny-gpt2 --task pointer_chase max_steps=50 lr=1e-3"""

from __future__ import annotations

import argparse
import os

from latentcot.cli.common import add_run_arguments, collect, require_method


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p, limit="first N training examples (the setting train_limit=N; 0 = all)")
    p.add_argument("--launch", metavar="CONFIG", help="accelerate config YAML: run under `accelerate launch` (configs/accelerate/)")
    p.add_argument("--num-processes", type=int, help="with --launch: processes in all (default: the config's num_processes)")


def run(args: argparse.Namespace) -> int:
    from latentcot.pipeline import resolve, train_run

    values = collect(args)
    if "limit" in values:  # what a user means by --limit when training: the examples trained on
        values["train_limit"] = values.pop("limit")
    require_method(values, args.config, "train")
    res = resolve(values, args.config, smoke=args.smoke)
    if args.launch:
        from latentcot.training.launch import launch, strip_launch

        t = res.train
        return launch(args.launch, args.num_processes, strip_launch(args.argv), t.global_batch_size, t.train_batch_size,
                      t.grad_accum)
    summary = train_run(res)
    if os.environ.get("RANK", "0") != "0":  # under a launch, only the main process reports
        return 0
    loss = summary.get("loss")
    print(
        f"trained {res.run.method} for {summary['steps']} steps"
        + (f", final loss {loss:.4f}" if loss is not None else "")
        + f"; weights in {res.out_dir}/trainable.safetensors"
    )
    print(f"evaluate with: latentcot eval --method {res.run.method} --model {res.run.model} --task {res.run.task} weights={res.out_dir}")
    return 0
