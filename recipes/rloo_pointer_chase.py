"""RLOO in hard, soft and fuzzy rollout modes learns on pointer chasing (Butt et al., arXiv 2509.19170, in small).

1. A partly trained CoT-SFT model: the demo's from-scratch 4-layer GPT-2 (d=128) on 4-hop pointer chasing,
   `cot_sft` for --sft-steps steps only, so that its sampled answers are right part of the time (rewards vary
   within a group: the leave-one-out baseline has a signal).
2. `rloo` from that model in each rollout mode x each seed: `group_size` samples of `prompts_per_step` prompts
   per step, CoT ended at the task's `####` marker (or after k + 2 steps), reward 100 / 10 / 0 from the task's
   scorer, held-out (valid split) greedy accuracy every --eval-every steps, in the mode the run trains in.
3. One plot with three curves (mean over seeds, min-max band) and a table: OUT/rloo_curves.png, OUT/rloo_table.md.

Every run is `latentcot train ...` through the pipeline, resumable: re-running the script reuses finished runs.

    python recipes/rloo_pointer_chase.py --out runs/rloo-pc            # the README numbers
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path

from rloo_common import key_values, run_main, train

MODEL = "scratch-gpt2:pointer_chase"


def eval_start(values: dict, run: Path, eval_limit: int) -> None:
    """Held-out accuracy of the start model, as the training run's own evaluations compute it, into
    run/eval_step0 (the training loop evaluates only after steps)."""
    from latentcot.decoding.sampling import GenerationConfig
    from latentcot.eval.runner import evaluate
    from latentcot.pipeline import build, resolve, select_examples

    if (run / "eval_step0" / "metrics.json").is_file():
        return
    res = resolve({**values, "progress": False})
    method, task = build(res)
    held = select_examples(task, "valid", 0, eval_limit)
    evaluate(method, task, held, GenerationConfig(max_new_tokens=res.generation.max_new_tokens), [0],
             run / "eval_step0", res.run.batch_size, False)


def ablate_gauss_grad() -> None:
    """Diagnostic, not the paper's estimator: the replay's Gaussian CoT-step terms keep their values but pass no
    gradient (so only sampled tokens train). Patches `training.rollout` for this process."""
    import latentcot.training.rollout as rollout

    density = rollout.soft_step_log_density
    rollout.soft_step_log_density = lambda *args, **kw: density(*args, **kw).detach()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/rloo-pointer-chase")
    p.add_argument("--k", type=int, default=4, help="hops")
    p.add_argument("--answer-hops", type=int, default=0,
                   help="hops the answer step does itself (task answer_hops: the CoT lists the first k - h nodes)")
    p.add_argument("--distinct", action="store_true",
                   help="only walks that never revisit a node (task distinct=true): no start-node or CoT-copy shortcut")
    p.add_argument("--sft-steps", type=int, default=135, help="cot_sft steps (partly trained start)")
    p.add_argument("--steps", type=int, default=50, help="rloo optimizer steps per run")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--mode-lr", nargs="*", default=[], metavar="MODE=LR",
                   help="learning rate for one rollout mode (overrides --lr), e.g. soft=1e-4")
    p.add_argument("--mode-steps", nargs="*", default=[], metavar="MODE=N",
                   help="rloo steps for one rollout mode (overrides --steps), e.g. soft=100")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more rloo settings, e.g. noise_scale=1.0")
    p.add_argument("--sft-only", action="store_true",
                   help="train the start model and print its held-out accuracy in each mode (OUT/start-MODE), no RL")
    p.add_argument("--ablate-gauss-grad", action="store_true",
                   help="diagnostic, NOT the paper's estimator: the Gaussian CoT-step terms keep their value but pass no "
                        "gradient, so only the sampled tokens train")
    p.add_argument("--normalize-advantages", action="store_true", help="divide advantages by their batch std")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-limit", type=int, default=200, help="held-out (valid) questions per evaluation")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--modes", nargs="+", default=["hard", "soft", "fuzzy"])
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out, t0 = Path(a.out), time.time()

    if a.ablate_gauss_grad:
        ablate_gauss_grad()
    mode_lr = key_values(a.mode_lr, "--mode-lr", float, a.modes)
    mode_steps = key_values(a.mode_steps, "--mode-steps", int, a.modes)
    extra = key_values(a.set, "--set", str)
    task = {"task": "pointer_chase", "k": a.k, "num_train": 4000, "model": MODEL, "device": "cpu"}
    if a.answer_hops:
        task["answer_hops"] = a.answer_hops
    if a.distinct:
        task["distinct"] = True
    sft = {**task, "method": "cot_sft", "max_steps": a.sft_steps, "train_batch_size": 64, "lr": 1e-3, "run.seed": 0,
           "save_every": 0}

    def rloo_values(mode: str, seed: int) -> dict:
        return {**task, "method": "rloo", "rollout_mode": mode, "init_from": str(out / "sft"),
                "think_end": "####", "max_cot_tokens": a.k + 2, "max_answer_tokens": 2,
                "group_size": a.group_size, "prompts_per_step": a.prompts, "max_steps": mode_steps.get(mode, a.steps),
                "lr": mode_lr.get(mode, a.lr), "normalize_advantages": a.normalize_advantages,
                "eval_every": a.eval_every, "eval_limit": a.eval_limit, "max_new_tokens": 2, "batch_size": 100,
                "log_every": 1, "save_every": 20, "run.seed": seed, **extra}

    from latentcot.pipeline import check_runs

    check_runs({"sft": sft} | {f"rloo-{mode}-s{seed}": rloo_values(mode, seed)
                                for mode in a.modes for seed in a.seeds})
    train(sft, out / "sft")
    runs: dict[str, list[Path]] = {}
    rows = []
    for mode in a.modes:
        for seed in a.seeds:
            run = out / f"rloo-{mode}-s{seed}"
            values = rloo_values(mode, seed)
            if a.sft_only:
                if seed == a.seeds[0]:
                    eval_start(values, out / f"start-{mode}", a.eval_limit)
                    got = json.loads((out / f"start-{mode}" / "eval_step0" / "metrics.json").read_text())
                    print(f"start model, {mode}: held-out accuracy {got['accuracy_strict']['mean']:.1f}%")
                continue
            eval_start(values, run, a.eval_limit)
            train(values, run)
            runs.setdefault(mode, []).append(run / "train_log.jsonl")
            from latentcot.analysis.rl import read_log

            tr, ev = read_log(run / "train_log.jsonl")
            first, last = tr[: max(1, len(tr) // 10)], tr[-max(1, len(tr) // 10):]
            rows.append({
                "mode": mode, "seed": seed,
                "reward_first": sum(r["reward"] for r in first) / len(first),
                "reward_last": sum(r["reward"] for r in last) / len(last),
                "all_equal": sum(r["all_equal_groups"] for r in tr) / len(tr),
                "acc_first": ev[0]["eval"]["accuracy_strict"], "acc_last": ev[-1]["eval"]["accuracy_strict"],
                "evals": [(r["step"], r["eval"]["accuracy_strict"]) for r in ev],
            })
    if a.sft_only:
        return
    from latentcot.analysis.rl import plot_rl_curves

    what = (f"{a.k}-hop pointer chasing" + (" (walks without revisits)" if a.distinct else "")
            + (f" (answer step: {a.answer_hops} look-up{'s' if a.answer_hops > 1 else ''})" if a.answer_hops else ""))
    png = plot_rl_curves(runs, out / "rloo_curves.png", f"RLOO on {what} from a partly trained CoT-SFT model")
    lines = ["| rollout mode | seed | mean reward, first 10% of steps | last 10% | held-out acc. at first eval | at last eval "
             "| share of groups all equal (mean over steps) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['seed']} | {r['reward_first']:.1f} | {r['reward_last']:.1f} | {r['acc_first']:.1f} | "
              f"{r['acc_last']:.1f} | {r['all_equal']:.2f} |" for r in rows]
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    lines.append(f"\nprocess CPU time {cpu.ru_utime + cpu.ru_stime:.0f} s (user+sys), wall {time.time() - t0:.0f} s")
    (out / "rloo_table.md").write_text("\n".join(lines) + "\n")
    (out / "rloo_results.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))
    print(f"wrote {png}")


if __name__ == "__main__":
    run_main(main)
