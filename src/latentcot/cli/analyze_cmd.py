"""Soft-thinking diagnostics (arXiv 2505.15778, 2508.03440) along each question's soft trace: the JS divergence
between next-step distributions after the soft input, its top-1 token and its top-2 token (JS(soft, top-1) ~ 0
means soft inputs act like greedy tokens), the logit lens over layers, the entropy per step, and ROUGE-L between
the soft trace's top-1 tokens and the greedy hard trace. Writes analysis.json and entropy.png, js.png,
logit_lens.png into --out. Settings of the soft_thinking method go as key=value (e.g. randomness=gumbel).

Example: latentcot analyze --model smollm2-135m-instruct --task gsm8k --limit 20 --out runs/analyze-smollm2"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model alias, local dir, .gguf file or hub id (latentcot ls models)")
    p.add_argument("--task", default="gsm8k", help="task name (default gsm8k)")
    p.add_argument("--split", help="task split (default: the task's test split)")
    p.add_argument("--limit", type=int, default=8, help="first N questions (default 8)")
    p.add_argument("--steps", type=int, default=32, help="soft steps traced per question (default 32)")
    p.add_argument("--out", help="output directory (default runs/analyze-<model>-<task>)")
    p.add_argument("--no-eos-stop", action="store_true", help="trace through EOS (e.g. tiny random models)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random streams (stochastic settings only)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--data-dir", help="benchmark data directory (default $LATENTCOT_DATA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("settings", nargs="*", metavar="key=value", help="soft_thinking settings, e.g. soft_top_k=10 randomness=gumbel")


def run(args: argparse.Namespace) -> int:
    import re

    from tqdm.auto import tqdm

    from latentcot import atomic
    from latentcot.analysis.plots import plot_entropy, plot_js, plot_lens
    from latentcot.analysis.soft_trace import diagnose, summarize
    from latentcot.config import check, parse_kv
    from latentcot.decoding.sampling import RowRandom, row_seed
    from latentcot.methods import build_method
    from latentcot.pipeline import RunConfig, load_backbone, select_examples
    from latentcot.tasks import get_task

    check(args.limit >= 1, "--limit", f"must be >= 1, got {args.limit}")
    check(args.steps >= 1, "--steps", f"must be >= 1, got {args.steps}")
    settings = parse_kv(args.settings)
    task = get_task(args.task, **({"data_dir": args.data_dir} if args.data_dir else {}))
    examples = select_examples(task, args.split, 0, args.limit)
    backbone = load_backbone(args.model, RunConfig(model=args.model, device=args.device, dtype=args.dtype))
    method = build_method("soft_thinking", settings, backbone)
    out = Path(args.out or f"runs/analyze-{re.sub(r'[^A-Za-z0-9_.-]+', '_', Path(args.model).name)}-{args.task}")
    out.mkdir(parents=True, exist_ok=True)

    results = []
    for ex in tqdm(examples, desc=f"analyze {args.model} on {task.name}", disable=args.no_progress, dynamic_ncols=True):
        rand = RowRandom([row_seed(args.seed, ex.id, 0)], backbone.device)
        results.append({"id": ex.id, **diagnose(method, method.prompt_ids(ex, task), args.steps, rand, not args.no_eos_stop)})
    summary = summarize(results)
    report = {
        "model": args.model,
        "task": task.name,
        "steps": args.steps,
        "seed": args.seed,
        "method_settings": {k: getattr(method.cfg, k) for k in method.cfg.__dataclass_fields__},
        "lens_norm": results[0]["lens_norm"] if results else None,
        "summary": summary,
        "questions": results,
    }
    atomic.write_json(out / "analysis.json", report)
    title = f"{Path(args.model).name} on {task.name}"
    plot_entropy(results, out / "entropy.png", f"entropy per step: {title}")
    plot_js(summary, out / "js.png", f"JS divergence: {title}")
    plot_lens(summary, out / "logit_lens.png", f"logit lens: {title}")
    s = summary

    def num(key: str) -> str:
        v = s[key]["mean"]
        return "n/a" if v is None else f"{v:.4f}"

    print(
        f"{title} ({s['questions']} questions, up to {args.steps} soft steps): JS(soft, top-1) {num('js_soft_top1')}, "
        f"JS(soft, top-2) {num('js_soft_top2')}, JS(top-1, top-2) {num('js_top1_top2')} nats; "
        f"entropy {num('entropy')} nats; ROUGE-L(soft, greedy) {num('rouge_l')}"
    )
    print(f"wrote {out}/analysis.json, entropy.png, js.png, logit_lens.png")
    return 0
