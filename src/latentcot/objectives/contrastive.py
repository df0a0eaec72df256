"""The contrastive (InfoNCE) term of SoftCoT++ (Xu et al., arXiv 2505.11484), as pure functions.

Each question has K soft-thought sets (one per chain). Set k is pulled towards a dropout-perturbed copy of
itself and pushed away from the other K-1 sets' copies, which spreads the K chains apart in the backbone's
embedding space. Every question is its own K-way classification: sets of different questions never meet, so
the result does not depend on which questions share a batch (the official loop, which reassigns the tensor it
indexes per question, is only right at batch size 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Mean over questions of the K-way InfoNCE between each set and the copies.

    For question b, with s_i = student[b, i] / |student[b, i]| and t_j = teacher[b, j] / |teacher[b, j]|:
    logits_ij = <s_i, t_j> / temperature and loss_b = mean_i -log softmax_j(logits_i)[i].

    Args:
        student: (B, K, M) each question's K sets, flattened (M = thoughts x d).
        teacher: (B, K, M) their perturbed copies (not detached: gradients flow through both, as officially).
        temperature: softmax temperature (the official code multiplies cosines by 20, i.e. 0.05).

    Returns:
        a scalar: mean over the B questions.
    """
    if student.shape != teacher.shape or student.dim() != 3:
        raise ValueError(f"student and teacher must both be (B, K, M), got {tuple(student.shape)} and {tuple(teacher.shape)}")
    s = F.normalize(student.float(), dim=-1)  # (B, K, M)
    t = F.normalize(teacher.float(), dim=-1)  # (B, K, M)
    logits = torch.einsum("bim,bjm->bij", s, t) / temperature  # (B, K, K)
    b, k, _ = logits.shape
    labels = torch.arange(k, device=logits.device).repeat(b)  # (B*K,) set i matches its own copy
    return F.cross_entropy(logits.reshape(b * k, k), labels)  # equal K per question: mean of per-question means


def dropout_copy(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """The teacher view: dropout(p) of `x` (inverted scaling by 1/(1-p)), drawn from the global RNG, which the
    training loop seeds and checkpoints, so resumed runs draw the same masks."""
    return F.dropout(x, p=p, training=training)
