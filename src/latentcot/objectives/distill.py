"""Distillation losses between teacher and student hidden states, as pure functions (CODI, Shen et al.,
arXiv 2502.21074).

Both take hidden states at one aligned position per row, one entry per layer, stacked (L, B, d) (CODI passes all
L+1 entries of `hidden_states`, the embedding output included, as the official code). The teacher is detached
here (stop-gradient), whatever the caller passes. Each entry contributes its mean over (B, d); the result is the
mean over entries, as the official code (sum over entries / number of entries).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(teacher: torch.Tensor, student: torch.Tensor) -> None:
    if teacher.shape != student.shape or teacher.dim() != 3:
        raise ValueError(f"teacher and student must both be (L, B, d), got {tuple(teacher.shape)} and {tuple(student.shape)}")


def distill_l1(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Mean over layers of mean |student - teacher| (CODI's per-layer L1).

    Args:
        teacher: (L, B, d), detached inside.
        student: (L, B, d).
    """
    _check(teacher, student)
    t = teacher.detach().float()
    return (student.float() - t).abs().mean(dim=(1, 2)).mean()


def distill_smooth_l1_std(teacher: torch.Tensor, student: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Mean over layers of smooth-L1(student, teacher) / std(teacher at that layer): the official CODI loss
    (`distill_loss_div_std`), which evens out layers whose activations have very different scales.

    Args:
        teacher: (L, B, d), detached inside; std is over all B*d entries of a layer (unbiased, as torch.std).
        student: (L, B, d).
        beta: the smooth-L1 threshold (quadratic below it, linear above), 1 as torch's default.
    """
    _check(teacher, student)
    t = teacher.detach().float()
    s = student.float()
    per_layer = F.smooth_l1_loss(s, t, beta=beta, reduction="none").mean(dim=(1, 2))  # (L,)
    std = t.reshape(t.shape[0], -1).std(dim=1).clamp_min(1e-6)  # (L,)
    return (per_layer / std).mean()


DISTILL_LOSSES = {"l1": distill_l1, "smooth_l1_std": distill_smooth_l1_std}
