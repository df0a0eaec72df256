"""`soft_thinking`: Soft Thinking (Zhang et al., arXiv 2505.15778) and Stochastic Soft Thinking ("LLMs are
single-threaded reasoners", arXiv 2508.03440), training-free.

During thinking the next input is not a sampled token but the probability-weighted mixture of the top-k token
embeddings, e_t = sum_k p_k E[k], with p after temperature / top-p / min-p (`think_*` fields, `soft_top_k`).
`randomness=dirichlet` (p' ~ Dir(gamma p)) or `randomness=gumbel` (p' = softmax((log p + g) / tau)) makes the
soft inputs stochastic, the fix the second paper proposes for soft inputs that behave like greedy decoding.

Thinking ends, per row, when the top-1 tokens of the soft trace spell the end-of-thinking marker `think_end`
(that last token is fed as a hard token), by Cold Stop (the entropy of the thinking distribution below
`cold_stop_entropy` for `cold_stop_steps` consecutive steps), when the top-1 token is EOS, or at the budget
`max_think_steps`. Except at a marker, the marker's tokens are then forced; the answer is decoded with hard
tokens under the run's GenerationConfig (greedy or sampled). Rows switch phase independently inside one
`Engine.generate` call through a `Controller`, so the batch stays together and KV-cached.

Output: the top-1 tokens of the soft trace are the visible "thinking text"; `RowOutput.text` is that text
followed by the answer phase (marker + answer), so extractors see "... The answer is N" as with hard CoT.
`extra` holds thinking_text, think_stop (marker | cold_stop | eos | budget), think_steps and the entropies.
`max_new_tokens` budgets the answer tokens after each row's marker; `max_think_steps` budgets thinking.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from latentcot.config import check
from latentcot.decoding.engine import DecodeState, RowOutput
from latentcot.decoding.sampling import GenerationConfig, RowRandom, next_tokens, row_seed
from latentcot.methods.base import Method, MethodConfig, register
from latentcot.models.backbone import Backbone
from latentcot.models.soft import (
    dirichlet_perturb,
    entropy,
    gumbel_noise,
    gumbel_softmax,
    mix_embeddings,
    token_probs,
    top_k_filtered,
)
from latentcot.models.splice import tokens
from latentcot.tasks.base import Example, Task

THINK, FORCE, ANSWER = 0, 1, 2
RANDOMNESS = ("none", "dirichlet", "gumbel")


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


@dataclass
class SoftThinkingConfig(ThinkingConfig):
    """Attributes:
    soft_top_k: tokens mixed per soft input (paper: 10-15).
    think_temperature / think_top_p / think_min_p: the thinking distribution (the answer uses GenerationConfig).
    cold_stop_entropy: Cold Stop threshold on the entropy (nats) of softmax(logits / think_temperature).
    cold_stop_steps: consecutive low-entropy steps that stop thinking (0 = Cold Stop off).
    randomness: none | dirichlet | gumbel (Stochastic Soft Thinking).
    dirichlet_gamma: Dirichlet concentration scale gamma in Dir(gamma p).
    gumbel_tau: Gumbel-Softmax temperature (paper: 0.5).
    """

    soft_top_k: int = 15
    think_temperature: float = 0.6
    think_top_p: float = 0.95
    think_min_p: float = 0.001
    cold_stop_entropy: float = 0.01
    cold_stop_steps: int = 64
    randomness: str = "none"
    dirichlet_gamma: float = 1.0
    gumbel_tau: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.soft_top_k >= 1, "soft_top_k", f"must be >= 1 (1 = greedy hard tokens), got {self.soft_top_k}")
        check(self.think_temperature > 0, "think_temperature", f"must be > 0, got {self.think_temperature}")
        check(0 < self.think_top_p <= 1, "think_top_p", f"must be in (0, 1], got {self.think_top_p}")
        check(0 <= self.think_min_p < 1, "think_min_p", f"must be in [0, 1), got {self.think_min_p}")
        check(self.cold_stop_entropy >= 0, "cold_stop_entropy", f"must be >= 0, got {self.cold_stop_entropy}")
        check(self.cold_stop_steps >= 0, "cold_stop_steps", f"must be >= 0 (0 = off), got {self.cold_stop_steps}")
        check(self.randomness in RANDOMNESS, "randomness", f"must be one of {', '.join(RANDOMNESS)}, got {self.randomness!r}")
        check(self.dirichlet_gamma > 0, "dirichlet_gamma", f"must be > 0, got {self.dirichlet_gamma}")
        check(self.gumbel_tau > 0, "gumbel_tau", f"must be > 0, got {self.gumbel_tau}")


@dataclass
class ThoughtInputs:
    """A thinking step's inputs for n rows.

    Attributes:
        embeds: (n, d) soft inputs, or None when thinking is hard (the top-1 token is fed).
        top_ids: (n, m) token ids by mixture weight, descending; column 0 is the trace's visible token.
        top_weights: (n, m) their weights.
        entropy: (n,) entropy (nats) of the thinking distribution before truncation and randomness.
    """

    embeds: torch.Tensor | None
    top_ids: torch.Tensor
    top_weights: torch.Tensor
    entropy: torch.Tensor


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
        if rand is None:
            rand = RowRandom([row_seed(0, ex.id, 0) for ex in examples], self.backbone.device)
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


class ThinkingController:
    """The `Controller` that lets each row think, force the end marker, then answer, at its own pace.

    Random draws come from the streams of exactly the rows that need them, so a row's results never depend on
    which other rows share its batch or on the phase they are in.
    """

    def __init__(self, method: ThinkingMethod, gen: GenerationConfig, rand: RowRandom, batch_size: int) -> None:
        self.m = method
        self.gen = gen
        self.rand = rand
        B = batch_size
        self.phase = [THINK] * B
        self.think_ids: list[list[int]] = [[] for _ in range(B)]
        self.entropies: list[list[float]] = [[] for _ in range(B)]
        self.low = [0] * B
        self.stop_reason = ["budget"] * B
        self.queue: list[list[int]] = [[] for _ in range(B)]
        # With ignore_eos neither thinking nor the answer ends at EOS, and rows end at the engine's budget.
        self.eos = set() if gen.ignore_eos else set(method.backbone.eos_ids)
        self.answered = [0] * B  # answer tokens sampled (the forced marker not counted)
        self.cut = [False] * B  # rows stopped here at the answer budget
        self.tail = len(method.marker_ids) + 8

    def inputs(self, state: DecodeState, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Next inputs (B, d) and emitted ids (B,) (-1 for a soft step)."""
        bb, cfg = self.m.backbone, self.m.cfg
        B = state.batch_size
        dev = state.logits.device
        ids = torch.full((B,), -1, dtype=torch.long, device=dev)
        soft = torch.zeros(B, bb.hidden_size, device=dev)  # (B, d) float32; hard rows overwritten below
        act = active.tolist()
        decided: set[int] = set()
        thinking = []
        for b in range(B):
            if act[b] and self.phase[b] == THINK:
                if len(self.think_ids[b]) >= cfg.max_think_steps:
                    self._end(b, "budget")
                else:
                    thinking.append(b)
        if thinking:
            cold_entropy, cold_steps = self.m.cold_stop()
            th = self.m.think_inputs(state.logits[thinking], self.rand.select(thinking), self.gen)
            top1s = th.top_ids[:, 0].tolist()
            ents = th.entropy.tolist()
            for j, b in enumerate(thinking):
                top1, ent = top1s[j], ents[j]
                self.entropies[b].append(ent)
                self.low[b] = self.low[b] + 1 if ent < cold_entropy else 0
                if top1 in self.eos:
                    self._end(b, "eos")
                elif self._completes_marker(b, top1):
                    # The marker's last token goes in as a hard token: the answer phase starts right after it.
                    self.phase[b], self.stop_reason[b] = ANSWER, "marker"
                    ids[b] = top1
                    decided.add(b)
                elif 0 < cold_steps <= self.low[b]:
                    self._end(b, "cold_stop")
                else:
                    self.think_ids[b].append(top1)
                    if th.embeds is None:
                        soft[b] = bb.embed(th.top_ids[j, :1]).float()[0]
                    else:
                        soft[b] = th.embeds[j]
                    decided.add(b)
        answering = []
        for b in range(B):
            if not act[b] or b in decided:
                continue
            if self.phase[b] == FORCE:
                ids[b] = self.queue[b].pop(0)
                if not self.queue[b]:
                    self.phase[b] = ANSWER
            elif self.answered[b] >= self.gen.max_new_tokens and self.eos:
                # The answer budget is per row, after its own marker: end the row as the engine ends rows.
                ids[b], self.cut[b] = min(self.eos), True
            else:
                answering.append(b)
        if answering:
            ids[answering] = next_tokens(state.logits[answering], self.gen, self.rand.select(answering))
            for b in answering:
                self.answered[b] += 1
        hard = bb.embed(ids.clamp_min(0)).float()  # (B, d)
        return torch.where((ids >= 0)[:, None], hard, soft), ids

    def _end(self, b: int, reason: str) -> None:
        """Stops row b's thinking; the marker is forced from the next emitted position on."""
        self.stop_reason[b] = reason
        text = self.m.backbone.decode(self.think_ids[b][-4:])
        glue = bool(text) and not text[-1].isspace() and not self.m.marker[:1].isspace()
        self.queue[b] = list(self.m.marker_sep_ids if glue else self.m.marker_ids)
        self.phase[b] = FORCE

    def _completes_marker(self, b: int, top1: int) -> bool:
        tail = self.think_ids[b][-self.tail :] + [top1]
        return self.m.marker.strip() in self.m.backbone.tokenizer.decode(tail, skip_special_tokens=False)

    def finish(self, b: int, out: RowOutput, stop: Sequence[str]) -> RowOutput:
        """Row b's output with the thinking trace put in front of the answer phase."""
        bb = self.m.backbone
        think = self.think_ids[b]
        prefix = bb.decode(think)
        text = bb.decode(think + out.token_ids)
        if out.finish_reason == "stop":
            # The engine cut the answer at a stop string; cut the joined text at the same place.
            start = max(0, len(prefix) - 2)
            hits = [i for i in (text.find(s, start) for s in stop) if i >= 0]
            text = text[: min(hits)] if hits else prefix + out.text
        out.text = text
        if self.cut[b]:
            out.finish_reason = "length"
            out.decode_steps -= 1  # the closing EOS was never a step of this row
        out.extra = {
            "thinking_text": prefix,
            "think_stop": self.stop_reason[b],
            "think_steps": len(think),
            "entropy": [round(e, 4) for e in self.entropies[b]],
        }
        if self.m.hard_thinking:
            out.token_ids = think + out.token_ids
            out.soft_steps = 0
        return out


