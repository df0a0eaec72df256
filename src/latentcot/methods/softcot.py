"""`softcot`: SoftCoT (Xu et al., "SoftCoT: Soft Chain-of-Thought for Efficient Reasoning with LLMs",
ACL 2025, arXiv 2502.12134).

A frozen assistant model reads [assistant instruction, question, N placeholder tokens]; its last-layer hidden
states at the placeholder positions, t_assist (N, d_a), go through a trainable projection into the backbone's
embedding space, T_soft (N, d), which is spliced into the frozen backbone's prompt as
[instruction, question, T_soft] (inside the user turn, before the assistant turn). The backbone then writes the
rationale and answer as ordinary tokens through the shared engine. Only the projection trains (optionally LoRA
on either model), with the LM loss on rationale + answer.

Improvements over the official code (SPEC 1.2): any assistant/backbone pair (separate tokenizers, any hidden
sizes); placeholder positions come from named splice spans (checked against the marker token), never from
index arithmetic, so left padding is safe; batched, left-padded, KV-cached generation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from latentcot.config import check
from latentcot.decoding.engine import RowOutput
from latentcot.decoding.sampling import GenerationConfig, RowRandom
from latentcot.errors import ModelError
from latentcot.methods.base import LossOutput, Method, MethodConfig, distinct_questions, register
from latentcot.methods.sft import apply_lora, check_lora
from latentcot.models.backbone import Backbone
from latentcot.models.projection import PROJECTIONS, build_projection
from latentcot.models.splice import Piece, splice, tokens, vectors
from latentcot.tasks.base import Example, Task

log = logging.getLogger(__name__)

PLACEHOLDER = "<|soft_thought|>"
PROJECTION_INITS = ("default", "embedding_norm")
# Cut point of a rendered prompt: the end of the user message, where thoughts (or hints, or pauses) go.
_CUT = "\x00latentcot:thoughts\x00"
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}

DEFAULT_ASSISTANT_INSTRUCTION = (
    "You are a helpful assistant. Read the question and think about how to solve it; "
    "your thoughts will help another model solve it."
)


def load_assistant(name: str, like: Backbone) -> Backbone:
    """Loads model `name` frozen, on the device and in the dtype of `like` (the backbone)."""
    from latentcot.models.loading import load_model

    model, tok = load_model(name, dtype=_DTYPE_NAMES.get(like.dtype, "float32"), device=str(like.device))
    return Backbone(model, tok, name)


def add_placeholder(a: Backbone, token: str = PLACEHOLDER) -> int:
    """Id of the placeholder token in `a`'s vocabulary, adding it when missing (its row: the mean row, the same in
    every process, because it is frozen and never saved with the trained projection)."""
    (tid,) = a.add_tokens([token])
    return tid


def split_prompt(bb: Backbone, user: str, system: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids of `bb`'s rendered prompt for `user`, cut at the end of the user message.

    The cut is found by rendering the chat template (or the plain "...\\nAnswer:" layout) around a sentinel string,
    so inserted vectors land between the question and the assistant turn whatever the template.

    Returns:
        (head ids up to the end of the question, tail ids: end of turn + assistant header).
    """
    text = bb.chat_prompt(user + _CUT, system=system)
    if text.count(_CUT) != 1:
        raise ModelError(f"the chat template of {bb.name or 'the model'} does not keep the user message verbatim")
    head, tail = text.split(_CUT)
    return bb.encode(head), bb.encode(tail)


