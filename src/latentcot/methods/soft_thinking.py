"""`soft_thinking`: Soft Thinking (Zhang et al., arXiv 2505.15778) and Stochastic Soft Thinking ("LLMs are
single-threaded reasoners", arXiv 2508.03440), training-free.

During thinking the next input is not a sampled token but the probability-weighted mixture of the top-k token
embeddings, e_t = sum_k p_k E[k], with p after temperature / top-p / min-p (`think_*` fields, `soft_top_k`).
`randomness=dirichlet` (p' ~ Dir(gamma p), by default on the filtered distribution before the top-k cut, where the
official code applies it; `dirichlet_order`) or `randomness=gumbel` (p' = softmax((log p + g) / tau)) makes the
soft inputs stochastic, the fix the second paper proposes for soft inputs that behave like greedy decoding.

Thinking ends, per row, when the top-1 tokens of the soft trace spell the end-of-thinking marker `think_end`
(that last token is fed as a hard token), by Cold Stop (the entropy of the thinking distribution below
`cold_stop_entropy` for `cold_stop_steps` consecutive steps), when the top-1 token is EOS, or at the budget
`max_think_steps`. Except at a marker, the marker's tokens are then forced; the answer is decoded with hard
tokens under the run's GenerationConfig (greedy or sampled). Rows switch phase independently inside one
`Engine.generate` call through a `Controller`, so the batch stays together and KV-cached.

Output: the top-1 tokens of the soft trace are the visible "thinking text"; `RowOutput.text` is that text
followed by the answer phase (marker + answer), so extractors see "... The answer is N" as with hard CoT.
`extra` holds thinking_text, think_stop (marker | cold_stop | eos | budget), think_steps and the entropies.
`max_new_tokens` budgets the answer tokens after each row's marker; `max_think_steps` budgets thinking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from latentcot.config import check
from latentcot.decoding.controllers import ANSWER, FORCE, THINK, ThinkingController, ThoughtInputs
from latentcot.decoding.sampling import GenerationConfig, RowRandom
from latentcot.methods.base import register
from latentcot.methods.thinking import ThinkingConfig, ThinkingMethod, check_marker
from latentcot.models.soft import (
    dirichlet_perturb,
    dirichlet_top_k,
    entropy,
    gumbel_perturb,
    mix_embeddings,
    token_probs,
    top_k_filtered,
)

RANDOMNESS = ("none", "dirichlet", "gumbel")
# Re-exported: these names lived here before the shared pieces moved beneath the method files.
__all__ = ["ANSWER", "FORCE", "RANDOMNESS", "THINK", "SoftThinking", "SoftThinkingConfig", "ThinkingConfig",
           "ThinkingController", "ThinkingMethod", "ThoughtInputs", "check_marker"]


@dataclass
class SoftThinkingConfig(ThinkingConfig):
    """Attributes:
    soft_top_k: tokens mixed per soft input (paper: 10-15).
    think_temperature / think_top_p / think_min_p: the thinking distribution (the answer uses GenerationConfig).
    cold_stop_entropy: Cold Stop threshold on the entropy (nats) of softmax(logits / think_temperature).
    cold_stop_steps: consecutive low-entropy steps that stop thinking (0 = Cold Stop off).
    randomness: none | dirichlet | gumbel (Stochastic Soft Thinking).
    dirichlet_gamma: Dirichlet concentration scale gamma in Dir(gamma p).
    dirichlet_order: "before_top_k" (the official code: noise on the whole top-p / min-p filtered distribution,
        then the top-k cut) or "after_top_k" (the top-k cut first, noise on the k kept weights).
    gumbel_tau: Gumbel-Softmax temperature (paper: 0.5).
    """

    soft_top_k: int = 15
    think_temperature: float = 0.6
    think_top_p: float = 0.95
    think_min_p: float = 0.001
    cold_stop_entropy: float = 0.01
    cold_stop_steps: int = 64
    randomness: str = "none"
    dirichlet_gamma: float = 1.0
    dirichlet_order: str = "before_top_k"
    gumbel_tau: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.soft_top_k >= 1, "soft_top_k", f"must be >= 1 (1 = greedy hard tokens), got {self.soft_top_k}")
        check(self.think_temperature > 0, "think_temperature", f"must be > 0, got {self.think_temperature}")
        check(0 < self.think_top_p <= 1, "think_top_p", f"must be in (0, 1], got {self.think_top_p}")
        check(0 <= self.think_min_p < 1, "think_min_p", f"must be in [0, 1), got {self.think_min_p}")
        check(self.cold_stop_entropy >= 0, "cold_stop_entropy", f"must be >= 0, got {self.cold_stop_entropy}")
        check(self.cold_stop_steps >= 0, "cold_stop_steps", f"must be >= 0 (0 = off), got {self.cold_stop_steps}")
        check(self.randomness in RANDOMNESS, "randomness", f"must be one of {', '.join(RANDOMNESS)}, got {self.randomness!r}")
        check(self.dirichlet_gamma > 0, "dirichlet_gamma", f"must be > 0, got {self.dirichlet_gamma}")
        check(self.gumbel_tau > 0, "gumbel_tau", f"must be > 0, got {self.gumbel_tau}")
        check(self.dirichlet_order in ("before_top_k", "after_top_k"), "dirichlet_order",
              f"must be 'before_top_k' (official) or 'after_top_k', got {self.dirichlet_order!r}")


@register("soft_thinking")
class SoftThinking(ThinkingMethod):
    """Soft Thinking: top-k mixture inputs while thinking, optionally randomised (Dirichlet / Gumbel-Softmax)."""

    Config = SoftThinkingConfig

    @classmethod
    def smoke_settings(cls, model: str) -> dict[str, Any]:
        return {"max_think_steps": 8, "soft_top_k": 4}

    def cold_stop(self) -> tuple[float, int]:
        return self.cfg.cold_stop_entropy, self.cfg.cold_stop_steps

    def think_inputs(self, logits: torch.Tensor, rand: RowRandom | None, gen: GenerationConfig) -> ThoughtInputs:
        c: SoftThinkingConfig = self.cfg
        probs = token_probs(logits, c.think_temperature)  # (n, V)
        if c.randomness == "dirichlet" and c.dirichlet_order == "before_top_k":
            w, ids = dirichlet_top_k(probs, c.soft_top_k, c.think_top_p, c.think_min_p, c.dirichlet_gamma, rand)
        else:
            w, ids = top_k_filtered(probs, c.soft_top_k, c.think_top_p, c.think_min_p)  # (n, k) each
        if c.randomness == "dirichlet" and c.dirichlet_order == "after_top_k":
            w = dirichlet_perturb(w, c.dirichlet_gamma, rand)
        elif c.randomness == "gumbel":
            w = gumbel_perturb(w, c.gumbel_tau, rand, reuse=True)  # w: top_k_filtered's fresh weights
        if c.randomness != "none":
            w, order = w.sort(-1, descending=True)  # (n, k): the visible token is the heaviest after noise
            ids = ids.gather(-1, order)
        return ThoughtInputs(mix_embeddings(w, ids, self.backbone.embed), ids, w, entropy(probs))
