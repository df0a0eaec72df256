"""Per-question comparison of two evaluation runs on the same questions: both right, only A, only B, neither,
and the exact McNemar p-value (strict answers by default; the first sample of the first seed of each question).

    python recipes/compare_runs.py runs/softcot-pair runs/softcot_pp-pair
    python recipes/compare_runs.py runs/a runs/b --mode flexible
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentcot.eval.metrics import mcnemar_exact
from latentcot.eval.runner import SAMPLES, read_samples


def correct_by_question(run: Path, mode: str) -> dict[str, bool]:
    recs = read_samples(run / SAMPLES)
    if not recs:
        sys.exit(f"compare_runs: error: {run / SAMPLES} holds no samples; evaluate first")
    seed = min(int(r["seed"]) for r in recs)
    return {str(r["id"]): bool(r[f"correct_{mode}"]) for r in recs if int(r["seed"]) == seed and int(r["sample"]) == 0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--mode", choices=("strict", "flexible"), default="strict")
    args = p.parse_args()
    a, b = correct_by_question(args.a, args.mode), correct_by_question(args.b, args.mode)
    common = sorted(set(a) & set(b))
    if not common:
        sys.exit("compare_runs: error: the two runs share no question ids")
    both = sum(a[q] and b[q] for q in common)
    only_a = sum(a[q] and not b[q] for q in common)
    only_b = sum(b[q] and not a[q] for q in common)
    print(f"{len(common)} common questions ({args.mode}): A {sum(a[q] for q in common)}, B {sum(b[q] for q in common)}; "
          f"both {both}, only A {only_a}, only B {only_b}, neither {len(common) - both - only_a - only_b}; "
          f"exact McNemar p = {mcnemar_exact(only_a, only_b):.3f}")


if __name__ == "__main__":
    main()
