"""Soft-token maths as pure functions: mixtures of token embeddings, their randomisation, entropy, noise.

- Soft Thinking (Zhang et al., arXiv 2505.15778): the next input is e = sum_k p_k E[k] over the top-k tokens
  after temperature / top-p / min-p (`top_k_filtered`, `mix_embeddings`).
- Stochastic Soft Thinking ("LLMs are single-threaded reasoners", arXiv 2508.03440): randomise the weights with
  Dirichlet noise p' ~ Dir(gamma * p) (`dirichlet_perturb`) or Gumbel-Softmax p' = softmax((log p + g) / tau)
  (`gumbel_softmax`; `gumbel_perturb` draws and applies it).
- Soft / fuzzy tokens (Butt et al., "Soft Tokens, Hard Truths", arXiv 2509.19170): h = p E + sigma * N(0, I) with
  p = softmax(logits / tau) over the whole vocabulary and sigma = 0.33 x the RMS norm of the embedding rows
  (`noise_sigma`, `add_gaussian_noise`), and the Gaussian log-density of the noisy input used by RL
  (`gaussian_log_density`).

Every random draw comes from a `RowRandom`, so results never depend on which rows share a batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from latentcot.decoding.sampling import RowRandom, require_random

Embed = Callable[[torch.Tensor], torch.Tensor]


def _f32(t: torch.Tensor) -> torch.Tensor:
    """t in float32 (itself when it already is: a soft step is a few dozen tiny ops, each call counts)."""
    return t if t.dtype == torch.float32 else t.float()


@functools.lru_cache(maxsize=256)
def _number(value: float, device: torch.device) -> torch.Tensor:
    """`value` as a 0-dim float32 tensor (never an inference tensor, so autograd may save it).

    With a float32 tensor, torch turns a Python number operand into a float32 tensor on every op (a copy, ~4 us on
    CPU); this one is made once. The results are the same bits (the number is rounded to float32 either way).
    """
    with torch.inference_mode(False):
        return torch.tensor(value, dtype=torch.float32, device=device)


def token_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / temperature) in float32. logits (B, V) -> (B, V)."""
    x = _f32(logits)
    return torch.softmax(x / _number(temperature, x.device), dim=-1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats along the last dimension (0 log 0 = 0). (..., V) -> (...)."""
    p = _f32(probs)
    if p.requires_grad and torch.is_grad_enabled():
        return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
    # The same numbers without a gradient, on two fresh tensors instead of five (x * p = p * x in IEEE)
    return p.clamp_min(1e-30).log_().mul_(p).sum(-1).neg_()


def top_k_filtered(
    probs: torch.Tensor, k: int, top_p: float = 1.0, min_p: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k tokens of a distribution after top-p and min-p, renormalised.

    Gives the same weights as `sampling.filter_probs(top_p, min_p)` followed by top-k, without sorting the whole
    vocabulary: the nucleus and the top-k set are both prefixes of the sorted order, so the nucleus can be cut
    inside the top-k slice using the full-vocabulary probabilities.

    Args:
        probs: (B, V) probabilities (after temperature).
        k: tokens kept (>= 1).
        top_p: nucleus mass in (0, 1].
        min_p: drop tokens below min_p x the top probability.
    Returns:
        weights (B, k), sorted descending, summing to 1 (dropped slots are 0), and their token ids (B, k).
    """
    k = min(k, probs.shape[-1])
    w, ids = torch.topk(_f32(probs), k, dim=-1)  # (B, k) each, descending
    if top_p < 1.0:
        w.masked_fill_(w.cumsum(-1).sub_(w) >= _number(top_p, w.device), 0.0)  # in place: w is topk's own output
    if min_p > 0:
        w.masked_fill_(w < _number(min_p, w.device) * w[:, :1], 0.0)
    total = w.sum(-1, keepdim=True)
    return (w / total if w.requires_grad else w.div_(total)), ids


def mix_embeddings(weights: torch.Tensor, ids: torch.Tensor, embed: Embed) -> torch.Tensor:
    """sum_k w_k E[ids_k] by gathering the k rows through the model's own embedding module.

    Going through `embed` (not the raw weight) keeps models that scale their embeddings right.

    Args:
        weights: (B, k) mixture weights.
        ids: (B, k) token ids.
        embed: token ids (...) -> embeddings (..., d).
    Returns:
        (B, d) in float32 (the engine casts to the model's dtype).
    """
    rows = _f32(embed(ids))  # (B, k, d)
    return (_f32(weights)[..., None] * rows).sum(1)  # (B, d)


def embedding_scale(module: nn.Module) -> float:
    """The factor an embedding module applies to its weight rows (1 for most models, sqrt(d) for Gemma).

    Measured on a few rows rather than read from a model-specific attribute, so nothing branches on class.
    """
    weight = module.weight
    ids = torch.arange(min(8, weight.shape[0]), device=weight.device)
    with torch.no_grad():
        raw = weight[ids].float().norm()
        out = module(ids).float().norm()
    return float(out / raw) if float(raw) > 0 else 1.0


def dense_mixture(probs: torch.Tensor, matrix: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """p @ E over the whole vocabulary (cost ~ one LM-head matmul). probs (B, V), matrix (V, d) -> (B, d) float32."""
    return (probs.to(matrix.dtype) @ matrix).float() * scale


def dirichlet_perturb(weights: torch.Tensor, gamma: float, rand: RowRandom | None) -> torch.Tensor:
    """p' ~ Dir(gamma * p) on the support of p (Stochastic Soft Thinking). weights (B, k) -> (B, k).

    Small gamma gives near one-hot draws, large gamma stays close to p. Each row draws from its own stream.
    """
    rand = require_random(rand, "Dirichlet noise (randomness=dirichlet)")
    support = weights > 0
    conc = (gamma * weights.float()).clamp_min(1e-6)  # (B, k); zero slots masked below
    draws = rand.gamma(conc).to(weights.device) * support  # (B, k)
    total = draws.sum(-1, keepdim=True)
    # Tiny concentrations can underflow every draw to 0; fall back to p for such a row.
    return torch.where(total > 0, draws / total.clamp_min(1e-30), weights.float())


def dirichlet_top_k(
    probs: torch.Tensor, k: int, top_p: float, min_p: float, gamma: float, rand: RowRandom
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dirichlet noise where the official Soft Thinking code applies it: p' ~ Dir(gamma * p) over the whole
    filtered distribution (top-p, min-p), then the top-k cut of p', renormalised.

    A token outside p's top k but inside its nucleus can therefore enter the mixture. (`dirichlet_perturb` on
    `top_k_filtered`'s weights is the other order: the top-k cut first, noise on the k kept weights.)

    Args:
        probs: (B, V) probabilities (after temperature).
        k: tokens mixed (>= 1).
        top_p, min_p: the filters, as `top_k_filtered`.
        gamma: concentration scale.
        rand: one stream per row.
    Returns:
        weights (B, k) sorted descending, summing to 1, and their token ids (B, k).
    """
    w, ids = top_k_filtered(probs, probs.shape[-1], top_p, min_p)  # (B, V) each: the sorted filtered distribution
    width = max(k, int((w > 0).sum(-1).max()))  # the widest support; every later slot is 0 in every row
    w, ids = w[:, :width], ids[:, :width]  # (B, S)
    noisy = dirichlet_perturb(w, gamma, rand)  # (B, S), zero off the support
    top, pos = torch.topk(noisy, min(k, width), dim=-1)  # (B, k) each
    return top / top.sum(-1, keepdim=True), ids.gather(-1, pos)


def _log_neg_log(u: torch.Tensor) -> torch.Tensor:
    """log(-log u) of uniforms u clamped away from 0 and 1, in place (elementwise: `RowRandom.mapped_uniform`)."""
    return u.clamp_(1e-10, 1.0 - 1e-7).log_().neg_().log_()


def _log_neg_log_uniform(rand: RowRandom | None, k: int) -> torch.Tensor:
    """(B, k) log(-log u) = -g for uniform draws u, row b from its own stream (to be read, not written to)."""
    return require_random(rand, "Gumbel noise (randomness=gumbel)").mapped_uniform(_log_neg_log, k)


def gumbel_noise(rand: RowRandom | None, k: int) -> torch.Tensor:
    """(B, k) standard Gumbel draws -log(-log u), row b from its own stream."""
    return _log_neg_log_uniform(rand, k).neg()


def gumbel_softmax(weights: torch.Tensor, tau: float, gumbel: torch.Tensor) -> torch.Tensor:
    """p' = softmax((log p + g) / tau); slots with p = 0 stay 0. weights, gumbel (B, k) -> (B, k).

    As tau -> 0 this tends to the one-hot of argmax(log p + g), a sample from p (the Gumbel-max trick).
    """
    logp = torch.log(weights.float())  # (B, k); log 0 = -inf, so zero slots stay 0 (weights are probabilities)
    return torch.softmax(logp.add_(gumbel.to(logp.device)).div_(tau), dim=-1)


def gumbel_perturb(weights: torch.Tensor, tau: float, rand: RowRandom | None, reuse: bool = False) -> torch.Tensor:
    """`gumbel_softmax(weights, tau, gumbel_noise(rand, k))` in two ops fewer, bit for bit: log p + g is computed as
    log p - log(-log u) (IEEE subtraction is the addition of the negation), so g's last negation is never made.
    weights (B, k) -> (B, k). reuse: `weights` may be overwritten (a fresh tensor the caller no longer reads: one
    allocation less per step; ignored when it needs a gradient)."""
    neg_g = _log_neg_log_uniform(rand, weights.shape[-1])
    w = _f32(weights)
    if neg_g.device != w.device:
        neg_g = neg_g.to(w.device)
    logp = w.log_() if reuse and not w.requires_grad else torch.log(w)
    return torch.softmax(logp.sub_(neg_g).div_(_number(tau, w.device)), dim=-1)


def noise_sigma(matrix: torch.Tensor, scale: float = 0.33, embed_scale: float = 1.0, chunk: int = 8192) -> float:
    """sigma = scale x the RMS norm of the embedding rows (per coordinate), as in Butt et al.

    The RMS norm of a row e is sqrt(mean_j e_j^2); over all rows this is sqrt(mean E^2), so the noise vector's
    norm is about `scale` times a typical embedding's norm. Summed over row chunks: no float32 copy of a large E.
    """
    total = sum(float(matrix[i : i + chunk].float().pow(2).sum()) for i in range(0, matrix.shape[0], chunk))
    return scale * embed_scale * (total / matrix.numel()) ** 0.5


def add_gaussian_noise(h: torch.Tensor, sigma: float, rand: RowRandom | None) -> torch.Tensor:
    """h + sigma * N(0, I), each row's noise from its own stream. h (B, d) -> (B, d)."""
    rand = require_random(rand, "Gaussian input noise (fuzzy/soft tokens when sampling)")
    return h + sigma * rand.normal(h.shape[-1]).to(h.device, h.dtype)


def gaussian_log_density(h_noisy: torch.Tensor, h_mean: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(h~; h, sigma^2 I) up to its constant: -|h~ - h|^2 / (2 sigma^2). (..., d) -> (...).

    The constant -d/2 log(2 pi sigma^2) is dropped: it does not depend on the policy, so it cancels in
    policy-gradient estimators such as RLOO. Gradients flow into `h_mean` (the noiseless mixture).
    """
    return -(h_noisy.float() - h_mean.float()).pow(2).sum(-1) / (2.0 * sigma**2)
