"""Metrics over sample records: accuracy (strict, flexible), unbiased pass@k, self-consistency@k,
token and step statistics, throughput; mean +- std over seeds."""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), for n samples of which c are correct."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: of the questions that exactly one of two systems gets right, `only_a` are
    right only with A and `only_b` only with B; under no difference each is Binomial(only_a + only_b, 1/2)."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def majority_vote(answers: Sequence[str | None], same: Callable[[str, str], bool] | None = None) -> str | None:
    """The most frequent answer; ties go to the answer seen first; a missing answer (None) never wins over one.

    Args:
        answers: extracted answers in sample order.
        same: optional equivalence (e.g. numeric); answers are grouped under the first equivalent one seen.
    """
    groups: list[str] = []
    counts: Counter[int] = Counter()
    for a in answers:
        if a is None:
            continue
        for i, g in enumerate(groups):
            if g == a or (same is not None and same(g, a)):
                counts[i] += 1
                break
        else:
            groups.append(a)
            counts[len(groups) - 1] += 1
    if not groups:
        return None
    best = max(counts.values())
    return groups[min(i for i, c in counts.items() if c == best)]


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(n); 0 for one value)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_se needs at least one value")
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(n) if n > 1 else 0.0)


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    if not values or any(math.isnan(v) for v in values):  # pstdev raises on NaN (e.g. no timings per seed)
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def compute_metrics(
    records: Iterable[dict[str, Any]],
    is_equivalent: Callable[[str | None, str], bool] | None = None,
    ks: Sequence[int] = (1,),
) -> dict[str, Any]:
    """Aggregates sample records (one per question x seed x sample) into run metrics.

    Each record has: id, seed, sample, gold, pred_strict, pred_flexible, correct_strict, correct_flexible,
    generated_tokens, decode_steps, prefill_tokens, seconds. Accuracy is over every sample; pass@k and
    self-consistency@k use the first k samples of each question; every metric is computed per seed, then
    reported as mean and std over seeds.
    """
    by_seed: dict[int, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    all_recs = []
    for r in records:
        by_seed[int(r["seed"])][str(r["id"])].append(r)
        all_recs.append(r)
    if not all_recs:
        return {"questions": 0, "samples": 0}
    per_seed: dict[str, list[float]] = defaultdict(list)
    for _seed, questions in sorted(by_seed.items()):
        samples = [r for rs in questions.values() for r in rs]
        for mode in ("strict", "flexible"):
            per_seed[f"accuracy_{mode}"].append(100.0 * statistics.fmean(float(r[f"correct_{mode}"]) for r in samples))
        n_samples = min(len(rs) for rs in questions.values())
        for k in ks:
            if k > n_samples:
                continue
            for mode in ("strict", "flexible"):
                vals = []
                sc = []
                for rs in questions.values():
                    rs = sorted(rs, key=lambda r: int(r["sample"]))
                    c = sum(bool(r[f"correct_{mode}"]) for r in rs)
                    vals.append(pass_at_k(len(rs), c, k))
                    if is_equivalent is not None:
                        vote = majority_vote([r[f"pred_{mode}"] for r in rs[:k]], lambda a, b: is_equivalent(a, b))
                        sc.append(float(vote is not None and is_equivalent(vote, str(rs[0]["gold"]))))
                per_seed[f"pass@{k}_{mode}"].append(100.0 * statistics.fmean(vals))
                if sc:
                    per_seed[f"sc@{k}_{mode}"].append(100.0 * statistics.fmean(sc))
        secs = sum(float(r.get("seconds", 0.0)) for r in samples)
        per_seed["questions_per_second"].append(len(questions) / secs if secs > 0 else float("nan"))
    gen = [float(r.get("generated_tokens", 0)) for r in all_recs]
    steps = [float(r.get("decode_steps", 0)) for r in all_recs]
    out: dict[str, Any] = {
        "questions": len({str(r["id"]) for r in all_recs}),
        "samples": len(all_recs),
        "seeds": sorted(by_seed),
        "generated_tokens": {**_mean_std(gen), "median": statistics.median(gen), "max": max(gen)},
        "decode_steps": {**_mean_std(steps), "median": statistics.median(steps), "max": max(steps)},
        "latent_steps_mean": statistics.fmean(float(r.get("latent_steps", 0)) for r in all_recs),
        "soft_steps_mean": statistics.fmean(float(r.get("soft_steps", 0)) for r in all_recs),
        "prefill_tokens_mean": statistics.fmean(float(r.get("prefill_tokens", 0)) for r in all_recs),
        "seconds_per_question": statistics.fmean(
            sum(float(r.get("seconds", 0.0)) for r in rs) for q in by_seed.values() for rs in q.values()
        ),
    }
    for key, vals in per_seed.items():
        out[key] = _mean_std(vals)
    return out
