"""Base classes of the methods that think between `<bot>` and `<eot>` (`coconut`, `pause`, `codi`): the
markers, full fine-tune or LoRA, generation = prefill [prompt, <bot>], N latent steps, <eot>, answer tokens;
and `CurriculumMethod`, the stage curriculum's bookkeeping shared by `coconut` and `pause`.

The curriculum itself is `latentcot.latent.curriculum`; the rollouts are `latentcot.latent.rollout`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from latentcot.config import check
from latentcot.decoding.engine import DecodeState, RowOutput
from latentcot.decoding.sampling import GenerationConfig, RowRandom
from latentcot.errors import ConfigError
from latentcot.latent.curriculum import Curriculum, without_first_steps
from latentcot.latent.rollout import think
from latentcot.methods.base import Method
from latentcot.methods.sft import SFTConfig, apply_lora
from latentcot.models.backbone import Backbone
from latentcot.models.splice import Piece, tokens
from latentcot.tasks.base import Example, Task

BOT, EOT = "<bot>", "<eot>"
THOUGHT_NORMS = ("none", "embedding")


def check_thought_norm(value: str) -> None:
    check(value in THOUGHT_NORMS, "thought_norm", f"must be one of {', '.join(THOUGHT_NORMS)}, got {value!r}")


def at_thought_norm(backbone: Backbone, v: torch.Tensor, how: str) -> torch.Tensor:
    """A continuous thought (B, d) as it is (`none`, the papers') or rescaled to the mean L2 norm of the
    input-embedding rows (`embedding`): the direction is kept, the norm comes from the current weights, and
    gradients flow through both. In from-scratch models the last hidden state (after the final layer norm) is
    ~20x longer than a token embedding, so an unscaled thought swamps the residual stream it enters."""
    if how == "none":
        return v
    rows = backbone.model.get_input_embeddings().weight
    target = rows.norm(dim=-1).mean().to(v.dtype)
    return v * (target / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny))


@dataclass
class CurriculumConfig(SFTConfig):
    """Settings of the stage curriculum (Coconut and its pause-token control).

    Attributes:
        thoughts_per_step: c, continuous thoughts that replace one rationale step.
        max_stage: last stage K: K steps replaced by K*c thoughts (evaluation uses it).
        start_stage: first stage trained (0 = full CoT; 1 when starting from a CoT-SFT model).
        stage_steps: optimizer steps per stage (0 = the run's steps split evenly over the stages).
        mix_prob: probability that an example is trained at a uniformly drawn earlier stage instead.
        reset_optimizer: fresh optimizer state at every stage change (the paper does).
        stage_schedule: restart the learning-rate warmup and schedule at every stage (off: one schedule over the
            whole run, as the official code's constant learning rate).
        num_thoughts: thoughts at evaluation (default max_stage * thoughts_per_step).
        final_stage: after max_stage, a final stage that removes every remaining rationale step and keeps
            max_stage x c thoughts (the official curriculum; reached when the run is longer than the stages before).
        pad_latent_to_max: an example with fewer rationale steps than its stage loses all of them and still gets
            the stage's thoughts (the official `pad_latent_to_max`, set for GSM8K). Off: such an example is an error
            naming it (max_stage larger than the task's rationales).
    """

    thoughts_per_step: int = 1
    max_stage: int = 3
    start_stage: int = 0
    stage_steps: int = 0
    mix_prob: float = 0.0
    reset_optimizer: bool = True
    stage_schedule: bool = False
    num_thoughts: int | None = None
    final_stage: bool = True
    pad_latent_to_max: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.thoughts_per_step >= 1, "thoughts_per_step", f"must be >= 1, got {self.thoughts_per_step}")
        check(self.max_stage >= 1, "max_stage", f"must be >= 1, got {self.max_stage}")
        check(0 <= self.start_stage <= self.max_stage, "start_stage", f"must be in [0, max_stage={self.max_stage}], got {self.start_stage}")
        check(self.stage_steps >= 0, "stage_steps", f"must be >= 0 (0 = split evenly), got {self.stage_steps}")
        check(0 <= self.mix_prob < 1, "mix_prob", f"must be in [0, 1), got {self.mix_prob}")
        check(self.num_thoughts is None or self.num_thoughts > 0, "num_thoughts", f"must be > 0, got {self.num_thoughts}")


class LatentMethod(Method):
    """Base of the methods that think between `<bot>` and `<eot>` (coconut, pause, codi): markers, full
    fine-tune or LoRA, and generation = prefill [prompt, <bot>], N latent steps, <eot>, then answer tokens.

    Subclasses set `eval_thoughts`, may override `to_input` (what a hidden state becomes as the next input) or
    `think_steps`, and implement `loss`.
    """

    trains = True

    def __init__(self, cfg: SFTConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        self.bot_id, self.eot_id = backbone.add_tokens([BOT, EOT])
        if cfg.lora_r > 0:
            apply_lora(backbone, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        else:
            backbone.model.requires_grad_(True)

    @property
    def eval_thoughts(self) -> int:
        raise NotImplementedError

    def to_input(self, h: torch.Tensor) -> torch.Tensor:
        """Last hidden state (B, d) -> next input embedding (B, d). Coconut: h itself."""
        return h

    def prefix(self, ex: Example, task: Task) -> list[Piece]:
        return [tokens(self.prompt_ids(ex, task)), tokens([self.bot_id])]

    def think_steps(self, state: DecodeState, n: int, record: list[torch.Tensor] | None = None,
                    then: torch.Tensor | None = None) -> DecodeState:
        """n latent steps from `state`; `then` (B, m, d): inputs fed in the same call as the last one (`think`)."""
        return think(self.engine, state, n, self.to_input, record, then=then)

    def latent_state(self, examples: Sequence[Example], task: Task, record: list[torch.Tensor] | None = None):
        """Prefill [prompt, <bot>], take the thoughts, feed <eot> (with the last thought, in one call): the state the
        answer is decoded from."""
        state = self.engine.prefill(self.splice_rows([self.prefix(ex, task) for ex in examples]), want_hidden=True)
        eot = torch.full((state.batch_size, 1), self.eot_id, dtype=torch.long, device=state.logits.device)
        return self.think_steps(state, self.eval_thoughts, record, then=self.backbone.embed(eot))

    refills = True

    def start_state(self, examples: Sequence[Example], task: Task) -> DecodeState:
        return self.latent_state(examples, task)

    def finish_outputs(self, examples: Sequence[Example], outs: list[RowOutput]) -> list[RowOutput]:
        for o in outs:
            o.latent_steps = self.eval_thoughts
        return outs

    def generate(
        self, examples: Sequence[Example], task: Task, gen: GenerationConfig, rand: RowRandom | None
    ) -> list[RowOutput]:
        return self.finish_outputs(examples, self.engine.generate(self.start_state(examples, task), gen, rand))

    @torch.no_grad()
    def thought_logits(self, examples: Sequence[Example], task: Task) -> torch.Tensor:
        """(B, N, V) float32 LM-head logits of the hidden state each continuous thought is made from (probes)."""
        record: list[torch.Tensor] = []
        self.latent_state(examples, task, record)
        return torch.stack(record, dim=1) if record else torch.zeros(len(examples), 0, self.backbone.vocab_size)


class CurriculumMethod(LatentMethod):
    """Base of `coconut` and `pause`: the stage curriculum and the rows it trains on."""

    Config = CurriculumConfig
    cfg: CurriculumConfig

    def __init__(self, cfg: CurriculumConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        self.curriculum = Curriculum.from_config(cfg)
        self._step, self._total = 0, 1

    @classmethod
    def smoke_settings(cls, model: str) -> dict:
        return {"max_stage": 1, "thoughts_per_step": 2, "pad_latent_to_max": True}

    @property
    def eval_thoughts(self) -> int:
        return self.cfg.num_thoughts or self.curriculum.thoughts(self.cfg.max_stage)

    def begin_step(self, step: int, total_steps: int) -> bool:
        self._step, self._total = step, total_steps
        return self.cfg.reset_optimizer and self.curriculum.stage_changes(step, total_steps)

    def schedule_window(self, step: int, total_steps: int) -> tuple[int, int]:
        if self.cfg.stage_schedule:
            return self.curriculum.stage_window(step, total_steps)
        return 0, total_steps

    def plan(self, ex: Example, task: Task) -> tuple[int, list[int]]:
        """(thoughts, target ids of the remaining text) of one training example at the current step."""
        stage = self.curriculum.sample_stage(self._step, self._total, ex.id)
        if self.curriculum.is_final(stage):  # every remaining step removed, max_stage x c thoughts
            without_first_steps(ex, self.cfg.max_stage, "max_stage", not self.cfg.pad_latent_to_max)  # short: error
            rest = without_first_steps(ex, len(ex.steps), "max_stage", True)
        else:
            rest = without_first_steps(ex, stage, "max_stage", not self.cfg.pad_latent_to_max)
        return self.curriculum.thoughts(stage), self.target_ids(rest, task, with_rationale=True)

    def check_train_examples(self, examples: Sequence[Example], task: Task) -> None:
        """Before training: without pad_latent_to_max, every example needs at least as many rationale steps as the
        highest stage it will be trained at removes."""
        if self.cfg.pad_latent_to_max:
            return
        need = min(self.cfg.max_stage, self.curriculum.last_stage)
        short = [ex for ex in examples if len(ex.steps) < need]
        if short:
            raise ConfigError(
                f"max_stage: {self.cfg.max_stage} is larger than the {len(short[0].steps)} rationale steps of example "
                f"{short[0].id} ({len(short)} of {len(examples)} training examples are that short): lower max_stage, "
                "or set pad_latent_to_max=true to remove all steps of short rationales and keep the stage's thoughts"
            )
