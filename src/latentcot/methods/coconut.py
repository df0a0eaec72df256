"""`coconut`: Chain of Continuous Thought (Hao et al., "Training Large Language Models to Reason in a
Continuous Latent Space", arXiv 2412.06769).

Between `<bot>` and `<eot>` the last-layer hidden state h_t is fed back as the next input embedding for N steps
(no projection); the answer is then decoded as ordinary tokens. Training follows the paper's curriculum: at
stage k the first k rationale steps are replaced by k*c continuous thoughts and the loss covers only the
remaining text. What the `pause` control and `codi` share with it lives beneath this file: the curriculum and
the rationale cut in `latentcot.latent.curriculum`, the training rollout over latent steps and the cached latent
loop in `latentcot.latent.rollout`, the `<bot>`/`<eot>` method bases in `latentcot.methods.latent`.

Better than the official code: generation is batched and KV-cached through the shared Engine (the official loop
is batch 1 and re-runs the whole sequence at every step); the training rollout feeds the prefix once and each
latent step as an incremental forward over the KV cache (gradients flow through the cache), with rows at
different stages in one batch handled by masking instead of per-row loops.

One setting the official code does not have, off by default: `thought_norm=embedding` rescales each fed-back
state to the mean norm of the input-embedding rows (direction unchanged; `methods.latent.at_thought_norm`). In
the demo's from-scratch models the last hidden state (after the final layer norm) is ~20x longer than a token
embedding (README, demo study).

A second one, also off by default and also not in the paper or its code: `thought_stride=s` gives each thought s
position ids instead of one (thought j at P + s*(j+1) - 1 for a prefix of P positions, the text after `<eot>` at
P + s*k + 1 onwards for k thoughts), the same in the training rollout and at generation. With s = the tokens of
one rationale step per thought (2 for the demo's `cur nxt` steps), thought j sits on the position of step j's
first token and the remaining text keeps the position ids it had in the full CoT, so a model that learned
position-dependent roles (look up at `cur`, copy at `nxt`) sees every thought at a look-up position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from latentcot.config import check
from latentcot.decoding.engine import DecodeState
from latentcot.latent.curriculum import Curriculum, split_rationale, without_first_steps
from latentcot.latent.rollout import Rollout, forward, rollout, think
from latentcot.methods.base import LossOutput, register
from latentcot.methods.latent import (
    BOT,
    EOT,
    CurriculumConfig,
    CurriculumMethod,
    LatentMethod,
    at_thought_norm,
    check_thought_norm,
)
from latentcot.models.splice import IGNORE, tokens
from latentcot.objectives.lm import lm_loss
from latentcot.tasks.base import Example, Task

# Re-exported: these names lived here before the shared pieces moved beneath the method files.
__all__ = ["BOT", "EOT", "Coconut", "CoconutConfig", "Curriculum", "CurriculumConfig", "CurriculumMethod", "LatentMethod", "Rollout",
           "forward", "rollout", "split_rationale", "think", "without_first_steps"]


@dataclass
class CoconutConfig(CurriculumConfig):
    """The curriculum's settings, plus:

    Attributes:
        thought_norm: "none" (the paper and its code: the last hidden state is the next input as it is) or
            "embedding" (rescaled to the mean L2 norm of the input-embedding rows, from the current weights at
            every step, gradients flowing through both; the direction is kept).
        thought_stride: position ids per thought (1: one each, the paper and its code; s: thought j at P + s*(j+1) - 1
            after a prefix of P positions and the text after `<eot>` shifted by (s-1)*k, in training and generation;
            not in the paper).
    """

    thought_norm: str = "none"
    thought_stride: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_thought_norm(self.thought_norm)
        check(isinstance(self.thought_stride, int) and not isinstance(self.thought_stride, bool)
              and self.thought_stride >= 1, "thought_stride", f"must be an integer >= 1, got {self.thought_stride!r}")


@register("coconut")
class Coconut(CurriculumMethod):
    """Continuous thoughts: the last hidden state fed back as the next input (Hao et al., arXiv 2412.06769)."""

    Config = CoconutConfig
    cfg: CoconutConfig

    def to_input(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, d) as it is, or at the mean input-embedding row norm (`thought_norm=embedding`)."""
        return at_thought_norm(self.backbone, h, self.cfg.thought_norm)

    def think_steps(self, state: DecodeState, n: int, record: list[torch.Tensor] | None = None,
                    then: torch.Tensor | None = None) -> DecodeState:
        return think(self.engine, state, n, self.to_input, record, self.cfg.thought_stride, then)

    def loss(self, examples: Sequence[Example], task: Task) -> LossOutput:
        plans = [self.plan(ex, task) for ex in examples]
        suffix = [[tokens([self.eot_id]), tokens(ids, labels=True)] for _, ids in plans]
        ro = rollout(self.backbone, [self.prefix(ex, task) for ex in examples], [n for n, _ in plans],
                     self.to_input, suffix, stride=self.cfg.thought_stride)
        loss = lm_loss(ro.out.logits, ro.suffix.labels)
        stage = self.curriculum.stage_at(self._step, self._total)
        n = int((ro.suffix.labels[:, 1:] != IGNORE).sum())  # the tokens the mean is over: accumulation weights by them
        return LossOutput(loss, {"loss": float(loss.detach()), "stage": float(stage)}, weight=float(max(n, 1)))
