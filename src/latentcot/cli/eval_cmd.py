"""Evaluate a method on a task. Writes config.yaml, samples.jsonl and metrics.json into --out;
re-running the same command resumes and never repeats finished work.

Sharded (by question, over processes or nodes): num_shards=N with shard=I per process, or one shard per process
under `accelerate launch` / torchrun; the shards merge into one samples.jsonl identical to a single-process run's.

Example: latentcot eval --method cot --model tiny-llama --task gsm8k --limit 4 max_new_tokens=32"""

from __future__ import annotations

import argparse
import json

from latentcot.cli.common import add_run_arguments, collect, require_method


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)


def run(args: argparse.Namespace) -> int:
    from latentcot.pipeline import evaluate_run, resolve, use_trained_weights

    values = collect(args)
    require_method(values, args.config, "eval")
    res = resolve(values, args.config, smoke=args.smoke)
    use_trained_weights(res)
    metrics = evaluate_run(res)
    if metrics is None:  # a shard of a sharded run finished before the others
        print(f"this shard is done; {res.out_dir}/samples.jsonl and metrics.json are merged when every shard is done "
              "(the last shard to finish merges; re-running with the same num_shards and no shard= finishes them all)")
        return 0
    print(format_metrics(metrics))
    if isinstance(metrics.get("chains"), dict):  # methods that decode several chains per row (softcot_pp)
        print("per chain: " + format_metrics({**metrics["chains"], "method": metrics.get("method"), "task": metrics.get("task")}))
    print(f"wrote {res.out_dir}/samples.jsonl and metrics.json")
    return 0


def format_metrics(m: dict) -> str:
    keys = [k for k in m if k.startswith(("accuracy", "pass@", "sc@"))]
    parts = [f"{k} {m[k]['mean']:.2f}" + (f"±{m[k]['std']:.2f}" if m[k]["std"] else "") for k in keys]
    parts.append(f"tokens {m['generated_tokens']['mean']:.1f}")
    parts.append(f"steps {m['decode_steps']['mean']:.1f}")
    parts.append(f"s/q {m['seconds_per_question']:.3f}")
    return f"{m.get('method')} on {m.get('task')} ({m['questions']} questions, {m['samples']} samples): " + ", ".join(parts) if keys else json.dumps(m)
