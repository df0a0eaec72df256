"""The paper's evaluation of RL over soft/fuzzy thoughts (Butt et al., arXiv 2509.19170) for a base model and
trained `rloo` runs: six modes {hard, soft, fuzzy} x {greedy, sample}, pass@1 and pass@k (unbiased estimator,
k = --samples per question), out-of-domain retention (mean per-token NLL of gold rationale + answer on another
task), and the entropy of p along the chain of thought (base vs trained), as one table and one plot.

The base model is each run's start (its `init_from` weights, or the plain model); every setting (model, task,
think_end, budgets) is read from the first run's train_config.yaml. Evaluations are `latentcot eval` runs under
--out (resumable: a re-run reuses finished samples).

    python recipes/rloo_eval.py runs/rloo-pc/rloo-soft-s0 runs/rloo-pc/rloo-hard-s0 --split test --limit 100 \\
        --samples 32 --ood-task pointer_chase2 --out runs/rloo-pc/eval
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path

import yaml
from rloo_common import run_main

DECODING = {"greedy": {"temperature": 0.0, "num_samples": 1}, "sample": {"temperature": 1.0}}
SKIP = {"run.out", "run.weights", "run.seeds", "run.seed", "run.limit", "run.offset", "run.split", "run.eval_limit",
        "run.progress", "generation.temperature", "generation.num_samples", "method.token_mode"}


def run_values(run: Path) -> dict:
    """A trained run's settings as dotted keys (training-only sections left out)."""
    cfg = yaml.safe_load((run / "train_config.yaml").read_text())
    return {f"{sec}.{k}": v for sec in ("run", "generation", "method", "task") for k, v in cfg[sec].items()
            if f"{sec}.{k}" not in SKIP and v is not None}


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="trained rloo run directories")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--split", default=None, help="evaluation split (default: the task's test split)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--samples", type=int, default=32, help="samples per question in sample mode (pass@k)")
    p.add_argument("--modes", nargs="+", default=["hard", "soft", "fuzzy"])
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of sample mode")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ood-task", default=None, help="another task for retention (mean gold NLL)")
    p.add_argument("--ood-limit", type=int, default=100)
    p.add_argument("--ood-settings", nargs="*", default=[], help="key=value task settings of the OOD task")
    p.add_argument("--ood-batch-size", type=int, default=8,
                   help="rows per teacher-forced forward of the OOD NLL (its logits are rows x length x vocabulary)")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from latentcot.analysis.rl import entropy_profile, gold_nll, plot_entropy_profiles
    from latentcot.eval.runner import read_samples
    from latentcot.pipeline import build, evaluate_run, resolve, select_examples
    from latentcot.tasks import get_task

    t0 = time.time()
    base_values = run_values(a.runs[0])
    models = {"base": (base_values, None)}
    for run in a.runs:
        models[f"rloo-{yaml.safe_load((run / 'train_config.yaml').read_text())['method']['rollout_mode']}"
               f" ({run.name})"] = (run_values(run), str(run / "trainable.safetensors"))
    table = [f"| model | mode | greedy acc. | sample pass@1 | sample pass@{a.samples} | OOD gold NLL |",
             "|---|---|---|---|---|---|"]
    profiles: dict[str, list[float]] = {}
    results = []
    decoding = {**DECODING, "sample": {"temperature": a.temperature}}
    for label, (values, weights) in models.items():
        tag = label.split(" ")[0] if label == "base" else label.split("(")[1].rstrip(")")
        nll = None
        if a.ood_task:
            res = resolve({**values, "weights": weights, "progress": False})
            method, _ = build(res)
            ood = get_task(a.ood_task, **dict(s.split("=", 1) for s in a.ood_settings))
            nll = gold_nll(method, ood, select_examples(ood, None, 0, a.ood_limit), a.ood_batch_size)
        for mode in a.modes:
            row = {"model": label, "mode": mode, "ood_nll": nll}
            for dec, settings in decoding.items():
                n = settings.get("num_samples", a.samples)
                out = a.out / tag / f"{mode}-{dec}"
                res = resolve({**values, **settings, "num_samples": n, "method.token_mode": mode, "weights": weights,
                               "out": str(out), "limit": a.limit, "split": a.split, "batch_size": a.batch_size,
                               "progress": False, "run.seed": 0})
                m = evaluate_run(res)
                if dec == "greedy":
                    row["greedy"] = m["accuracy_strict"]["mean"]
                else:
                    row["pass@1"] = m["pass@1_strict"]["mean"]
                    row[f"pass@{n}"] = m.get(f"pass@{n}_strict", {}).get("mean")
                    profiles[f"{tag} / {mode}"] = entropy_profile(read_samples(out / "samples.jsonl"))
            results.append(row)
            table.append(f"| {label} | {mode} | {fmt(row['greedy'])} | {fmt(row['pass@1'])} | "
                         f"{fmt(row.get(f'pass@{a.samples}'))} | {'-' if nll is None else f'{nll:.3f}'} |")
    a.out.mkdir(parents=True, exist_ok=True)
    plot_entropy_profiles(profiles, a.out / "entropy_profile.png", "mean entropy of p by CoT position (sample mode)")
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    table.append(f"\n{a.limit} questions ({a.split or 'test'} split); accuracy in %; pass@k unbiased over {a.samples} "
                 f"samples at temperature {a.temperature:g}; CPU {cpu.ru_utime + cpu.ru_stime:.0f} s user+sys, wall {time.time() - t0:.0f} s")
    (a.out / "six_modes.md").write_text("\n".join(table) + "\n")
    (a.out / "six_modes.json").write_text(json.dumps({"rows": results, "entropy_profiles": profiles}, indent=1))
    print("\n".join(table))


if __name__ == "__main__":
    run_main(main)