@dataclass
class SoftCoTConfig(MethodConfig):
    """Attributes:
    assistant: the assistant model (alias, local directory, .gguf or hub id); loaded frozen on the backbone's
        device and dtype.
    num_thoughts: N, soft thoughts at evaluation (the paper: 4).
    num_thoughts_train: N at training (the paper trains with 32 and evaluates with 4 on purpose).
    projection: "linear" (the paper's d_a -> d map) or "mlp".
    projection_init: "default" (PyTorch's Linear init, as the paper) or "embedding_norm": the same init, then the
        last layer rescaled so that the thoughts' mean norm equals the mean norm of the backbone's embedding rows
        (measured on one assistant pass over an empty question). Assistant last-layer states are often 10-100x
        larger than the backbone's token embeddings (smollm2 -> qwen2.5: thoughts of norm ~32 against rows of ~0.5),
        which a short training run cannot undo.
    assistant_instruction: what the assistant reads before the question.
    assistant_lora_r: LoRA rank on the assistant (0 = frozen).
    backbone_lora_r: LoRA rank on the backbone (0 = frozen).
    lora_alpha / lora_dropout / lora_targets: LoRA settings for both.
    """

    assistant: str = "tiny-gpt2"
    num_thoughts: int = 4
    num_thoughts_train: int = 32
    projection: str = "linear"
    projection_init: str = "default"
    assistant_instruction: str = DEFAULT_ASSISTANT_INSTRUCTION
    assistant_lora_r: int = 0
    backbone_lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["all-linear"])

    def __post_init__(self) -> None:
        check(self.num_thoughts > 0, "num_thoughts", f"must be > 0, got {self.num_thoughts}")
        check(self.num_thoughts_train > 0, "num_thoughts_train", f"must be > 0, got {self.num_thoughts_train}")
        check(self.projection in PROJECTIONS, "projection", f"must be one of {', '.join(PROJECTIONS)}, got {self.projection!r}")
        check(self.projection_init in PROJECTION_INITS, "projection_init",
              f"must be one of {', '.join(PROJECTION_INITS)}, got {self.projection_init!r}")
        check(self.assistant_lora_r >= 0, "assistant_lora_r", f"must be >= 0 (0 = off), got {self.assistant_lora_r}")
        check(self.backbone_lora_r >= 0, "backbone_lora_r", f"must be >= 0 (0 = off), got {self.backbone_lora_r}")
        check_lora(self.lora_alpha, self.lora_dropout, self.lora_targets)


