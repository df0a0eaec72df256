"""`cot_unk`: zero-shot CoT with N placeholder ("pause") tokens after the question (the SoftCoT paper's
"Zero-Shot CoT-Unk" baseline; pause tokens after Goyal et al., ICLR 2024, arXiv 2310.02226).

The N slots sit where SoftCoT puts its soft thoughts: between the question and the assistant turn. Untrained
(`train_prompt=false`), they are the backbone's own unk token (pad when it has none): pad-like input that
carries no information. With `train_prompt=true` they are a trainable N x d prompt embedding (initialised from
that token's embedding) trained with the LM loss on rationale + answer, the backbone frozen: SoftCoT's
training signal without an assistant, the control that tells whether the assistant's thoughts matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from latentcot.config import check
from latentcot.errors import ConfigError
from latentcot.methods.base import LossOutput, Method, MethodConfig, register
from latentcot.methods.softcot import split_prompt
from latentcot.models.backbone import Backbone
from latentcot.models.splice import Piece, tokens, vectors
from latentcot.tasks.base import Example, Task


@dataclass
class CoTUnkConfig(MethodConfig):
    """Attributes:
    num_thoughts: N placeholder positions after the question.
    train_prompt: make the N positions a trainable prompt embedding (backbone frozen).
    """

    num_thoughts: int = 4
    train_prompt: bool = False

    def __post_init__(self) -> None:
        check(self.num_thoughts > 0, "num_thoughts", f"must be > 0, got {self.num_thoughts}")


@register("cot_unk")
class CoTUnk(Method):
    """Question + N pad-like (or trained) slots, then ordinary generation."""

    plain_prompts = True  # generation = plain (spliced) prompts through self.generator

    Config = CoTUnkConfig
    trains = True  # with train_prompt=true; the instance says whether it trains

    def __init__(self, cfg: CoTUnkConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        tok = backbone.tokenizer
        self.unk_id = int(tok.unk_token_id if tok.unk_token_id is not None else (tok.pad_token_id or 0))
        self.trains = cfg.train_prompt
        self.prompt_embeds: nn.Parameter | None = None
        if cfg.train_prompt:
            row = backbone.embed(torch.tensor([self.unk_id], device=backbone.device)).detach().float()  # (1, d)
            self.prompt_embeds = nn.Parameter(row.repeat(cfg.num_thoughts, 1))  # (N, d), float32 like projections

    @classmethod
    def smoke_settings(cls, model: str) -> dict[str, Any]:
        return {"num_thoughts": 3, "train_prompt": True}

    def rows(self, examples: Sequence[Example], task: Task, with_target: bool = False) -> list[list[Piece]]:
        """[instruction + question, N slots, end of turn + assistant header (, target)] per example."""
        out = []
        for ex in examples:
            head, tail = split_prompt(self.backbone, task.prompt(ex), self.cfg.system)
            if self.prompt_embeds is not None:
                slots = vectors(self.prompt_embeds, name="thoughts")  # (N, d)
            else:
                slots = tokens([self.unk_id] * self.cfg.num_thoughts, name="thoughts")
            row = [tokens(head), slots, tokens(tail)]
            if with_target:
                row.append(tokens(self.target_ids(ex, task), labels=True, name="target"))
            out.append(row)
        return out

    refills = True

    def prompt_rows(self, examples: Sequence[Example], task: Task) -> list[list[Piece]]:
        return self.rows(examples, task)

    def loss(self, examples: Sequence[Example], task: Task) -> LossOutput:
        if self.prompt_embeds is None:
            raise ConfigError("train_prompt: cot_unk trains only its prompt embeddings; set train_prompt=true")
        return self.sft_loss(self.rows(examples, task, with_target=True))
