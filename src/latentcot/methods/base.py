"""The method interface every plug-in implements, and the method registry.

A method holds its models (a Backbone, maybe an assistant) and its trainable modules, and implements:

- `generate(examples, task, gen, rand)`: one RowOutput per example row, through the shared decode Engine;
- `loss(examples, task)`: the training objective (trainable methods only), through `splice` and
  `Backbone.forward`; the training loop calls it as `method(examples, task)` (`forward`), the module that a
  distributed wrapper wraps;
- `trainable_state_dict()` / `load_trainable_state_dict()`: only what trains is saved.

Shared pieces (prompt building, prefill + token generation, SFT rows) live here so that a method file holds
only what is particular to its paper.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from latentcot.decoding.backend import GenerationBackend
from latentcot.decoding.engine import DecodeState, Engine, RowOutput
from latentcot.decoding.sampling import GenerationConfig, RowRandom
from latentcot.errors import CheckpointError
from latentcot.models.backbone import Backbone
from latentcot.models.splice import IGNORE, Piece, Spliced, splice, tokens
from latentcot.objectives.lm import lm_loss
from latentcot.registry import Registry
from latentcot.tasks.base import Example, Task

log = logging.getLogger(__name__)


@dataclass
class MethodConfig:
    """Settings every method has.

    Attributes:
        system: optional system prompt put through the chat template.
    """

    system: str | None = None


@dataclass
class LossOutput:
    """A training objective's value and what to log with it.

    Attributes:
        loss: the micro-batch's mean loss.
        logs: scalars to log.
        weight: how many units (e.g. labelled tokens) the mean is over. The training loop sums loss x weight over
            the micro-batches of a step and divides by the total weight, so gradient accumulation over k
            micro-batches equals one batch k times larger.
    """

    loss: torch.Tensor
    logs: dict[str, float]
    weight: float = 1.0


class Method(nn.Module):
    """Base class of all methods.

    Class attributes:
        Config: the method's config dataclass.
        trains: whether `latentcot train` applies (False for training-free methods).
        starts_as_model: True where every trainable part starts as the loaded model itself (full fine-tuning, or
            LoRA adapters that start as the identity), so that without trained weights the method evaluates its
            start model, not untrained new parts.
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    trains: ClassVar[bool] = False
    starts_as_model: ClassVar[bool] = False
    name: ClassVar[str] = ""
    # True where this class's `generate` hands every decode to `self.generator` as plain prompts, so another
    # backend (vLLM) can serve it. A subclass that overrides `generate` must say so again.
    plain_prompts: ClassVar[bool] = True
    step_totals: dict[str, float] | None = None  # set by the training loop from `step_units` around each step

    def __init__(self, cfg: MethodConfig, backbone: Backbone) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.engine = Engine(backbone)
        # Plain-prompt phases go through this backend (the Engine unless another one is set, e.g. vLLM).
        self.generator: GenerationBackend = self.engine

    # --- for tests and the CLI ---------------------------------------------------------------------------------
    @classmethod
    def smoke_settings(cls, model: str) -> dict[str, Any]:
        """Method settings that make a smoke run on tiny model `model` fast (the contract tests use them)."""
        return {}

    # --- generation --------------------------------------------------------------------------------------------
    def prompt_text(self, ex: Example, task: Task) -> str:
        """The backbone's prompt for one example (chat template when the model has one)."""
        return self.backbone.chat_prompt(task.prompt(ex), system=self.cfg.system)

    def prompt_ids(self, ex: Example, task: Task) -> list[int]:
        return self.backbone.encode(self.prompt_text(ex, task))

    def splice_rows(self, rows: Sequence[Sequence[Piece]], padding_side: str = "left") -> Spliced:
        bb = self.backbone
        return splice(rows, bb.embed, bb.tokenizer.pad_token_id or 0, padding_side)

    def prompt_rows(self, examples: Sequence[Example], task: Task) -> list[list[Piece]]:
        """The backbone's prompt of each example as splice pieces (default: the chat prompt's tokens)."""
        return [[tokens(self.prompt_ids(ex, task))] for ex in examples]

    def generate(
        self, examples: Sequence[Example], task: Task, gen: GenerationConfig, rand: RowRandom | None
    ) -> list[RowOutput]:
        """Default: plain prompts, then hard-token generation."""
        return self.generator.generate_rows(self.prompt_rows(examples, task), gen, rand)

    # --- refill (continuous batching in the evaluation runner) --------------------------------------------------
    # A method sets `refills = True` when its `generate` is exactly `finish_outputs(engine.generate(
    # start_state(...)))`: the runner can then start new questions in the slots of finished rows.
    refills: ClassVar[bool] = False

    def start_state(self, examples: Sequence[Example], task: Task) -> DecodeState:
        """The decode state the token loop starts from: prefill (and, for latent methods, the latent steps)."""
        return self.engine.prefill(self.splice_rows(self.prompt_rows(examples, task)))

    def finish_outputs(self, examples: Sequence[Example], outs: list[RowOutput]) -> list[RowOutput]:
        """Per-row records a method adds after the token loop (default: none)."""
        return outs

    def extra_metrics(self, records: Sequence[dict[str, Any]], task: Task) -> dict[str, Any]:
        """Method-specific metrics over an evaluation's sample records, merged into metrics.json (default none)."""
        return {}

    # --- training ----------------------------------------------------------------------------------------------
    def forward(self, batch: Sequence[Example], task: Task) -> LossOutput:
        """The training step's forward: the module a distributed wrapper (DDP, FSDP) wraps and calls.

        The training loop calls `method(batch, task)`, never `loss` directly; `loss` is the implementation.
        """
        return self.loss(batch, task)

    def loss(self, examples: Sequence[Example], task: Task) -> LossOutput:
        raise NotImplementedError(f"method {self.name!r} does not train")

    def begin_step(self, step: int, total_steps: int) -> bool:
        """Called by the training loop before each optimizer step; True asks it to reset the optimizer
        (e.g. at a Coconut curriculum stage change)."""
        return False

    def train_config(self, cfg: Any) -> Any:
        """The TrainConfig the loop runs with (a method whose batches are groups, such as rloo, sets its batching)."""
        return cfg

    def finish_training(self, out_dir: Any) -> None:
        """Called by `latentcot train` after the loop ends (e.g. to draw the run's curves)."""

    def check_train_examples(self, examples: Sequence[Example], task: Task) -> None:
        """Raises ConfigError when the training examples cannot be trained with these settings; `latentcot train`
        calls it before writing anything."""

    def step_units(self, batches: Sequence[Sequence[Example]], task: Task) -> dict[str, float] | None:
        """Step-wide normalisers, counted from the micro-batches of one optimizer step before any forward, for a
        loss whose terms are means over different units (CODI: student tokens, teacher tokens, rows).

        The training loop stores them in `self.step_totals` while the step runs; `loss` then returns its
        micro-batch's share of the step's mean, so k accumulated micro-batches give exactly the gradient of one
        batch k times larger. None (the default): the loop weights each micro-batch's mean by `LossOutput.weight`.
        """
        return None

    def schedule_window(self, step: int, total_steps: int) -> tuple[int, int]:
        """(first step, length) of the learning-rate cycle that optimizer step `step` belongs to: the training loop
        applies warmup and the schedule within it. Default: one cycle over the whole run; a curriculum may restart
        the cycle at every stage."""
        return 0, total_steps

    def sft_loss(self, rows: Sequence[Sequence[Piece]]) -> LossOutput:
        """LM loss on the labelled pieces of right-padded rows, one forward."""
        batch = self.splice_rows(rows, padding_side="right")
        out = self.backbone.forward(batch.inputs_embeds, batch.attention_mask, batch.position_ids)
        loss = lm_loss(out.logits, batch.labels)
        n = int((batch.labels[:, 1:] != IGNORE).sum())
        return LossOutput(loss, {"loss": float(loss.detach())}, weight=float(max(n, 1)))

    def target_ids(self, ex: Example, task: Task, with_rationale: bool = True) -> list[int]:
        """Token ids of the supervised target, ending with the backbone's EOS."""
        text = task.target(ex, with_rationale=with_rationale)
        ids = self.backbone.encode((" " if not self.backbone.has_chat_template else "") + text)
        eos = self.backbone.tokenizer.eos_token_id
        return ids + ([eos] if eos is not None else [])

    # --- what trains -------------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone().contiguous() for n, p in self.trainable_parameters()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Loads saved trainable weights; names and shapes must match exactly (else CheckpointError)."""
        own = dict(self.trainable_parameters())
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
            raise CheckpointError(f"{source} does not fit method {self.name!r} with these models: {what}")
        for n, p in own.items():
            if tuple(state[n].shape) != tuple(p.shape):
                raise CheckpointError(
                    f"{source} does not fit these models: {n} has shape {tuple(state[n].shape)}, "
                    f"the models need {tuple(p.shape)} (were they trained with other models?)"
                )
        with torch.no_grad():
            for n, p in own.items():
                p.copy_(state[n].to(p.dtype))