@register("soft_thinking")
class SoftThinking(ThinkingMethod):
    """Soft Thinking: top-k mixture inputs while thinking, optionally randomised (Dirichlet / Gumbel-Softmax)."""

    Config = SoftThinkingConfig

    @classmethod
    def smoke_settings(cls, model: str) -> dict[str, Any]:
        return {"max_think_steps": 8, "soft_top_k": 4}

    def cold_stop(self) -> tuple[float, int]:
        return self.cfg.cold_stop_entropy, self.cfg.cold_stop_steps

    def think_inputs(self, logits: torch.Tensor, rand: RowRandom | None, gen: GenerationConfig) -> ThoughtInputs:
        c: SoftThinkingConfig = self.cfg
        probs = token_probs(logits, c.think_temperature)  # (n, V)
        w, ids = top_k_filtered(probs, c.soft_top_k, c.think_top_p, c.think_min_p)  # (n, k) each
        if c.randomness == "dirichlet":
            w = dirichlet_perturb(w, c.dirichlet_gamma, rand)
        elif c.randomness == "gumbel":
            w = gumbel_softmax(w, c.gumbel_tau, gumbel_noise(rand, w.shape[-1]))
        if c.randomness != "none":
            w, order = w.sort(-1, descending=True)  # (n, k): the visible token is the heaviest after noise
            ids = ids.gather(-1, order)
        return ThoughtInputs(mix_embeddings(w, ids, self.backbone.embed), ids, w, entropy(probs))
