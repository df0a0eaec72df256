"""Diagnostics of RL over chains of thought (Butt et al., arXiv 2509.19170): training curves, the entropy profile
along the CoT, and out-of-domain retention (mean NLL of gold answers with their rationales)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from latentcot.analysis.plots import _pyplot


def read_log(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, held-out eval rows) of a train_log.jsonl."""
    train, evals = [], []
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
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [r["step"] for r in train]
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
    fig.suptitle(title or "RLOO")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return Path(png)