METHODS: Registry[type[Method]] = Registry("method")


def register(name: str):
    """Registers a Method subclass under `name` (and sets its `name`)."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name)(cls)

    return deco


def distinct_questions(examples: Sequence[Example]) -> tuple[list[Example], list[int]]:
    """The distinct questions of a batch (first-seen order) and, per row, the index of its question.

    Samples of one question (self-consistency rows) share work that does not depend on the sample, such as an
    assistant model's pass.
    """
    index: dict[tuple[str, str], int] = {}
    firsts: list[Example] = []
    for ex in examples:
        if (ex.id, ex.question) not in index:
            index[(ex.id, ex.question)] = len(firsts)
            firsts.append(ex)
    return firsts, [index[(ex.id, ex.question)] for ex in examples]


def generate_batched(
    method: Method, examples: Sequence[Example], task: Task, gen: GenerationConfig, rand: RowRandom | None
) -> list[RowOutput]:
    """Calls `method.generate` with gradients off and the model in eval mode."""
    was = method.training
    method.eval()
    try:
        with torch.no_grad():
            return method.generate(examples, task, gen, rand)
    finally:
        method.train(was)


def output_row(out: RowOutput) -> dict[str, Any]:
    return {
        "output": out.text,
        "generated_tokens": len(out.token_ids),
        "decode_steps": out.decode_steps,
        "latent_steps": out.latent_steps,
        "soft_steps": out.soft_steps,
        "prefill_tokens": out.prefill_tokens,
        "finish_reason": out.finish_reason,
        "seconds": out.seconds,
        **({"extra": out.extra} if out.extra else {}),
    }
