"""An `rloo` run's training rewards beside the start model's on the same rollouts' prompts and noise, step by step.

Each rollout step draws new prompts (the run's data order) and noise from per-row streams seeded by (run seed,
step, question, sample), so a step's reward moves with how hard its prompts are as much as with the policy. This
replays the run's own training stream under other weights (by default the start model: the run's `init_from`, or
the plain model) with the same prompts and the same seeds, rollouts only (no training), and sets the two rewards
side by side: common random numbers, so the per-step difference (run - start) leaves out the prompts' difficulty
and most of the sampling noise. While the weights barely move the two rollouts are identical; the difference
counts only the rollouts that the training changed.

Writes OUT/paired.jsonl (one line per replayed step: the run's logged reward, accuracy, CoT length and entropy, and
the replayed ones; a re-run reuses the steps it holds), prints the means by quarter of the replayed steps with the
standard error of the mean difference over steps, and plots both rewards and their difference (OUT/paired.png).
Step 1 is the check: replayed with the start weights (what the run rolled out with at step 1) it must give the
run's logged reward, mean CoT length and mean entropy, or the replay is not the run's stream and the script stops.
Rollouts go in the run's micro-batches (`micro_batch`): a matrix product's last bits depend on the batch, and over
a long soft CoT one flipped sample is enough to part two rollouts. The thread count does the same: run the replay
with the run's (OMP_NUM_THREADS=1 for the README's runs; with 2 threads seed 1's step 1 fails the check).

    python recipes/rloo_paired_base.py runs/rloo-smollm2-lr1e-6-120/rloo-soft-s0 --every 2
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml
from rloo_common import quarters, run_main

from latentcot.eval.metrics import mean_se

# Settings that only say where a run writes or how it reports, not what its rollouts are.
SKIP = {"run.out", "run.weights", "run.progress", "run.eval_limit"}


def run_values(run: Path) -> dict:
    cfg = yaml.safe_load((run / "train_config.yaml").read_text())
    return {f"{sec}.{k}": v for sec, part in cfg.items() for k, v in part.items() if f"{sec}.{k}" not in SKIP}


def quarter_rows(rows: list[dict]) -> list[dict]:
    """Means of the run's and the replayed rewards by quarter of the rows, with the standard error over steps of the
    mean difference."""
    out = []
    for part in quarters(rows):
        diff, se = mean_se([r["reward"] - r["replay_reward"] for r in part])
        out.append({"steps": f"{part[0]['step']}-{part[-1]['step']}", "n": len(part),
                    "reward": sum(r["reward"] for r in part) / len(part),
                    "replay": sum(r["replay_reward"] for r in part) / len(part), "diff": diff, "se": se})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a finished or running rloo run directory (train_config.yaml, train_log.jsonl)")
    p.add_argument("--weights", default=None, help="weights to replay with (default: the run's start)")
    p.add_argument("--every", type=int, default=1, help="replay every N-th step (1, 1+N, ...)")
    p.add_argument("--out", type=Path, default=None, help="default: RUN/paired_base")
    p.add_argument("--window", type=int, default=5, help="moving average of the plot, in replayed steps")
    a = p.parse_args()
    if a.every < 1 or a.window < 1:
        print(f"error: --every and --window must be >= 1, got {a.every} and {a.window}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.WARNING)
    import torch

    from latentcot.analysis.rl import read_log
    from latentcot.pipeline import build, resolve, training_examples
    from latentcot.training.distributed import split_global_batch
    from latentcot.training.loop import BatchStream

    if not (a.run / "train_config.yaml").is_file() or not (a.run / "train_log.jsonl").is_file():
        print(f"error: {a.run} holds no rloo run (train_config.yaml and train_log.jsonl)", file=sys.stderr)
        sys.exit(2)
    values = run_values(a.run)
    if values.get("run.method") != "rloo":
        print(f"error: {a.run} is a {values.get('run.method')} run, not rloo", file=sys.stderr)
        sys.exit(2)
    logged = {r["step"]: r for r in read_log(a.run / "train_log.jsonl")[0]}
    if not logged:
        print(f"error: {a.run / 'train_log.jsonl'} holds no logged step yet", file=sys.stderr)
        sys.exit(2)
    out = a.out or a.run / "paired_base"
    out.mkdir(parents=True, exist_ok=True)

    res = resolve({**values, "out": str(out / "unused"), "weights": a.weights, "progress": False})
    seed = res.run.seeds[0]  # what `latentcot train` seeds the run with
    torch.manual_seed(seed)  # the method reads the run's seed from here, as in training
    method, task = build(res)
    examples = training_examples(res, task)  # what the run trained on
    tc = method.train_config(res.train)  # the batching the training loop ran with (micro-batches of prompts)
    micro, _ = split_global_batch(tc.global_batch_size, tc.train_batch_size, tc.grad_accum, 1)  # one process
    stream = BatchStream(len(examples), micro, tc.grad_accum, seed)  # the loop's own data order
    step_batches = [stream.next_step() for _ in range(max(logged))]  # [step - 1] -> that step's micro-batches

    def replay_step(step: int) -> dict:
        """The rollouts of logged step `step` (1-based) under the loaded weights, scored as training logs them."""
        method.begin_step(step - 1, res.train.max_steps)
        keys = ("reward", "accuracy", "cot_len", "entropy")
        sums, total = dict.fromkeys(keys, 0.0), 0.0
        with torch.inference_mode():  # the run's micro-batches, their logs weighted by rows as the training loop does
            for part in step_batches[step - 1]:
                records, _, logs = method.scored_rollouts([examples[i] for i in part], task)
                total += float(len(records))
                for k in keys:
                    sums[k] += logs[k] * float(len(records))
        return {f"replay_{k}": sums[k] / total for k in keys}

    path = out / "paired.jsonl"
    done = {json.loads(line)["step"]: json.loads(line) for line in path.read_text().splitlines()} if path.is_file() else {}
    steps = [s for s in range(1, max(logged) + 1, a.every) if s in logged]
    from tqdm import tqdm

    with path.open("a") as f:
        for step in tqdm(steps, desc="replay", dynamic_ncols=True):
            if step in done:
                continue
            row = {"step": step, **{k: logged[step][k] for k in ("reward", "accuracy", "cot_len", "entropy")},
                   **replay_step(step)}
            if step == 1 and a.weights is None and (
                    (row["replay_reward"], row["replay_cot_len"]) != (row["reward"], row["cot_len"])
                    or abs(row["replay_entropy"] - row["entropy"]) > 1e-6 * abs(row["entropy"])):
                print(f"error: replaying step 1 with the start weights gave reward {row['replay_reward']:.3f}, CoT "
                      f"length {row['replay_cot_len']:.3f}, entropy {row['replay_entropy']:.5f}; the run logged "
                      f"{row['reward']:.3f}, {row['cot_len']:.3f}, {row['entropy']:.5f}: this is not the run's "
                      "training stream", file=sys.stderr)
                sys.exit(1)
            done[step] = row
            f.write(json.dumps(row) + "\n")
            f.flush()
    rows = [done[s] for s in steps]
    who = a.weights or "the start model"
    print(f"{a.run}: logged rewards vs {who} on the same prompts and noise seeds, {len(rows)} steps (every {a.every})")
    print("| steps | run's reward | replayed reward | run - replayed (+- standard error over steps) |")
    print("|---|---|---|---|")
    for q in quarter_rows(rows):
        print(f"| {q['steps']} ({q['n']}) | {q['reward']:.1f} | {q['replay']:.1f} | {q['diff']:+.1f} +- {q['se']:.1f} |")
    d = [r["reward"] - r["replay_reward"] for r in rows]
    mean, se = mean_se(d)
    print(f"all steps: run - replayed {mean:+.1f} +- {se:.1f}; steps where the two differ: "
          f"{sum(abs(x) > 1e-9 for x in d)} of {len(d)}")
    from latentcot.analysis.plots import png_figure

    def smooth(vals: list[float]) -> list[float]:
        return [sum(vals[max(0, i - a.window + 1): i + 1]) / len(vals[max(0, i - a.window + 1): i + 1])
                for i in range(len(vals))]

    png = out / "paired.png"
    with png_figure(png, (11, 4), ncols=2, suptitle=f"{a.run}: the run's rollouts vs {who}'s on the same prompts "
                    "and noise") as (fig, (ax1, ax2)):
        x = [r["step"] for r in rows]
        ax1.plot(x, smooth([r["reward"] for r in rows]), label="the run (its weights at that step)")
        ax1.plot(x, smooth([r["replay_reward"] for r in rows]), label=f"{who}")
        ax1.set_ylabel(f"mean rollout reward ({a.window}-point moving average)")
        ax2.plot(x, smooth(d), color="C2")
        ax2.axhline(0.0, color="gray", lw=0.8)
        ax2.set_ylabel(f"run - replayed ({a.window}-point moving average)")
        for ax in (ax1, ax2):
            ax.set_xlabel("step")
        ax1.legend()
    print(f"wrote {png}")


if __name__ == "__main__":
    run_main(main)
