"""`codi`: Continuous Chain-of-Thought via Self-Distillation (Shen et al., EMNLP 2025, arXiv 2502.21074).

One model plays two roles in one training step:

- teacher: question + rationale + answer phrase + answer (explicit CoT; by default without the last rationale
  step, which would otherwise let the answer be copied);
- student: question + `<bot>` + N continuous thoughts + `<eot>` + answer phrase + answer, where each thought is
  projection(h) of the previous step's last hidden state (projection = 2-layer MLP + LayerNorm, trainable).

loss = alpha * CE_student(answer phrase + answer) + beta * distill + gamma * CE_teacher(rationale + answer),
distill = the mean over every entry of the model's `hidden_states` (the embedding output and the L blocks' outputs:
L+1 entries, as the official code) of a distance between the teacher's and the student's states at the last token
of the answer phrase (`distill_anchor`, located as a named span, never by index arithmetic), teacher detached.
The distance is by default the official code's smooth-L1 divided by the teacher's standard deviation
(`distill_loss=smooth_l1_std`, the loss the papers' beta = 1 for GPT-2 and 20 for LLaMA were tuned with);
`distill_loss=l1` is the plain per-layer L1 the paper's text describes.

Better than the official code: attention masks and positions are kept right through the latent and answer steps
under padding (left padding at generation through the Engine; right padding with masked gaps in training), and
the anchor is found in the text, so negative answers and any answer phrase work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from latentcot.config import check
from latentcot.errors import ConfigError
from latentcot.latent.curriculum import split_rationale
from latentcot.latent.rollout import rollout
from latentcot.methods.base import LossOutput, register
from latentcot.methods.latent import LatentMethod, at_thought_norm, check_thought_norm
from latentcot.methods.sft import SFTConfig
from latentcot.models.backbone import Backbone
from latentcot.models.splice import tokens
from latentcot.objectives.distill import DISTILL_LOSSES
from latentcot.objectives.lm import lm_loss
from latentcot.tasks.base import Example, Task


@dataclass
class CODIConfig(SFTConfig):
    """Attributes:
    num_thoughts: N continuous thoughts (paper: 6).
    alpha: weight of the student's answer cross-entropy.
    beta: weight of the distillation loss (paper: 1 for GPT-2, 20 for LLaMA-1B).
    gamma: weight of the teacher's rationale + answer cross-entropy.
    distill_loss: "smooth_l1_std" (default; the official code: smooth-L1 / the teacher's std, per hidden_states
        entry) or "l1" (the plain per-layer L1 of the paper's text).
    distill_anchor: the text whose last token is the distillation position (default: the task's answer phrase,
        e.g. "The answer is" or "####"); it must occur in every teacher target.
    drop_last_step: leave the last rationale step out of the teacher's CoT (the paper does).
    proj_dim: hidden width of the projection MLP (0 = the backbone's hidden size).
    thought_norm: "none" (the paper's: the projection's output as it is, a LayerNorm output) or "embedding" (that
        output rescaled to the mean norm of the input-embedding rows; see `coconut`).
    """

    num_thoughts: int = 6
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    distill_loss: str = "smooth_l1_std"
    distill_anchor: str | None = None
    drop_last_step: bool = True
    proj_dim: int = 0
    thought_norm: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.num_thoughts > 0, "num_thoughts", f"must be > 0, got {self.num_thoughts}")
        check(self.distill_loss in DISTILL_LOSSES, "distill_loss", f"must be one of {', '.join(DISTILL_LOSSES)}, got {self.distill_loss!r}")
        for name in ("alpha", "beta", "gamma"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        check_thought_norm(self.thought_norm)
        check(self.proj_dim >= 0, "proj_dim", f"must be >= 0 (0 = hidden size), got {self.proj_dim}")
        check(self.distill_anchor is None or self.distill_anchor.strip() != "", "distill_anchor", "must not be blank")


class Projection(nn.Module):
    """CODI's projection of a hidden state into the next input: Linear -> GELU -> Linear -> LayerNorm. (B, d) -> (B, d)."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d), nn.LayerNorm(d))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def anchor_states(hidden_states: Sequence[torch.Tensor], spans: Sequence[dict], name: str) -> torch.Tensor:
    """(L+1, B, d): every entry of `hidden_states` (the embedding output, then the L blocks' outputs), as the
    official code distils, at the last position of span `name` in each row."""
    pos = torch.tensor([sp[name][1] - 1 for sp in spans], device=hidden_states[0].device)  # (B,)
    rows = torch.arange(len(spans), device=pos.device)
    return torch.stack([h[rows, pos] for h in hidden_states], dim=0)  # (L+1, B, d)


@register("codi")
class CODI(LatentMethod):
    """Continuous thoughts distilled from the model's own explicit CoT (Shen et al., arXiv 2502.21074)."""

    Config = CODIConfig
    cfg: CODIConfig

    def __init__(self, cfg: CODIConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        d = backbone.hidden_size
        self.projection = Projection(d, cfg.proj_dim or d).to(device=backbone.device, dtype=backbone.dtype)

    @classmethod
    def smoke_settings(cls, model: str) -> dict:
        return {"num_thoughts": 2}

    @property
    def eval_thoughts(self) -> int:
        return self.cfg.num_thoughts

    def to_input(self, h: torch.Tensor) -> torch.Tensor:
        return at_thought_norm(self.backbone, self.projection(h), self.cfg.thought_norm)

    def pieces(self, ex: Example, task: Task) -> tuple[list[int], list[int], list[int]]:
        """Token ids of the teacher target cut at the anchor: (rationale, anchor phrase, answer + EOS).

        The student's target is the anchor phrase and the answer with the same ids, so the two distilled
        positions hold the same token.
        """
        bb = self.backbone
        teacher = ex
        if self.cfg.drop_last_step and ex.steps:
            head, _ = split_rationale(ex, len(ex.steps) - 1)
            teacher = dataclasses.replace(ex, rationale=head or None, steps=tuple(ex.steps[:-1]))
        text = ("" if bb.has_chat_template else " ") + task.target(teacher, with_rationale=True)
        anchor = self.cfg.distill_anchor or task.answer_phrase
        i = text.rfind(anchor)
        if i < 0:
            raise ConfigError(
                f"distill_anchor: {anchor!r} does not occur in the teacher's text of example {ex.id} "
                f"({text.strip()[:80]!r}): set distill_anchor to the phrase just before the answer"
            )
        j = i
        while j > 0 and text[j - 1] in " \t":  # the space before the anchor belongs to it (BPE: " The")
            j -= 1
        end = i + len(anchor)
        eos = bb.tokenizer.eos_token_id

        def enc(s: str) -> list[int]:
            return bb.encode(s) if s.strip() else []

        return enc(text[:j]), enc(text[j:end]), enc(text[end:]) + ([eos] if eos is not None else [])

    @staticmethod
    def _units(parts: Sequence[tuple[list[int], list[int], list[int]]]) -> dict[str, float]:
        """What each term's mean is over: the student's labelled tokens (anchor + answer), the teacher's (rationale +
        anchor + answer), and rows (the distillation)."""
        return {"student": float(sum(len(a) + len(y) for _, a, y in parts)),
                "teacher": float(sum(len(r) + len(a) + len(y) for r, a, y in parts)), "rows": float(len(parts))}

    def step_units(self, batches: Sequence[Sequence[Example]], task: Task) -> dict[str, float]:
        totals = [self._units([self.pieces(ex, task) for ex in batch]) for batch in batches]
        return {k: sum(t[k] for t in totals) for k in totals[0]}

    def loss(self, examples: Sequence[Example], task: Task) -> LossOutput:
        cfg = self.cfg
        parts = [self.pieces(ex, task) for ex in examples]
        # Teacher: [prompt, rationale, anchor, answer], all of the target labelled; one forward.
        rows = [
            [tokens(self.prompt_ids(ex, task)), tokens(r, labels=True), tokens(a, labels=True, name="anchor"),
             tokens(y, labels=True)]
            for ex, (r, a, y) in zip(examples, parts)
        ]
        tb = self.splice_rows(rows, padding_side="right")
        tout = self.backbone.forward(tb.inputs_embeds, tb.attention_mask, tb.position_ids, want_hidden=True)
        ce_teacher = lm_loss(tout.logits, tb.labels)
        teacher_h = anchor_states(tout.hidden_states, tb.spans, "anchor")  # (L+1, B, d)
        # Student: [prompt, <bot>], N thoughts, [<eot>, anchor, answer] with the anchor and answer labelled.
        suffix = [[tokens([self.eot_id]), tokens(a, labels=True, name="anchor"), tokens(y, labels=True)]
                  for _, a, y in parts]
        ro = rollout(self.backbone, [self.prefix(ex, task) for ex in examples], [cfg.num_thoughts] * len(examples),
                     self.to_input, suffix, suffix_hidden=True)
        ce_student = lm_loss(ro.out.logits, ro.suffix.labels)
        student_h = anchor_states(ro.out.hidden_states, ro.suffix.spans, "anchor")  # (L+1, B, d)
        distill = DISTILL_LOSSES[cfg.distill_loss](teacher_h, student_h)
        loss = full = cfg.alpha * ce_student + cfg.beta * distill + cfg.gamma * ce_teacher
        if self.step_totals is not None:  # gradient accumulation: this micro-batch's share of each term's step mean
            own, tot = self._units(parts), self.step_totals
            loss = (cfg.alpha * ce_student * own["student"] / tot["student"]
                    + cfg.beta * distill * own["rows"] / tot["rows"]
                    + cfg.gamma * ce_teacher * own["teacher"] / tot["teacher"])
        logs = {"loss": float(full.detach()), "ce_student": float(ce_student.detach()),
                "ce_teacher": float(ce_teacher.detach()), "distill": float(distill.detach())}
        return LossOutput(loss, logs, weight=float(len(examples)))
