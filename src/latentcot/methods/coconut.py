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
"""

from __future__ import annotations

from collections.abc import Sequence

from latentcot.latent.curriculum import Curriculum, split_rationale, without_first_steps
from latentcot.latent.rollout import Rollout, forward, rollout, think
from latentcot.methods.base import LossOutput, register
from latentcot.methods.latent import BOT, EOT, CurriculumConfig, CurriculumMethod, LatentMethod
from latentcot.models.splice import IGNORE, tokens
from latentcot.objectives.lm import lm_loss
from latentcot.tasks.base import Example, Task

# Re-exported: these names lived here before the shared pieces moved beneath the method files.
__all__ = ["BOT", "EOT", "Coconut", "Curriculum", "CurriculumConfig", "CurriculumMethod", "LatentMethod", "Rollout",
           "forward", "rollout", "split_rationale", "think", "without_first_steps"]


@register("coconut")
class Coconut(CurriculumMethod):
    """Continuous thoughts: the last hidden state fed back as the next input (Hao et al., arXiv 2412.06769)."""

    def loss(self, examples: Sequence[Example], task: Task) -> LossOutput:
        plans = [self.plan(ex, task) for ex in examples]
        suffix = [[tokens([self.eot_id]), tokens(ids, labels=True)] for _, ids in plans]
        ro = rollout(self.backbone, [self.prefix(ex, task) for ex in examples], [n for n, _ in plans],
                     self.to_input, suffix)
        loss = lm_loss(ro.out.logits, ro.suffix.labels)
        stage = self.curriculum.stage_at(self._step, self._total)
        n = int((ro.suffix.labels[:, 1:] != IGNORE).sum())  # the tokens the mean is over: accumulation weights by them
        return LossOutput(loss, {"loss": float(loss.detach()), "stage": float(stage)}, weight=float(max(n, 1)))
