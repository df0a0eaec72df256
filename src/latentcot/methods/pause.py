"""`pause`: the pause-token control of Coconut (Hao et al., arXiv 2412.06769, section 4 "pause as thought";
pause tokens after Goyal et al., arXiv 2310.02226).

Same curriculum, markers and number of latent positions as `coconut`, but every latent position gets one fixed,
learned `<pause>` token embedding instead of the fed-back hidden state. It tells apart what the continuous
thoughts carry from what merely the extra positions (extra compute) give. Without the recurrence the whole row
is one forward in training; at generation the pause positions are fed in one cached step of N positions and
count as N latent decode steps, like Coconut's thoughts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from latentcot.decoding.engine import DecodeState
from latentcot.methods.base import LossOutput, register
from latentcot.methods.latent import CurriculumMethod
from latentcot.models.backbone import Backbone
from latentcot.models.splice import tokens
from latentcot.tasks.base import Example, Task

PAUSE = "<pause>"


@register("pause")
class Pause(CurriculumMethod):
    """Coconut's control: latent positions hold a learned <pause> embedding (no hidden-state feedback)."""

    def __init__(self, cfg, backbone: Backbone) -> None:
        (self.pause_id,) = backbone.add_tokens([PAUSE])  # before the base class may wrap the model in LoRA
        super().__init__(cfg, backbone)

    def think_steps(self, state: DecodeState, n: int, record: list[torch.Tensor] | None = None,
                    then: torch.Tensor | None = None) -> DecodeState:
        ids = torch.full((state.batch_size, n), self.pause_id, dtype=torch.long, device=state.logits.device)
        embeds = self.backbone.embed(ids)
        if then is not None:
            embeds = torch.cat([embeds, then.to(embeds.dtype)], dim=1)
        if embeds.shape[1] == 0:
            return state
        return self.engine.step(state, embeds)  # the n pauses (and `then`) in one cached step

    def loss(self, examples: Sequence[Example], task: Task) -> LossOutput:
        rows = []
        for ex in examples:
            n, target = self.plan(ex, task)
            rows.append(self.prefix(ex, task) + [tokens([self.pause_id] * n), tokens([self.eot_id]),
                                                 tokens(target, labels=True)])
        out = self.sft_loss(rows)
        out.logs["stage"] = float(self.curriculum.stage_at(self._step, self._total))
        return out
