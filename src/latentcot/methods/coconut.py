"""`coconut`: Chain of Continuous Thought (Hao et al., "Training Large Language Models to Reason in a
Continuous Latent Space", arXiv 2412.06769).

Between `<bot>` and `<eot>` the last-layer hidden state h_t is fed back as the next input embedding for N steps
(no projection); the answer is then decoded as ordinary tokens. Training follows the paper's curriculum: at
stage k the first k rationale steps are replaced by k*c continuous thoughts and the loss covers only the
remaining text. This module also holds what the `pause` control and `codi` share with it: the curriculum, the
rationale cut, the training rollout over latent steps, and the cached latent loop used at generation time.

Better than the official code: generation is batched and KV-cached through the shared Engine (the official loop
is batch 1 and re-runs the whole sequence at every step); the training rollout feeds the prefix once and each
latent step as an incremental forward over the KV cache (gradients flow through the cache), with rows at
different stages in one batch handled by masking instead of per-row loops.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from latentcot.config import check
from latentcot.decoding.engine import DecodeState, RowOutput
from latentcot.decoding.sampling import GenerationConfig, RowRandom, row_seed
from latentcot.errors import ConfigError
from latentcot.methods.base import LossOutput, Method, register
from latentcot.methods.sft import SFTConfig, apply_lora
from latentcot.models.backbone import Backbone
from latentcot.models.splice import Piece, Spliced, splice, tokens
from latentcot.objectives.lm import lm_loss
from latentcot.tasks.base import Example, Task

BOT, EOT = "<bot>", "<eot>"


# --- the curriculum (shared with `pause`) ----------------------------------------------------------------------
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
        num_thoughts: thoughts at evaluation (default max_stage * thoughts_per_step).
        short_rationale: an example with fewer steps than its stage: "error" (ConfigError naming it) or
            "remove_all" (all its steps removed, still stage*c thoughts, as the official code for GSM8k).
    """

    thoughts_per_step: int = 1
    max_stage: int = 3
    start_stage: int = 0
    stage_steps: int = 0
    mix_prob: float = 0.0
    reset_optimizer: bool = True
    num_thoughts: int | None = None
    short_rationale: str = "error"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.thoughts_per_step >= 1, "thoughts_per_step", f"must be >= 1, got {self.thoughts_per_step}")
        check(self.max_stage >= 1, "max_stage", f"must be >= 1, got {self.max_stage}")
        check(0 <= self.start_stage <= self.max_stage, "start_stage", f"must be in [0, max_stage={self.max_stage}], got {self.start_stage}")
        check(self.stage_steps >= 0, "stage_steps", f"must be >= 0 (0 = split evenly), got {self.stage_steps}")
        check(0 <= self.mix_prob < 1, "mix_prob", f"must be in [0, 1), got {self.mix_prob}")
        check(self.num_thoughts is None or self.num_thoughts > 0, "num_thoughts", f"must be > 0, got {self.num_thoughts}")
        check(self.short_rationale in ("error", "remove_all"), "short_rationale",
              f"must be 'error' or 'remove_all', got {self.short_rationale!r}")


