"""Decode each continuous thought of a trained coconut or codi model through the LM head: prints the top-k
tokens and probabilities per thought and writes them to <out>/probe.json.

Example: latentcot probe --method coconut --model scratch-gpt2:pointer_chase --task pointer_chase \\
             weights=runs/demo/pointer_chase/coconut k=4 max_stage=4 --limit 5"""

from __future__ import annotations

import argparse

from latentcot.cli.common import add_run_arguments, collect


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    p.add_argument("--top-k", type=int, default=5, help="tokens kept per thought (default 5)")
    p.add_argument("--show", type=int, default=3, help="tokens printed per thought (default 3)")


def run(args: argparse.Namespace) -> int:

    from latentcot import atomic
    from latentcot.analysis.probe import format_probe_table, probe_thoughts, step_hit_rate
    from latentcot.errors import ConfigError
    from latentcot.pipeline import build, resolve, select_examples

    values = collect(args)
    values.setdefault("limit", 10)
    res = resolve(values, args.config)
    if args.top_k < 1:
        raise ConfigError(f"--top-k: must be >= 1, got {args.top_k}")
    method, task = build(res)
    examples = select_examples(task, res.run.split, res.run.offset, res.run.limit)
    rows = probe_thoughts(method, task, examples, args.top_k, res.run.batch_size)
    print(format_probe_table(rows, args.show))
    rates = step_hit_rate(rows)
    if rates:
        print("top-1 token == rationale step, per thought: " + ", ".join(f"{r:.2f}" for r in rates))
    out = res.out_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "probe.json", {"method": res.run.method, "model": res.run.model,
                                           "task": res.run.task, "step_hit_rate": rates, "rows": rows})
    print(f"wrote {out}/probe.json")
    return 0
