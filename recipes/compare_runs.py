"""Per-question comparison of two evaluation runs on the same questions: both right, only A, only B, neither,
and the exact McNemar p-value (strict answers by default; the first sample of the first seed of each question).

With --all-samples (runs that draw several samples per question): each question's pass rate (the share of its
samples, over all seeds, that are right), the mean over questions for A and B (pass@1), the mean difference B - A
and its paired standard error (the standard deviation of the per-question differences over sqrt(questions)). That
error treats the questions as a sample of a larger pool, so it counts how much the questions differ. When the
questions themselves are the object (a fixed set of training prompts, say), a second standard error holds them fixed
and counts only the noise of their samples: sqrt(sum over questions of p_A (1 - p_A) / (n_A - 1) + p_B (1 - p_B) /
(n_B - 1)) / questions, with p a question's pass rate over its n samples (printed when every question has at least
two samples in both runs).

With --by-draw (two runs of the same questions with the same seeds, so that sample k of a question draws the same
random numbers in both): how many samples, matched by (question, seed, sample), are right in both, only in A, only
in B, or in neither, and how many have the same thinking text (soft / latent methods record it). Two evaluations
that differ in one setting applied after the chain of thought (the answer's temperature, say) then show how much
of the outcome that setting decides.

With several B runs and --all-samples (one training recipe run with several seeds, say): one line per B run, then
the mean of B - A over the runs with its standard error over runs (the sample standard deviation of the per-run
differences over sqrt(runs): the seed-to-seed spread) and how many runs are above A. --versus C1 ... CN (as many as
the B runs, in the same order) pairs them: (B_i - A) - (C_i - A) run by run (the same seeds of two settings, say),
with the mean and standard error of that difference.

    python recipes/compare_runs.py runs/softcot-pair runs/softcot_pp-pair
    python recipes/compare_runs.py runs/a runs/b --mode flexible
    python recipes/compare_runs.py runs/base-soft runs/trained-soft --all-samples
    python recipes/compare_runs.py runs/base-soft-t0.5 runs/base-soft-t0.05 --by-draw
    python recipes/compare_runs.py runs/base-soft runs/trained-soft-s{0,1,2} --all-samples --versus runs/other-s{0,1,2}
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latentcot.cli.common import run_script
from latentcot.errors import DataError
from latentcot.eval.metrics import mcnemar_exact, mean_se
from latentcot.eval.runner import SAMPLES, read_samples


def records(run: Path) -> list[dict]:
    """The run's sample records; DataError when it has none."""
    recs = read_samples(run / SAMPLES)
    if not recs:
        raise DataError(f"{run / SAMPLES} holds no samples; evaluate first")
    return recs


def correct_by_question(run: Path, mode: str) -> dict[str, bool]:
    recs = records(run)
    seed = min(int(r["seed"]) for r in recs)
    return {str(r["id"]): bool(r[f"correct_{mode}"]) for r in recs if int(r["seed"]) == seed and int(r["sample"]) == 0}


def samples_by_question(run: Path, mode: str) -> dict[str, list[bool]]:
    """{question id: whether each of its samples (every seed) is right}."""
    recs = records(run)
    right: dict[str, list[bool]] = {}
    for r in recs:
        right.setdefault(str(r["id"]), []).append(bool(r[f"correct_{mode}"]))
    return right


def by_draw(run_a: Path, run_b: Path, mode: str) -> dict[str, int]:
    """Sample-for-sample agreement of two runs: over the samples present in both (matched by question id, seed and
    sample number), counts right in both / only A / only B / neither, and of same thinking text (samples whose
    records carry one in both runs)."""
    recs = {}
    for name, run in (("a", run_a), ("b", run_b)):
        recs[name] = {(str(r["id"]), int(r["seed"]), int(r["sample"])): r for r in records(run)}
    keys = sorted(set(recs["a"]) & set(recs["b"]))
    if not keys:
        raise DataError("the two runs share no (question, seed, sample); --by-draw needs the same questions and seeds")
    out = {"samples": len(keys), "both": 0, "only_a": 0, "only_b": 0, "neither": 0, "with_text": 0, "same_text": 0}
    for k in keys:
        ra, rb = recs["a"][k], recs["b"][k]
        ca, cb = bool(ra[f"correct_{mode}"]), bool(rb[f"correct_{mode}"])
        out["both" if ca and cb else "only_a" if ca else "only_b" if cb else "neither"] += 1
        ta, tb = ((r.get("extra") or {}).get("thinking_text") for r in (ra, rb))
        if ta is not None and tb is not None:
            out["with_text"] += 1
            out["same_text"] += ta == tb
    return out


def pass_rates(right: dict[str, list[bool]]) -> dict[str, float]:
    """{question id: share of its samples that are right}."""
    return {q: sum(v) / len(v) for q, v in right.items()}


def pass_rate_by_question(run: Path, mode: str) -> dict[str, float]:
    """{question id: share of its samples (every seed) whose answer is right}."""
    return pass_rates(samples_by_question(run, mode))


def fixed_question_se(a: dict[str, list[bool]], b: dict[str, list[bool]]) -> float | None:
    """Standard error (percent) of pass@1 B - A over the common questions with the questions held fixed: only the
    binomial noise of each question's samples, p (1 - p) / (n - 1) per question and run. None when a common
    question has fewer than two samples in a run (its variance cannot be estimated)."""
    common = sorted(set(a) & set(b))
    if not common or any(len(a[q]) < 2 or len(b[q]) < 2 for q in common):
        return None
    var = 0.0
    for q in common:
        for right in (a[q], b[q]):
            p = sum(right) / len(right)
            var += p * (1 - p) / (len(right) - 1)
    return 100 * var**0.5 / len(common)