@dataclass(frozen=True)
class Curriculum:
    """Which stage each optimizer step trains, and how many thoughts each stage uses."""

    thoughts_per_step: int
    max_stage: int
    start_stage: int = 0
    stage_steps: int = 0
    mix_prob: float = 0.0

    @classmethod
    def from_config(cls, cfg: CurriculumConfig) -> Curriculum:
        return cls(cfg.thoughts_per_step, cfg.max_stage, cfg.start_stage, cfg.stage_steps, cfg.mix_prob)

    def stage_at(self, step: int, total: int) -> int:
        """The stage of optimizer step `step` (0-based) of a `total`-step run."""
        if self.stage_steps > 0:
            return min(self.start_stage + step // self.stage_steps, self.max_stage)
        n = self.max_stage - self.start_stage + 1
        return self.start_stage + min(step * n // max(1, total), n - 1)

    def stage_changes(self, step: int, total: int) -> bool:
        return step > 0 and self.stage_at(step, total) != self.stage_at(step - 1, total)

    def sample_stage(self, step: int, total: int, key: str) -> int:
        """The stage one example trains at: the current one, or with prob. mix_prob a uniformly drawn earlier one.

        The draw depends only on (step, example id), so a resumed run draws exactly what an uninterrupted one does.
        """
        stage = self.stage_at(step, total)
        if self.mix_prob <= 0 or stage == 0:
            return stage
        rng = random.Random(row_seed(step, key, 0))
        return rng.randrange(stage) if rng.random() < self.mix_prob else stage

    def thoughts(self, stage: int) -> int:
        return stage * self.thoughts_per_step

    def table(self, total: int, steps: Sequence[str] = ()) -> list[dict]:
        """One row per stage: its optimizer steps, thoughts, and which rationale steps remain as text."""
        rows: dict[int, dict] = {}
        for s in range(total):
            k = self.stage_at(s, total)
            row = rows.setdefault(k, {"stage": k, "first_step": s, "last_step": s, "thoughts": self.thoughts(k),
                                      "remaining": list(steps[k:])})
            row["last_step"] = s
        return [rows[k] for k in sorted(rows)]


def split_rationale(ex: Example, k: int) -> tuple[str, str]:
    """(text of the first k steps, text of the rest) of the example's rationale, cut where step k ends.

    Cutting the original rationale keeps its separators (newlines, spaces) intact; steps are located in order.
    """
    steps = list(ex.steps)
    text = ex.rationale if ex.rationale is not None else " ".join(steps)
    pos = 0
    for s in steps[:k]:
        i = text.find(s, pos)
        if i < 0:  # steps were normalised by the loader: fall back to joining them
            return " ".join(steps[:k]), " ".join(steps[k:])
        pos = i + len(s)
    return text[:pos].strip(), text[pos:].strip()


def without_first_steps(ex: Example, k: int, field: str, strict: bool) -> Example:
    """The example with its first k rationale steps removed (ConfigError when it has fewer and `strict`)."""
    if k > len(ex.steps):
        if strict:
            raise ConfigError(
                f"{field}: stage {k} removes {k} rationale steps but example {ex.id} has {len(ex.steps)}: lower "
                f"{field}, or set short_rationale=remove_all to remove all steps of short rationales"
            )
        k = len(ex.steps)
    if k == 0:
        return ex
    _, rest = split_rationale(ex, k)
    return dataclasses.replace(ex, rationale=rest or None, steps=tuple(ex.steps[k:]))


# --- latent rollouts -------------------------------------------------------------------------------------------
def forward(model, embeds, mask, positions, cache=None, hidden=False, keep=0):
    """One model call with explicit mask and positions (training and tests)."""
    return model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, past_key_values=cache,
                 use_cache=True, output_hidden_states=hidden, logits_to_keep=keep, return_dict=True)


@dataclass
class Rollout:
    """The result of `rollout`: the suffix pass's output and the batch it was built from."""

    out: object  # model output of the suffix pass (logits (B, S, V); hidden_states when asked)
    suffix: Spliced  # the right-padded suffix batch (labels, spans in suffix coordinates)
    thoughts: list[torch.Tensor]  # the fed inputs, each (B, d); row b's are the last counts[b] of them


def rollout(
    bb: Backbone,
    prefix_rows: Sequence[Sequence[Piece]],
    counts: Sequence[int],
    to_input: Callable[[torch.Tensor], torch.Tensor],
    suffix_rows: Sequence[Sequence[Piece]],
    suffix_hidden: bool = False,
) -> Rollout:
    """Training forward: prefix, then counts[b] continuous thoughts per row, then the suffix, with gradients.

    The prefix is fed once; each thought is an incremental forward over the KV cache (gradients flow through the
    cached keys and values into earlier passes). Rows are right-padded; a row with fewer thoughts than the
    longest skips the first steps: its input there is masked out of the attention (mask 0), and its position
    does not advance, so every row sees exactly [prefix, its thoughts, suffix] with contiguous positions.

    Args:
        bb: the backbone.
        prefix_rows: e.g. [prompt, <bot>] per row.
        counts: thoughts per row.
        to_input: last hidden state (B, d) -> next input (B, d) (identity for Coconut, the projection for CODI).
        suffix_rows: e.g. [<eot>, labelled target] per row.
        suffix_hidden: return every layer's hidden states of the suffix pass.
    """
    pad = bb.tokenizer.pad_token_id or 0
    pre = splice(prefix_rows, bb.embed, pad, "right")
    mask = pre.attention_mask  # (B, P)
    out = forward(bb.model, pre.inputs_embeds, mask, pre.position_ids, hidden=True, keep=1)
    cache = out.past_key_values
    lengths = mask.sum(-1)  # (B,)
    rows = torch.arange(mask.shape[0], device=mask.device)
    h = out.hidden_states[-1][rows, lengths - 1]  # (B, d): state at each row's last prefix token
    next_pos = lengths.clone()  # (B,)
    counts_t = torch.tensor(list(counts), device=mask.device)
    most = int(counts_t.max()) if len(counts) else 0
    thoughts = []
    for j in range(most):
        active = counts_t >= most - j  # (B,) rows whose thoughts have started
        e = to_input(h)  # (B, d)
        thoughts.append(e)
        mask = torch.cat([mask, active[:, None].to(mask.dtype)], dim=1)  # (B, P+j+1)
        out = forward(bb.model, e[:, None].to(bb.dtype), mask, next_pos[:, None], cache, hidden=True, keep=1)
        cache = out.past_key_values
        h = torch.where(active[:, None], out.hidden_states[-1][:, -1], h)
        next_pos = next_pos + active.long()
    suf = splice(suffix_rows, bb.embed, pad, "right")
    mask = torch.cat([mask, suf.attention_mask], dim=1)  # (B, P+most+S)
    positions = next_pos[:, None] + suf.position_ids  # (B, S)
    out = forward(bb.model, suf.inputs_embeds, mask, positions, cache, hidden=suffix_hidden)
    return Rollout(out, suf, thoughts)


def think(
    method: Method,
    state: DecodeState,
    n: int,
    to_input: Callable[[torch.Tensor], torch.Tensor],
    record: list[torch.Tensor] | None = None,
) -> DecodeState:
    """Generation: n cached latent steps, each input = to_input(last hidden state). `record` collects the
    (B, V) logits at the state each thought is made from (for probes)."""
    for _ in range(n):
        if record is not None:
            record.append(state.logits.clone())
        state = method.engine.step(state, to_input(state.hidden), want_hidden=True)
    return state


# --- the methods -----------------------------------------------------------------------------------------------
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

    def think_steps(self, state: DecodeState, n: int, record: list[torch.Tensor] | None = None) -> DecodeState:
        return think(self, state, n, self.to_input, record)

    def latent_state(self, examples: Sequence[Example], task: Task, record: list[torch.Tensor] | None = None):
        """Prefill [prompt, <bot>], take the thoughts, feed <eot>: the state the answer is decoded from."""
        state = self.engine.prefill(self.splice_rows([self.prefix(ex, task) for ex in examples]), want_hidden=True)
        state = self.think_steps(state, self.eval_thoughts, record)
        eot = torch.full((state.batch_size,), self.eot_id, dtype=torch.long, device=state.logits.device)
        return self.engine.step_tokens(state, eot)

    def generate(
        self, examples: Sequence[Example], task: Task, gen: GenerationConfig, rand: RowRandom | None
    ) -> list[RowOutput]:
        outs = self.engine.generate(self.latent_state(examples, task), gen, rand)
        for o in outs:
            o.latent_steps = self.eval_thoughts
        return outs

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
        return {"max_stage": 1, "thoughts_per_step": 2, "short_rationale": "remove_all"}

    @property
    def eval_thoughts(self) -> int:
        return self.cfg.num_thoughts or self.curriculum.thoughts(self.cfg.max_stage)

    def begin_step(self, step: int, total_steps: int) -> bool:
        self._step, self._total = step, total_steps
        return self.cfg.reset_optimizer and self.curriculum.stage_changes(step, total_steps)

    def plan(self, ex: Example, task: Task) -> tuple[int, list[int]]:
        """(thoughts, target ids of the remaining text) of one training example at the current step."""
        stage = self.curriculum.sample_stage(self._step, self._total, ex.id)
        rest = without_first_steps(ex, stage, "max_stage", self.cfg.short_rationale == "error")
        return self.curriculum.thoughts(stage), self.target_ids(rest, task, with_rationale=True)


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
        return LossOutput(loss, {"loss": float(loss.detach()), "stage": float(stage)})
