"""CODI on the demo's pointer chasing: does it learn k hops, and at which learning rate?

Trains the demo's `cot_sft` model (or reuses it from --out), then `codi` from it for --steps optimizer steps,
evaluating held-out questions every --eval-every steps (train_log.jsonl) and the test questions at the end.
With --quick the demo's `--quick` settings are used (2 hops, 4,000 training problems, 100 test questions);
otherwise the full demo's (4 hops, 200 test questions here). Two CPU minutes per 300 CODI steps at 4 hops.

    python recipes/codi_pointer_chase.py --quick --lr 3e-4 --steps 600 --out runs/codi-2hop      # learns: 100%
    python recipes/codi_pointer_chase.py --quick --lr 1e-3 --steps 600 --out runs/codi-2hop-1e-3 # diverges
    python recipes/codi_pointer_chase.py --lr 3e-4 --steps 1500 --out runs/codi-4hop              # 22-32%
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from latentcot.cli.common import nonnegative_int, positive_int, run_script
from latentcot.demo import Arm, DemoSettings, arms, check_arms, run_arm


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the demo's --quick settings (2 hops)")
    p.add_argument("--lr", type=float, default=3e-4, help="codi's learning rate")
    p.add_argument("--steps", type=positive_int, default=600, help="codi's optimizer steps")
    p.add_argument("--eval-every", type=nonnegative_int, default=300,
                   help="held-out evaluation cadence (0 = only at the end)")
    p.add_argument("--out", default="runs/codi-pointer-chase")
    a = p.parse_args()
    s = DemoSettings.quick() if a.quick else dataclasses.replace(DemoSettings(), eval_questions=200)
    task, out, started = "pointer_chase", Path(a.out), time.time()
    sft = next(arm for arm in arms(s, task) if arm.method == "cot_sft")
    extra = {"eval_every": a.eval_every, "eval_limit": 200} if a.eval_every else {}
    codi_arm = Arm("codi", {"num_thoughts": s.k, **extra}, a.steps, "cot_sft", a.lr)
    check_arms(s, task, [sft, codi_arm], out)  # a bad --lr ends here, before cot_sft trains
    cot = run_arm(s, task, sft, out, progress=False)
    codi = run_arm(s, task, codi_arm, out, progress=False)
    log = out / task / "codi" / "train_log.jsonl"
    for line in log.read_text().splitlines():
        row = json.loads(line)
        if "eval" in row:
            print(f"step {row['step']:5d}: held-out accuracy {row['eval']['accuracy_strict']:.1f}%")
    print(f"{s.k} hops: cot_sft {cot['accuracy']:.1f}%, codi (lr {a.lr}, {a.steps} steps) {codi['accuracy']:.1f}% "
          f"on {s.eval_questions} test questions; {time.time() - started:.0f} s")


if __name__ == "__main__":
    run_script(main, resumable=True)
