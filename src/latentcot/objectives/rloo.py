"""RLOO over hard, soft and fuzzy chains of thought (Butt et al., "Soft Tokens, Hard Truths", arXiv 2509.19170),
as pure functions testable with hand-computed numbers.

- Rewards from the task's scorer: `reward_correct` (100) when right, `reward_format` (10) when an answer was
  extracted but is wrong, `reward_wrong` (0) otherwise (`rewards_from_scores`), by the task's strict extraction
  (default) or its flexible one.
- Leave-one-out advantages per group of G samples of one prompt (Ahmadian et al., "Back to Basics", 2024):
  A_i = r_i - mean_{j != i} r_j (`rloo_advantages`); they sum to zero in every group.
- The log-probability of a trajectory is a sum of per-choice terms: a soft/fuzzy CoT step contributes the
  Gaussian log-density of the noisy input it fed around its noiseless mean p_{t-1}(theta) E
  (`soft_step_log_density`), a sampled hard token its log-probability (`token_log_probs`).
- loss = -mean_i A_i log pi(traj_i) (`policy_loss`), plus an optional KL penalty to the frozen start policy
  (`kl_k3`, Schulman's k3 estimator per choice).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from latentcot.models.soft import gaussian_log_density

REWARD_MATCHES = ("strict", "flexible")  # which of the task scorer's extractions decides a reward


def rewards_from_scores(
    scores: Sequence[dict], correct: float = 100.0, formatted: float = 10.0, wrong: float = 0.0, match: str = "strict"
) -> torch.Tensor:
    """Rewards (N,) from `Task.score` dicts: `correct` when correct_{match}, `formatted` when an answer was extracted
    (pred_{match}) but is wrong, `wrong` otherwise. `match` is the task's strict ("The answer is N") or flexible
    (e.g. the last number) extraction. Raises ValueError on a non-finite reward or an unknown `match`."""
    if match not in REWARD_MATCHES:
        raise ValueError(f"match must be one of {', '.join(REWARD_MATCHES)}, got {match!r}")
    out = []
    for s in scores:
        r = correct if s[f"correct_{match}"] else formatted if s[f"pred_{match}"] is not None else wrong
        if not math.isfinite(float(r)):
            raise ValueError(f"reward {r!r} is not a finite number")
        out.append(float(r))
    return torch.tensor(out, dtype=torch.float32)


def rloo_advantages(rewards: torch.Tensor, normalize: bool = False, eps: float = 1e-6,
                    pairs: bool = False) -> torch.Tensor:
    """Leave-one-out advantages. rewards (P, G) with G >= 2 -> (P, G).

    A_i = r_i - (sum_j r_j - r_i) / (G - 1) = G / (G - 1) * (r_i - mean(r)). With `pairs` (antithetic samples: G even
    >= 4, samples 2k and 2k+1 are a pair), the pair is left out: A_i = r_i - (sum_j r_j - r_i - r_partner) / (G - 2),
    a baseline independent of sample i, so the estimator stays unbiased although partners are correlated; the
    advantages still sum to zero per group. With `normalize`, the advantages are divided by their standard deviation
    over the whole batch (unchanged when it is 0: all groups equal).
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"leave-one-out needs groups of at least 2 samples, got rewards of shape {tuple(rewards.shape)}")
    r = rewards.float()
    G = r.shape[1]
    if pairs:
        if G < 4 or G % 2:
            raise ValueError(f"leave-one-pair-out needs an even group of at least 4 samples, got {G}")
        pair_sum = r.view(-1, G // 2, 2).sum(-1).repeat_interleave(2, dim=1)  # (P, G): r_i + r_partner
        adv = r - (r.sum(1, keepdim=True) - pair_sum) / (G - 2)
    else:
        adv = r - (r.sum(1, keepdim=True) - r) / (G - 1)  # (P, G)
    if normalize:
        std = adv.std(unbiased=False)
        if float(std) > eps:
            adv = adv / std
    return adv


def all_equal_share(rewards: torch.Tensor) -> float:
    """Share of groups whose rewards are all equal (they give zero advantages: no learning signal). (P, G)."""
    return float((rewards == rewards[:, :1]).all(1).float().mean())


def token_log_probs(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[ids]. logits (N, V), ids (N,) -> (N,) float32."""
    return torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, ids[:, None]).squeeze(-1)


def soft_step_log_density(
    logits: torch.Tensor, fed: torch.Tensor, matrix: torch.Tensor, tau: float, sigma: float, scale: float = 1.0
) -> torch.Tensor:
    """Gaussian log-density (up to its constant) of the noisy inputs fed at soft/fuzzy steps.

    Args:
        logits: (N, V) logits the step's distribution came from (position t-1), with gradients.
        fed: (N, d) the recorded noisy inputs h~_t.
        matrix: (V, d) embedding matrix E (trainable or not).
        tau: temperature of p (soft 0.5, fuzzy 1e-4).
        sigma: noise standard deviation.
        scale: the embedding module's factor (1 for most models).
    Returns:
        (N,) -|h~_t - p_{t-1} E|^2 / (2 sigma^2), differentiable in logits and matrix.
    """
    p = torch.softmax(logits.float() / tau, dim=-1)  # (N, V)
    mean = (p.to(matrix.dtype) @ matrix).float() * scale  # (N, d)
    return gaussian_log_density(fed, mean, sigma)


def policy_loss(logp: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """REINFORCE with the leave-one-out baseline: -mean_i A_i log pi(traj_i). logp, advantages (N,) -> scalar."""
    return -(advantages.detach().float() * logp.float()).mean()


def kl_k3(logp_choice: torch.Tensor, ref_choice: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimate of KL(pi || ref) per choice: exp(d) - d - 1 with d = log ref - log pi. (M,) -> (M,).

    Non-negative, unbiased for the KL under samples from pi, and its gradient pulls pi towards ref.
    """
    d = (ref_choice.detach().float() - logp_choice.float()).clamp(max=20.0)  # clamp: exp of a huge gap overflows
    return torch.exp(d) - d - 1.0