def paired(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Means of A and B over their common questions (percent), the mean difference B - A and its paired standard
    error (sample standard deviation of the per-question differences / sqrt(n); 0 for one question)."""
    common = sorted(set(a) & set(b))
    if not common:
        raise DataError("the two runs share no question ids")
    n = len(common)
    diff, se = mean_se([100 * (b[q] - a[q]) for q in common])
    return {"n": n, "a": 100 * sum(a[q] for q in common) / n, "b": 100 * sum(b[q] for q in common) / n,
            "diff": diff, "se": se}


def all_samples_line(sa: dict[str, list[bool]], b: Path, mode: str) -> tuple[str, float]:
    """The --all-samples line for run A (its `samples_by_question`, read once for every B) and run B, and B - A in
    points."""
    sb = samples_by_question(b, mode)
    r = paired(pass_rates(sa), pass_rates(sb))
    z = f" = {r['diff'] / r['se']:.1f} standard errors" if r["se"] > 0 else ""
    fixed = fixed_question_se(sa, sb)
    zf = f" = {r['diff'] / fixed:.1f} standard errors" if fixed else ""
    held = f"; with these questions held fixed (their samples' noise only) {fixed:.1f}{zf}" if fixed is not None else ""
    return (f"{r['n']} common questions ({mode}, every sample): pass@1 A {r['a']:.1f}, B {r['b']:.1f}; "
            f"B - A {r['diff']:+.1f} points, paired standard error {r['se']:.1f}{z}{held}"), r["diff"]


def over_runs(diffs: list[float], what: str) -> str:
    """One line: the mean of per-run differences, its standard error over runs, and how many are above 0."""
    mean, se = mean_se(diffs)
    up = sum(d > 0 for d in diffs)
    runs = f"{len(diffs)} run" + ("s" if len(diffs) != 1 else "")
    spread = f"standard error over runs {se:.1f}" if len(diffs) > 1 else "no standard error from one run"
    return (f"over {runs}, {what}: mean {mean:+.1f} points, {spread} "
            f"(per run: {', '.join(f'{d:+.1f}' for d in diffs)}; {up} of {len(diffs)} above 0)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path, nargs="+", help="one run, or several with --all-samples")
    p.add_argument("--mode", choices=("strict", "flexible"), default="strict")
    p.add_argument("--all-samples", action="store_true",
                   help="per-question pass rates over all samples, with the standard error of B - A paired over "
                        "questions and the one with the questions held fixed")
    p.add_argument("--by-draw", action="store_true",
                   help="sample for sample (same question, seed and sample number): how many agree on being right, "
                        "and how many have the same thinking text")
    p.add_argument("--versus", type=Path, nargs="+", metavar="C",
                   help="with --all-samples: runs paired one to one with the B runs; (B_i - A) - (C_i - A) run by run")
    args = p.parse_args()
    if (len(args.b) > 1 or args.versus) and not args.all_samples:
        p.error("several B runs and --versus need --all-samples")
    if args.versus and len(args.versus) != len(args.b):
        p.error(f"--versus takes as many runs as B ({len(args.b)}), got {len(args.versus)}")
    if args.all_samples:
        sa = samples_by_question(args.a, args.mode)
        diffs = []
        for b in args.b:
            line, diff = all_samples_line(sa, b, args.mode)
            print(f"{b}: {line}" if len(args.b) > 1 or args.versus else line)
            diffs.append(diff)
        if len(args.b) > 1:
            print(over_runs(diffs, "B - A"))
        if args.versus:
            against = []
            for c in args.versus:
                line, diff = all_samples_line(sa, c, args.mode)
                print(f"{c}: {line}")
                against.append(diff)
            if len(against) > 1:
                print(over_runs(against, "C - A"))
            print(over_runs([b - c for b, c in zip(diffs, against)], "(B - A) - (C - A), run by run"))
        return
    b = args.b[0]
    if args.by_draw:
        d = by_draw(args.a, b, args.mode)
        agree = d["both"] + d["neither"]
        text = (f"; same thinking text in {d['same_text']} of the {d['with_text']} that record one"
                if d["with_text"] else "; no thinking text recorded")
        print(f"{d['samples']} samples in both runs ({args.mode}, matched by question, seed and sample): right in both "
              f"{d['both']}, only A {d['only_a']}, only B {d['only_b']}, neither {d['neither']}; the same outcome in "
              f"{agree} ({100 * agree / d['samples']:.1f}%){text}")
        return
    a, bq = correct_by_question(args.a, args.mode), correct_by_question(b, args.mode)
    common = sorted(set(a) & set(bq))
    if not common:
        raise DataError("the two runs share no question ids")
    both = sum(a[q] and bq[q] for q in common)
    only_a = sum(a[q] and not bq[q] for q in common)
    only_b = sum(bq[q] and not a[q] for q in common)
    print(f"{len(common)} common questions ({args.mode}): A {sum(a[q] for q in common)}, B {sum(bq[q] for q in common)}; "
          f"both {both}, only A {only_a}, only B {only_b}, neither {len(common) - both - only_a - only_b}; "
          f"exact McNemar p = {mcnemar_exact(only_a, only_b):.3f}")


if __name__ == "__main__":
    run_script(main)
