"""Projection modules: map one model's hidden states into another model's input-embedding space.

SoftCoT (Xu et al., ACL 2025, arXiv 2502.12134) trains exactly one such module: the assistant's last-layer
hidden states at its placeholder positions, t_assist (N, d_a), become the backbone's soft thoughts
T_soft = Linear(t_assist) (N, d). The MLP variant is the common ablation.

Projections keep their own parameters in float32 whatever the models' dtype (a bf16 projection trained at
lr 2e-5 barely moves), take inputs of any dtype and return float32; `splice` casts to the backbone's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from latentcot.errors import ConfigError

PROJECTIONS = ("linear", "mlp")


class LinearProjection(nn.Module):
    """T = W h + b.

    Args:
        d_in: source hidden size d_a.
        d_out: target embedding size d.
    """

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., d_out), float32."""
        return self.proj(h.float())


class MLPProjection(nn.Module):
    """T = W2 GELU(W1 h + b1) + b2, hidden width `hidden` (default max(d_in, d_out)).

    Args:
        d_in: source hidden size d_a.
        d_out: target embedding size d.
        hidden: width of the hidden layer.
    """

    def __init__(self, d_in: int, d_out: int, hidden: int | None = None) -> None:
        super().__init__()
        width = hidden or max(d_in, d_out)
        self.net = nn.Sequential(nn.Linear(d_in, width), nn.GELU(), nn.Linear(width, d_out))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., d_out), float32."""
        return self.net(h.float())


def build_projection(kind: str, d_in: int, d_out: int, hidden: int | None = None) -> nn.Module:
    """A projection d_in -> d_out: "linear" (the paper's) or "mlp".

    Raises:
        ConfigError: for an unknown kind (names the `projection` field).
    """
    if kind == "linear":
        return LinearProjection(d_in, d_out)
    if kind == "mlp":
        return MLPProjection(d_in, d_out, hidden)
    raise ConfigError(f"projection: must be one of {', '.join(PROJECTIONS)}, got {kind!r}")