@register("softcot")
class SoftCoT(Method):
    """Assistant soft thoughts -> projection -> backbone prompt.

    Args:
        cfg: settings.
        backbone: the (frozen) backbone.
        assistant: an already loaded assistant (tests, scripts); default: load `cfg.assistant`.
    """

    plain_prompts = True  # generation = plain (spliced) prompts through self.generator

    Config = SoftCoTConfig
    trains = True

    def __init__(self, cfg: SoftCoTConfig, backbone: Backbone, assistant: Backbone | None = None) -> None:
        super().__init__(cfg, backbone)
        self.assistant = assistant if assistant is not None else load_assistant(cfg.assistant, backbone)
        self.assistant.freeze()
        n_a, n_b = (sum(p.numel() for p in m.parameters()) for m in (self.assistant, backbone))
        if n_a > n_b:  # allowed, but SoftCoT's premise is a small assistant feeding a large backbone
            log.warning("assistant %s (%.1fM parameters) is larger than the backbone %s (%.1fM)",
                        self.assistant.name, n_a / 1e6, backbone.name, n_b / 1e6)
        self.marker_id = add_placeholder(self.assistant)
        if cfg.assistant_lora_r > 0:
            apply_lora(self.assistant, cfg.assistant_lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        if cfg.backbone_lora_r > 0:
            apply_lora(backbone, cfg.backbone_lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        self.projection = build_projection(cfg.projection, self.assistant.hidden_size, backbone.hidden_size)
        self.projection.to(backbone.device)
        if cfg.projection_init == "embedding_norm":
            self.match_embedding_norm()

    @torch.no_grad()
    def match_embedding_norm(self) -> float:
        """Rescales the projection's last layer so that thoughts have the backbone's mean embedding-row norm.

        Deterministic (one assistant pass over an empty question, no randomness), so every process that builds
        the method gets the same initial projection. Returns the factor applied."""
        target = float(self.backbone.model.get_input_embeddings().weight.float().norm(dim=-1).mean())
        probe = Example(id="projection-init", question="", answer="")
        thoughts, _ = self.soft_thoughts([probe], self.cfg.num_thoughts_train)
        factor = target / max(float(thoughts.norm(dim=-1).mean()), 1e-12)
        last = [m for m in self.projection.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(factor)
        last.bias.mul_(factor)
        log.info("projection rescaled by %.4g to thoughts of norm %.4g (embedding_norm init)", factor, target)
        return factor

    @classmethod
    def smoke_settings(cls, model: str) -> dict[str, Any]:
        # The other tiny model as assistant: another tokenizer object and chat template.
        other = "tiny-llama" if model == "tiny-gpt2" else "tiny-gpt2"
        return {"assistant": other, "num_thoughts": 2, "num_thoughts_train": 3}

    def train(self, mode: bool = True) -> SoftCoT:
        super().train(mode)
        self.assistant.eval()  # a frozen feature extractor: no dropout in the thoughts
        return self

    # --- the soft thoughts -------------------------------------------------------------------------------------
    def assistant_ids(self, ex: Example) -> list[int]:
        a = self.assistant
        return a.encode(a.chat_prompt(f"{self.cfg.assistant_instruction}\n\nQuestion: {ex.question}"))

    def soft_thoughts(
        self, examples: Sequence[Example], n: int, markers: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One batched assistant forward -> projected thoughts.

        Args:
            examples: B rows.
            n: placeholders (thoughts) per row.
            markers: per row, the assistant token id that fills its n placeholders (default: the placeholder
                token for every row; SoftCoT++ starts each of its chains from another token).

        Returns:
            thoughts: (B, n, d) float32 in the backbone's embedding space.
            prefill: (B,) assistant positions read per row.
        """
        a = self.assistant
        marks = [self.marker_id] * len(examples) if markers is None else list(markers)
        rows = [[tokens(self.assistant_ids(ex)), tokens([m] * n, name="thoughts")] for ex, m in zip(examples, marks)]
        batch = splice(rows, a.embed, a.tokenizer.pad_token_id or 0, "left")  # (B, T_a, d_a)
        a.check_length(int(batch.attention_mask.sum(-1).max()), "assistant prompt")
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in a.parameters())
        with torch.set_grad_enabled(grad):
            # logits_to_keep=1: only hidden states are needed
            out = a.forward(batch.inputs_embeds, batch.attention_mask, batch.position_ids, want_hidden=True,
                            logits_to_keep=1)
        rows_idx, cols = batch.span_positions("thoughts")  # B*n positions, row-major
        want = torch.tensor(marks, device=rows_idx.device)[rows_idx]  # (B*n,) each position's marker
        if not bool((batch.input_ids[rows_idx, cols] == want).all()):
            raise RuntimeError("soft-thought span does not hold the placeholder token")  # a splice bug, not user error
        h = out.hidden_states[-1][rows_idx, cols]  # (B*n, d_a)
        t_assist = h.view(len(examples), n, -1)  # (B, n, d_a)
        return self.projection(t_assist), batch.attention_mask.sum(-1)

    def backbone_rows(
        self, examples: Sequence[Example], task: Task, thoughts: torch.Tensor, with_target: bool = False
    ) -> list[list[Piece]]:
        """[instruction + question, T_soft, end of turn + assistant header (, target)] per example."""
        rows = []
        for b, ex in enumerate(examples):
            head, tail = split_prompt(self.backbone, task.prompt(ex), self.cfg.system)
            row = [tokens(head), vectors(thoughts[b], name="thoughts"), tokens(tail)]
            if with_target:
                row.append(tokens(self.target_ids(ex, task), labels=True, name="target"))
            rows.append(row)
        return rows

    # --- the interface -----------------------------------------------------------------------------------------
    def generate(
        self, examples: Sequence[Example], task: Task, gen: GenerationConfig, rand: RowRandom | None
    ) -> list[RowOutput]:
        firsts, rows = distinct_questions(examples)  # samples of one question share one assistant pass
        thoughts, prefill = self.soft_thoughts(firsts, self.cfg.num_thoughts)  # (U, N, d)
        pick = torch.tensor(rows, device=thoughts.device)
        return self.decode(examples, task, thoughts[pick], prefill[pick], gen, rand)

    def decode(
        self,
        examples: Sequence[Example],
        task: Task,
        thoughts: torch.Tensor,
        assistant_prefill: torch.Tensor,
        gen: GenerationConfig,
        rand: RowRandom | None,
    ) -> list[RowOutput]:
        """The backbone writes one output per row after its thoughts, all rows in one batched, cached decode.

        Args:
            examples: B rows.
            thoughts: (B, N, d) each row's projected thoughts.
            assistant_prefill: (B,) assistant positions read for each row (added to its prefill count).
        """
        outs = self.generator.generate_rows(self.backbone_rows(examples, task, thoughts), gen, rand)
        for out, n in zip(outs, assistant_prefill.tolist()):
            out.prefill_tokens += int(n)
            out.extra["assistant_prefill_tokens"] = int(n)
        return outs

    def loss(self, examples: Sequence[Example], task: Task) -> LossOutput:
        thoughts, _ = self.soft_thoughts(examples, self.cfg.num_thoughts_train)  # (B, N_train, d)
        out = self.sft_loss(self.backbone_rows(examples, task, thoughts, with_target=True))
        out.logs["thought_norm"] = float(thoughts.detach().norm(dim=-1).mean())
        return out
