"""Divergences between next-token distributions (the "single-threaded reasoners" diagnostic, arXiv 2508.03440)."""

from __future__ import annotations

import torch


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) in nats along the last dimension, with 0 log 0 = 0. (..., V) x (..., V) -> (...)."""
    p, q = p.double(), q.double()
    terms = torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - torch.log(q.clamp_min(1e-300))), 0.0)
    return terms.sum(-1)


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in nats (0 <= JS <= ln 2): (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2.

    Computed in float64 so that the near-zero values the diagnostic is about are not rounding noise.
    """
    m = 0.5 * (p.double() + q.double())
    return 0.5 * (kl_divergence(p, m) + kl_divergence(q, m))
