"""The base of methods whose rows think with continuous inputs, then answer with hard tokens (`soft_thinking`,
`soft_tokens`): the end-of-thinking marker and the generation call. The per-row phases are the
`ThinkingController` in `latentcot.decoding.controllers`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from latentcot.config import check
from latentcot.decoding.controllers import ThinkingController, ThoughtInputs
from latentcot.decoding.engine import RowOutput
from latentcot.decoding.sampling import GenerationConfig, RowRandom
from latentcot.methods.base import Method, MethodConfig
from latentcot.models.backbone import Backbone
from latentcot.models.splice import tokens
from latentcot.tasks.base import Example, Task


@dataclass
class ThinkingConfig(MethodConfig):
    """Settings of every method that thinks with continuous inputs, then answers with hard tokens.

    Attributes:
        think_end: end-of-thinking marker (text; e.g. "The answer is", or "</think>" for thinking models).
        max_think_steps: thinking budget in steps (0 = answer at once).
    """

    think_end: str = "The answer is"
    max_think_steps: int = 128

    def __post_init__(self) -> None:
        check(self.think_end.strip() != "", "think_end", "must be a non-empty marker, e.g. 'The answer is'")
        check(self.max_think_steps >= 0, "max_think_steps", f"must be >= 0, got {self.max_think_steps}")


class ThinkingMethod(Method):
    """Base of methods whose rows think with continuous inputs, then answer with hard tokens.

    Subclasses implement `think_inputs`; this class runs the per-row phases (think -> force marker -> answer).
    """

    Config = ThinkingConfig
    hard_thinking = False  # True when thinking feeds hard tokens (they are then counted as generated tokens)

    def __init__(self, cfg: ThinkingConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        self.marker, self.marker_ids = check_marker(backbone, cfg.think_end)
        self.marker_sep_ids = backbone.encode("\n" + self.marker)

    def think_inputs(self, logits: torch.Tensor, rand: RowRandom | None, gen: GenerationConfig) -> ThoughtInputs:
        """Next inputs of n thinking rows from their logits (n, V); `rand` holds exactly those rows' streams."""
        raise NotImplementedError

    def cold_stop(self) -> tuple[float, int]:
        """(entropy threshold, consecutive steps) of Cold Stop; 0 steps = off."""
        return 0.0, 0

    def generate(
        self, examples: Sequence[Example], task: Task, gen: GenerationConfig, rand: RowRandom | None
    ) -> list[RowOutput]:
        rows = [[tokens(self.prompt_ids(ex, task))] for ex in examples]
        state = self.engine.prefill(self.splice_rows(rows))
        ctrl = ThinkingController(self, gen, rand, len(examples))
        force = max(len(self.marker_ids), len(self.marker_sep_ids))
        # Soft steps emit no tokens; the engine's budget is an upper bound, the controller ends each row after
        # `max_new_tokens` answer tokens that follow its own marker.
        answer_gen = dataclasses.replace(gen, max_new_tokens=gen.max_new_tokens + force)
        limit = self.cfg.max_think_steps + answer_gen.max_new_tokens + 2  # + the marker step and a closing EOS
        outs = self.engine.generate(state, answer_gen, rand, controller=ctrl, max_steps=limit)
        return [ctrl.finish(b, out, gen.stop) for b, out in enumerate(outs)]


def check_marker(backbone: Backbone, marker: str) -> tuple[str, list[int]]:
    """The marker and its token ids; ConfigError naming `think_end` when the tokenizer cannot spell it."""
    ids = backbone.encode(marker)
    back = backbone.tokenizer.decode(ids, skip_special_tokens=False) if ids else ""
    unk = backbone.tokenizer.unk_token_id
    ok = bool(ids) and back.strip() == marker.strip() and (unk is None or unk not in ids)
    check(
        ok,
        "think_end",
        f"{marker!r} cannot be written with the tokenizer of {backbone.name or 'this model'} "
        f"(it reads back as {back!r}): use a marker the model can spell, e.g. think_end='The answer is'",
    )
    return marker, ids
