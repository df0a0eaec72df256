"""Diagnostics of RL over chains of thought (Butt et al., arXiv 2509.19170): training curves, the entropy profile
along the CoT, and out-of-domain retention (mean NLL of gold answers with their rationales)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from latentcot.analysis.plots import png_figure


def read_log(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, held-out eval rows) of a train_log.jsonl; the start model's evaluation comes first when the
    run directory holds one (eval_step0/metrics.json)."""
    train, evals = [], []
    start = Path(path).parent / "eval_step0" / "metrics.json"
    if start.is_file():
        m = json.loads(start.read_text())
        evals.append({"step": 0, "eval": {k: m[k]["mean"] for k in ("accuracy_strict", "accuracy_flexible")}})
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            (evals if "eval" in row else train).append(row)
    return train, evals


def plot_rl_log(log_path: Path, png: Path, title: str = "") -> Path | None:
    """Mean rollout reward and accuracy per step, and held-out accuracy at each evaluation, from one run's log."""
    if not Path(log_path).is_file():
        return None
    train, evals = read_log(log_path)
    if not train:
        return None
    steps = [r["step"] for r in train]
    with png_figure(png, (10, 4), ncols=2, suptitle=title or "RLOO") as (fig, (ax1, ax2)):
        ax1.plot(steps, [r.get("reward", float("nan")) for r in train], label="mean reward")
        ax1.set_xlabel("step")
        ax1.set_ylabel("reward")
        ax2.plot(steps, [r.get("accuracy", float("nan")) for r in train], label="rollout accuracy")
        if evals:
            ax2.plot([r["step"] for r in evals], [r["eval"].get("accuracy_strict", float("nan")) for r in evals], "o-",
                     label="held-out accuracy (greedy)")
        ax2.set_xlabel("step")
        ax2.set_ylabel("accuracy (%)")
        ax2.legend()
    return Path(png)


def plot_rl_curves(runs: dict[str, list[Path]], png: Path, title: str = "", accuracy: str = "held-out",
                   window: int = 1) -> Path:
    """One curve per label (e.g. rollout mode): mean over its runs (seeds) of the rollout reward and of the held-out
    accuracy (`accuracy="rollout"`: the training rollouts' accuracy per step), with the min-max band over seeds.
    `window` > 1 draws per-step curves as trailing moving averages over that many steps."""
    import numpy as np

    if accuracy not in ("held-out", "rollout"):
        raise ValueError(f"accuracy must be held-out or rollout, got {accuracy!r}")

    def smooth(pairs: list[tuple[int, float]]) -> list[tuple[int, float]]:
        vals = [v for _, v in pairs]
        return [(s, sum(vals[max(0, i - window + 1): i + 1]) / len(vals[max(0, i - window + 1): i + 1]))
                for i, (s, _) in enumerate(pairs)]

    if accuracy == "rollout":
        pick_acc = lambda tr, ev: smooth([(r["step"], r["accuracy"]) for r in tr])  # noqa: E731
    else:
        pick_acc = lambda tr, ev: [(r["step"], r["eval"]["accuracy_strict"]) for r in ev]  # noqa: E731
    per_step = f" ({window}-step moving average)" if window > 1 else ""
    with png_figure(png, (11, 4), ncols=2, suptitle=title or "RLOO") as (fig, (ax1, ax2)):
        for label, logs in runs.items():
            rows = [read_log(p) for p in logs]
            for ax, pick in ((ax1, lambda tr, ev: smooth([(r["step"], r["reward"]) for r in tr])), (ax2, pick_acc)):
                curves = [dict(pick(tr, ev)) for tr, ev in rows]
                steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
                if not steps:
                    continue
                vals = np.array([[c[s] for s in steps] for c in curves])  # (seeds, steps)
                dots = ax is ax2 and accuracy != "rollout"
                seeds = f"{len(curves)} seed" + ("s" if len(curves) > 1 else "")
                line = ax.plot(steps, vals.mean(0), "o-" if dots else "-", label=f"{label} ({seeds})")
                ax.fill_between(steps, vals.min(0), vals.max(0), alpha=0.2, color=line[0].get_color())
        ax1.set_xlabel("step")
        ax1.set_ylabel("mean rollout reward" + per_step)
        ax2.set_xlabel("step")
        ax2.set_ylabel("rollout accuracy (%)" + per_step if accuracy == "rollout" else "held-out accuracy (%, greedy)")
        ax1.legend()
        ax2.legend()
    return Path(png)


def entropy_profile(records: Sequence[dict[str, Any]]) -> list[float]:
    """Mean entropy of p by CoT position over evaluation sample records (`extra.entropy` of thinking methods)."""
    sums: list[float] = []
    counts: list[int] = []
    for r in records:
        for i, e in enumerate((r.get("extra") or {}).get("entropy", [])):
            if i == len(sums):
                sums.append(0.0)
                counts.append(0)
            sums[i] += float(e)
            counts[i] += 1
    return [s / c for s, c in zip(sums, counts)]


def plot_entropy_profiles(profiles: dict[str, list[float]], png: Path, title: str = "") -> Path:
    """Mean entropy by CoT position, one line per model / mode."""
    with png_figure(png, (7, 4)) as (fig, ax):
        for label, prof in profiles.items():
            ax.plot(range(1, len(prof) + 1), prof, "o-", label=label)
        ax.set_xlabel("CoT position")
        ax.set_ylabel("mean entropy of p (nats)")
        ax.set_title(title or "entropy along the chain of thought")
        ax.legend()
    return Path(png)


def gold_nll(method, task, examples: Sequence[Any], batch_size: int = 8) -> float:
    """Out-of-domain retention (Butt et al.): mean negative log-likelihood per token of the gold targets (rationale,
    where the task has one, and answer) after each prompt, teacher-forced through `Backbone.forward`."""
    from latentcot.models.splice import IGNORE, tokens

    total, count = 0.0, 0
    was = method.training
    method.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(examples), batch_size):
                chunk = examples[i : i + batch_size]
                rows = [[tokens(method.prompt_ids(ex, task)), tokens(method.target_ids(ex, task, True), labels=True)]
                        for ex in chunk]
                batch = method.splice_rows(rows, padding_side="right")
                logits = method.backbone.forward(batch.inputs_embeds, batch.attention_mask, batch.position_ids).logits
                lp = torch.log_softmax(logits[:, :-1].float(), -1)  # (B, T-1, V): position t predicts t+1
                labels = batch.labels[:, 1:]
                keep = labels != IGNORE
                nll = -lp.gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)[keep]
                total += float(nll.sum())
                count += int(keep.sum())
    finally:
        method.train(was)
    return total / max(1, count)
