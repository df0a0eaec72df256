"""Probing continuous thoughts through the LM head (CODI, arXiv 2502.21074, section 5; Coconut, arXiv 2412.06769).

Each continuous thought is made from a last-layer hidden state h (Coconut feeds h itself, CODI feeds
projection(h)); applying the LM head to h shows which tokens the thought is closest to, e.g. the intermediate
nodes of a pointer chase or the intermediate results of a calculation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from latentcot.errors import ConfigError
from latentcot.tasks.base import Example, Task


def probe_thoughts(method, task: Task, examples: Sequence[Example], top_k: int = 5, batch_size: int = 32) -> list[dict[str, Any]]:
    """Top-k tokens and probabilities of every continuous thought of every example.

    Args:
        method: a continuous-thought method (has `thought_logits(examples, task) -> (B, N, V)`).
        task: the task the examples come from.
        examples: questions to probe.
        top_k: tokens kept per thought.
        batch_size: questions per forward batch.
    Returns:
        one dict per example: id, question, gold answer, rationale steps, and `thoughts`: for each thought a
        list of {token, prob} (most likely first).
    """
    if not hasattr(method, "thought_logits"):
        raise ConfigError(f"method: {method.name!r} has no continuous thoughts to probe; use coconut or codi")
    tok = method.backbone.tokenizer
    was = method.training
    method.eval()
    out: list[dict[str, Any]] = []
    try:
        for start in range(0, len(examples), batch_size):
            chunk = list(examples[start : start + batch_size])
            with torch.no_grad():
                probs = torch.softmax(method.thought_logits(chunk, task), dim=-1)  # (B, N, V)
            top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
            for b, ex in enumerate(chunk):
                thoughts = [
                    [{"token": tok.convert_ids_to_tokens(int(i)), "prob": round(float(p), 4)}
                     for p, i in zip(top.values[b, n], top.indices[b, n])]
                    for n in range(probs.shape[1])
                ]
                out.append({"id": ex.id, "question": ex.question, "gold": ex.answer, "steps": list(ex.steps),
                            "thoughts": thoughts})
    finally:
        method.train(was)
    return out


def format_probe_table(rows: Sequence[dict[str, Any]], show: int = 3) -> str:
    """A plain-text table: one line per question, one column per thought with its top tokens."""
    lines = []
    for r in rows:
        cells = [" ".join(f"{t['token']}({t['prob']:.2f})" for t in th[:show]) for th in r["thoughts"]]
        lines.append(f"{r['id']}  gold {r['gold']}  steps [{' | '.join(r['steps'])}]")
        for i, c in enumerate(cells, 1):
            lines.append(f"    thought {i}: {c}")
    return "\n".join(lines)


def step_hit_rate(rows: Sequence[dict[str, Any]]) -> list[float]:
    """Per thought position, the share of questions whose top-1 token equals the rationale step at that position
    (one-token steps; the usual pointer-chasing probe)."""
    n = max((len(r["thoughts"]) for r in rows), default=0)
    rates = []
    for i in range(n):
        hits = [r["thoughts"][i][0]["token"] == r["steps"][i] for r in rows if i < len(r["thoughts"]) and i < len(r["steps"])]
        rates.append(sum(hits) / len(hits) if hits else float("nan"))
    return rates
