"""`soft_tokens`: hard, soft and fuzzy chain-of-thought tokens (Butt et al., "Soft Tokens, Hard Truths",
arXiv 2509.19170), inference side.

During the CoT the input is h_t = p_{t-1} E + sigma * N(0, I) with p = softmax(logits / tau) over the whole
vocabulary: `token_mode=soft` uses tau = `soft_tau` (0.5), `token_mode=fuzzy` tau = `fuzzy_tau` (1e-4, near
one-hot), `token_mode=hard` ordinary tokens. sigma = `noise_scale` (0.33) x the RMS norm of the embedding rows.
The paper's six evaluation modes are {hard, soft, fuzzy} x {greedy, sample}, chosen by the run's
`temperature`: 0 = greedy (no input noise, greedy CoT tokens in hard mode, greedy answer), > 0 = sample (noisy
soft/fuzzy inputs, sampled hard tokens). The CoT ends at the `think_end` marker or after `max_think_steps`
(paper: 128 on GSM8K); the answer is hard tokens. Phases, outputs and budgets as in `soft_thinking`.

`soft_top_k=0` (default) mixes the whole vocabulary as the paper does (a dense p @ E, about one LM-head matmul
per step); `soft_top_k=k` gathers the top k rows instead (cheaper; exact for fuzzy tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from latentcot.config import check
from latentcot.decoding.controllers import ThoughtInputs
from latentcot.decoding.sampling import GenerationConfig, RowRandom, next_tokens
from latentcot.methods.base import register
from latentcot.methods.thinking import ThinkingConfig, ThinkingMethod
from latentcot.models.backbone import Backbone
from latentcot.models.soft import (
    add_gaussian_noise,
    dense_mixture,
    embedding_scale,
    entropy,
    mix_embeddings,
    noise_sigma,
    token_probs,
    top_k_filtered,
)

MODES = ("hard", "soft", "fuzzy")


@dataclass
class SoftTokensConfig(ThinkingConfig):
    """Attributes:
    token_mode: hard | soft | fuzzy.
    soft_tau: temperature of p for soft tokens.
    fuzzy_tau: temperature of p for fuzzy tokens.
    noise_scale: sigma as a multiple of the embeddings' RMS norm (0 = no noise even when sampling).
    soft_top_k: 0 = mix the whole vocabulary (paper); k > 0 = the top k tokens only.
    """

    token_mode: str = "soft"
    soft_tau: float = 0.5
    fuzzy_tau: float = 1e-4
    noise_scale: float = 0.33
    soft_top_k: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.token_mode in MODES, "token_mode", f"must be one of {', '.join(MODES)}, got {self.token_mode!r}")
        check(self.soft_tau > 0, "soft_tau", f"must be > 0, got {self.soft_tau}")
        check(self.fuzzy_tau > 0, "fuzzy_tau", f"must be > 0, got {self.fuzzy_tau}")
        check(self.noise_scale >= 0, "noise_scale", f"must be >= 0, got {self.noise_scale}")
        check(self.soft_top_k >= 0, "soft_top_k", f"must be >= 0 (0 = whole vocabulary), got {self.soft_top_k}")


@register("soft_tokens")
class SoftTokens(ThinkingMethod):
    """Hard / soft / fuzzy CoT inputs with Gaussian input noise when sampling."""

    Config = SoftTokensConfig

    def __init__(self, cfg: SoftTokensConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        self.hard_thinking = cfg.token_mode == "hard"
        module = backbone.model.get_input_embeddings()
        self.embed_scale = embedding_scale(module)
        self.sigma = noise_sigma(module.weight, cfg.noise_scale, self.embed_scale)

    @classmethod
    def smoke_settings(cls, model: str) -> dict[str, Any]:
        return {"max_think_steps": 8}

    @property
    def tau(self) -> float:
        return self.cfg.soft_tau if self.cfg.token_mode == "soft" else self.cfg.fuzzy_tau

    def think_inputs(self, logits: torch.Tensor, rand: RowRandom | None, gen: GenerationConfig) -> ThoughtInputs:
        c: SoftTokensConfig = self.cfg
        if c.token_mode == "hard":
            ids = next_tokens(logits, gen, rand)[:, None]  # (n, 1)
            return ThoughtInputs(None, ids, torch.ones_like(ids, dtype=torch.float32), entropy(token_probs(logits, 1.0)))
        probs = token_probs(logits, self.tau)  # (n, V)
        if c.soft_top_k:
            w, ids = top_k_filtered(probs, c.soft_top_k)  # (n, k)
            h = mix_embeddings(w, ids, self.backbone.embed)  # (n, d)
        else:
            h = dense_mixture(probs, self.backbone.embedding_matrix, self.embed_scale)  # (n, d)
            w, ids = probs.topk(min(2, probs.shape[-1]), dim=-1)  # (n, 2): only for the visible trace
        if not gen.greedy and self.sigma > 0:
            h = add_gaussian_noise(h, self.sigma, rand)
        return ThoughtInputs(h, ids, w, entropy(probs))

