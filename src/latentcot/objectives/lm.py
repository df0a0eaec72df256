"""Language-model losses as pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latentcot.models.splice import IGNORE


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled positions.

    Args:
        logits: (B, T, V); logits[:, t] predicts the token at t+1.
        labels: (B, T) token ids aligned with the inputs, IGNORE (-100) where no loss.
    Returns:
        scalar loss (0 with a zero gradient path when nothing is labelled).
    """
    shift_logits = logits[:, :-1].float()  # (B, T-1, V)
    shift_labels = labels[:, 1:]  # (B, T-1)
    n = (shift_labels != IGNORE).sum()
    if n == 0:
        return shift_logits.sum() * 0.0
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE, reduction="sum") / n
