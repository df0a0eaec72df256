"""RLOO on the real smollm2-135m-instruct (Butt et al., arXiv 2509.19170, in small, on a CPU): easy generated word
problems, soft and hard rollouts, then the six evaluation modes base vs trained.

1. Task: `word_arith` with one +/- step and numbers up to 10 (`task.max_steps=1 task.max_value=10`). The model gets
   a one-shot system prompt (one worked example ending "The answer is N"; both from rloo_smollm2_word_arith.yaml,
   which alone measures the base pass rates), and rollouts sample at
   --temperature (0.5): with the task's zero-shot instruction alone at temperature 1 its sampled pass@1 is about
   5%, so almost every group has equal rewards (no leave-one-out signal). Measured on 16 valid questions x 4
   samples (README): 34% with this prompt at temperature 0.5.
2. `rloo` from the plain model (no warm start) in each of --modes and for each of --seeds (or a mode's own
   --mode-seeds; the seed sets the prompt order and the rollouts' noise): --prompts prompts x --group-size samples per
   step, --steps steps, full fine-tuning at --lr (per mode with --mode-lr), CoT ended at "The answer is" or after
   --max-cot-tokens, reward 100 / 10 / 0 from the task's strict scorer. No held-out evaluation during training
   (CPU); the reward and the rollout accuracy per step are in each run's train_log.jsonl.
3. One plot: mean rollout reward and rollout accuracy per step, one curve per mode (mean over seeds, min-max band;
   OUT/rloo_curves.png, with a --window-step moving average), and OUT/rloo_table.md (one row per mode and seed:
   mean reward, rollout accuracy, share of groups with equal rewards, CoT length and, with kl_coef > 0, the KL to
   the start policy, by quarter of the steps).
4. `recipes/rloo_eval.py` on the base model and every trained run: six modes {hard, soft, fuzzy} x {greedy,
   sample}, pass@1 and pass@--samples on --eval-limit held-out (test split) questions, sample mode at
   --temperature: OUT/eval/six_modes.md.

Every run is `latentcot train` / `latentcot eval` through the pipeline, resumable: re-running reuses finished runs
and finished samples.

    python recipes/rloo_smollm2.py --out runs/rloo-smollm2          # the README numbers (CPU, about 1.5 h)
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

from rloo_common import key_values, quarters, run_main, train

SETTING = Path(__file__).with_name("rloo_smollm2_word_arith.yaml")  # the task, the prompt, the CoT budget


def setting() -> dict:
    """The shared setting (also used alone for the base pass-rate probes) as dotted keys."""
    import yaml

    data = yaml.safe_load(SETTING.read_text())
    return {"model": data["run"]["model"], "task": data["run"]["task"], "system": data["method"]["system"],
            **{f"task.{k}": v for k, v in data["task"].items()}}


TEMPERATURE = 0.5  # rollouts and sample-mode evaluation
MAX_COT_TOKENS = 48


def rollout_setting(max_cot_tokens: int = MAX_COT_TOKENS, temperature: float = TEMPERATURE) -> dict:
    """The setting plus the rollouts' budgets and temperature (this recipe's runs and `rloo_grad_diag.py --smollm2`)."""
    return {**setting(), "max_cot_tokens": max_cot_tokens, "max_answer_tokens": 8, "max_new_tokens": 8,
            "rollout_temperature": temperature}


def mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/rloo-smollm2")
    p.add_argument("--modes", nargs="+", default=["soft", "hard"], choices=["hard", "soft", "fuzzy"],
                   help="rollout modes to train")
    p.add_argument("--steps", type=int, default=20, help="rloo optimizer steps per run")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--mode-lr", nargs="*", default=[], metavar="MODE=LR", help="learning rate of one mode")
    p.add_argument("--mode-steps", nargs="*", default=[], metavar="MODE=N", help="steps of one mode (over --steps)")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--temperature", type=float, default=TEMPERATURE, help="rollout and sample-mode temperature")
    p.add_argument("--max-cot-tokens", type=int, default=MAX_COT_TOKENS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed and mode")
    p.add_argument("--mode-seeds", nargs="*", default=[], metavar="MODE=S,S",
                   help="the seeds of one mode (over --seeds), e.g. hard=0,1")
    p.add_argument("--window", type=int, default=5, help="moving-average window of the plot")
    p.add_argument("--eval-limit", type=int, default=8, help="held-out (test split) questions of the six-mode eval")
    p.add_argument("--samples", type=int, default=32, help="samples per question in sample mode (pass@k)")
    p.add_argument("--no-eval", action="store_true", help="train and plot only")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more rloo settings for every run, e.g. freeze_embeddings=true")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out, t0 = Path(a.out), time.time()

    mode_lr = key_values(a.mode_lr, "--mode-lr", float, a.modes)
    mode_steps = key_values(a.mode_steps, "--mode-steps", int, a.modes)
    mode_seeds = key_values(a.mode_seeds, "--mode-seeds", seed_list, a.modes, "distinct integers, comma-separated")
    seeds = {mode: mode_seeds.get(mode, a.seeds) for mode in a.modes}
    base = {**rollout_setting(a.max_cot_tokens, a.temperature), "device": "cpu", "method": "rloo", "group_size": a.group_size,
            "prompts_per_step": a.prompts, "eval_every": 0, "log_every": 1, "save_every": 5,
            "batch_size": 64, **key_values(a.set, "--set", str)}
    runs, rows = {}, []
    from latentcot.analysis.rl import plot_rl_curves, read_log

    def by_quarter(tr: list[dict], key: str) -> list[float]:
        return [mean(part, key) for part in quarters(tr)]

    def values(mode: str, seed: int) -> dict:
        return {**base, "run.seed": seed, "rollout_mode": mode, "lr": mode_lr.get(mode, a.lr),
                "train.max_steps": mode_steps.get(mode, a.steps)}

    from latentcot.pipeline import check_runs

    check_runs({f"rloo-{mode}-s{seed}": values(mode, seed) for mode in a.modes for seed in seeds[mode]})
    for mode in a.modes:
        for seed in seeds[mode]:
            run = out / f"rloo-{mode}-s{seed}"
            train(values(mode, seed), run, progress=True)
            runs.setdefault(mode, []).append(run / "train_log.jsonl")
            tr, _ = read_log(run / "train_log.jsonl")
            rows.append({"mode": mode, "seed": seed, "run": run, "lr": mode_lr.get(mode, a.lr), "steps": len(tr),
                         "reward": by_quarter(tr, "reward"), "accuracy": by_quarter(tr, "accuracy"),
                         "equal": by_quarter(tr, "all_equal_groups"), "cot_len": by_quarter(tr, "cot_len"),
                         "kl": by_quarter(tr, "kl") if all("kl" in r for r in tr) else None,
                         "cpu_s": sum(r.get("step_s", 0.0) for r in tr)})
    shared = min(r["steps"] for r in rows)  # runs of one seed see the same prompts at a step (same data order)
    for r in rows:
        tr, _ = read_log(r.pop("run") / "train_log.jsonl")
        r["reward_shared"], r["acc_shared"] = mean(tr[:shared], "reward"), mean(tr[:shared], "accuracy")
    png = plot_rl_curves(runs, out / "rloo_curves.png", f"RLOO on {base['model']}, word_arith (1 step, numbers <= 10)",
                         accuracy="rollout", window=a.window)
    q = "by quarter of the steps"
    kl = any(r["kl"] is not None for r in rows)  # runs with kl_coef > 0 log the KL to the start policy
    lines = [f"| rollout mode | seed | lr | steps | mean reward ({q}) | rollout accuracy % ({q}) | groups all equal "
             f"({q}) | CoT tokens ({q}) |" + (f" KL to the start policy, nats per rollout ({q}) |" if kl else "")
             + f" mean reward / accuracy, steps 1-{shared} (same prompts in every mode) |",
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if kl else "")]
    lines += [f"| {r['mode']} | {r['seed']} | {r['lr']:g} | {r['steps']} | {' / '.join(f'{v:.1f}' for v in r['reward'])} | "
              f"{' / '.join(f'{v:.1f}' for v in r['accuracy'])} | {' / '.join(f'{v:.2f}' for v in r['equal'])} | "
              f"{' / '.join(f'{v:.1f}' for v in r['cot_len'])} | "
              + (f"{' / '.join(f'{v:.1f}' for v in r['kl']) if r['kl'] else '-'} | " if kl else "")
              + f"{r['reward_shared']:.1f} / {r['acc_shared']:.1f} |"
              for r in rows]
    (out / "rloo_table.md").write_text("\n".join(lines) + "\n")
    (out / "rloo_results.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))
    print(f"wrote {png}")
    if not a.no_eval:
        cmd = [sys.executable, str(Path(__file__).with_name("rloo_eval.py")),
               *[str(out / f"rloo-{m}-s{seed}") for m in a.modes for seed in seeds[m]], "--split", "test", "--limit", str(a.eval_limit),
               "--samples", str(a.samples), "--temperature", str(a.temperature),
               "--batch-size", str(a.eval_limit * a.samples), "--out", str(out / "eval")]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"CPU {own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime:.0f} s user+sys, "
          f"wall {time.time() - t0:.0f} s")


def seed_list(text: str) -> list[int]:
    """Seeds written as "0,1,2" -> [0, 1, 2]; ValueError for anything else (an empty or repeated seed)."""
    seeds = [int(s) for s in text.split(",")]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"repeated seed in {text!r}")
    return seeds


if __name__ == "__main__":
    run_main(main)
