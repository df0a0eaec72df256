"""Controllers: per-row input choice inside `Engine.generate` for methods that mix step kinds.

`ThinkingController` runs the think -> force the end marker -> answer phases of every method that thinks with
continuous inputs and answers with hard tokens (`soft_thinking`, `soft_tokens`). It asks a `ThinkingPolicy`
(the method) for the thinking inputs; the phases, Cold Stop, marker detection and per-row budgets live here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from latentcot.decoding.engine import DecodeState, RowOutput
from latentcot.decoding.sampling import GenerationConfig, RowRandom, next_tokens
from latentcot.models.backbone import Backbone

THINK, FORCE, ANSWER = 0, 1, 2


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


class ThinkingPolicy(Protocol):
    """What `ThinkingController` needs from a thinking method (`latentcot.methods.thinking.ThinkingMethod`)."""

    backbone: Backbone
    cfg: Any  # has max_think_steps
    marker: str
    marker_ids: list[int]
    marker_sep_ids: list[int]
    hard_thinking: bool

    def think_inputs(self, logits: torch.Tensor, rand: RowRandom | None, gen: GenerationConfig) -> ThoughtInputs: ...

    def cold_stop(self) -> tuple[float, int]: ...


class ThinkingController:
    """The `Controller` that lets each row think, force the end marker, then answer, at its own pace.

    Random draws come from the streams of exactly the rows that need them, so a row's results never depend on
    which other rows share its batch or on the phase they are in.
    """

    pack_reads = False  # pack the step's host reads into one copy on the CPU too (off the CPU they always are)

    def __init__(self, method: ThinkingPolicy, gen: GenerationConfig, rand: RowRandom | None, batch_size: int) -> None:
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
        # The stripped marker's last character, when a token's own text shows whether it can write it (see
        # `_completes_marker`), and which tokens' texts do (filled as tokens appear)
        end = method.marker.strip()[-1:]
        self.marker_end = end if end.isascii() and not end.isspace() else None
        self.writes_end: dict[int, bool] = {}
        self.top1s: list[int] = []  # the last step's thinking rows' top-1 ids and entropies (see `read`)
        self.ents: list[float] = []
        self.top1_rows: list[int] = []  # the rows they belong to (active, thinking, under budget), ascending

    def inputs(self, state: DecodeState, active: Sequence[bool]) -> tuple[torch.Tensor, list[int]]:
        """Next inputs (B, d) and the ids each row emits (-1 for a soft step), read from the device once."""
        bb, cfg = self.m.backbone, self.m.cfg
        B = state.batch_size
        ids = [-1] * B
        thinking, answering, cut = [], [], []
        for b in range(B):
            if not active[b]:
                continue
            if self.phase[b] == THINK:
                if len(self.think_ids[b]) >= cfg.max_think_steps:
                    self._end(b, "budget")
                else:
                    thinking.append(b)
            elif self.phase[b] == ANSWER:
                # The answer budget is per row, after its own marker: end the row as the engine ends rows.
                (cut if self.answered[b] >= self.gen.max_new_tokens and self.eos else answering).append(b)
        th = sampled = None
        if thinking:
            if len(thinking) == B and (self.rand is None or len(self.rand) == B):
                # every row thinks (the common case): no copy of the logits, no row view of the streams
                th = self.m.think_inputs(state.logits, self.rand, self.gen)
            else:
                th = self.m.think_inputs(state.logits[thinking], self._streams(thinking), self.gen)
        if answering:  # rows draw from their own streams, so sampling before the thinking rows' checks changes nothing
            sampled = next_tokens(state.logits[answering], self.gen, self._streams(answering))
        parts = ([] if th is None else [th.top_ids[:, 0], th.entropy]) + ([] if sampled is None else [sampled])
        values = self.read(*parts)  # the thinking rows' top-1 ids and entropies, the answering rows' tokens
        top1s, ents = values[:2] if th is not None else ([], [])
        chosen = values[-1] if sampled is not None else []
        self.top1s, self.ents, self.top1_rows = top1s, ents, thinking  # for subclasses that record the step
        thought_rows: list[int] = []  # rows whose next input is their thought, and their rows in `th`
        thought_src: list[int] = []
        decided: set[int] = set()
        if thinking:
            cold_entropy, cold_steps = self.m.cold_stop()
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
                    thought_rows.append(b)
                    thought_src.append(j)
                    decided.add(b)
        for b in range(B):  # rows in the forced-marker phase, including those whose thinking ended just now
            if active[b] and b not in decided and self.phase[b] == FORCE:
                ids[b] = self.queue[b].pop(0)
                if not self.queue[b]:
                    self.phase[b] = ANSWER
        for b in cut:
            ids[b], self.cut[b] = min(self.eos), True
        for b, t in zip(answering, chosen):
            ids[b] = t
            self.answered[b] += 1
        if thought_rows:
            # Hard thinking feeds the top-1 token's embedding, as a thought (no token emitted)
            thoughts = (bb.embed(th.top_ids[:, 0]) if th.embeds is None else th.embeds).float()
            if len(thought_rows) == B:
                return thoughts, ids  # every row takes its thought: rows and thoughts are in the same order
        dev = state.logits.device
        emitted = torch.tensor(ids, device=dev)  # (B,)
        soft = torch.zeros(B, bb.hidden_size, device=dev)  # (B, d) float32
        if thought_rows:
            soft[thought_rows] = thoughts[thought_src]
        hard = bb.embed(emitted.clamp_min(0)).float()  # (B, d)
        return torch.where((emitted >= 0)[:, None], hard, soft), ids

    def read(self, *parts: torch.Tensor) -> list[list]:
        """The tensors' values as Python lists (ints for integer tensors), in the step's one device-to-host transfer.

        Off the CPU (or with `pack_reads` set) they are packed into one float64 tensor (exact for ids below 2^53 and
        for float32 entropies) and copied at once; on the CPU each is read as it is, which copies nothing.
        """
        if not parts or not (self.pack_reads or parts[0].device.type != "cpu"):
            return [p.tolist() for p in parts]
        flat = torch.cat([p.reshape(-1).double() for p in parts]).tolist()
        out, start = [], 0
        for p in parts:
            x, start = flat[start : start + p.numel()], start + p.numel()
            out.append(x if p.is_floating_point() else [int(v) for v in x])
        return out

    def _streams(self, rows: list[int]) -> RowRandom | None:
        """The random streams of `rows` (None without streams: a path that draws then raises)."""
        return None if self.rand is None else self.rand.select(rows)

    def _end(self, b: int, reason: str) -> None:
        """Stops row b's thinking; the marker is forced from the next emitted position on."""
        self.stop_reason[b] = reason
        text = self.m.backbone.decode(self.think_ids[b][-4:])
        glue = bool(text) and not text[-1].isspace() and not self.m.marker[:1].isspace()
        self.queue[b] = list(self.m.marker_sep_ids if glue else self.m.marker_ids)
        self.phase[b] = FORCE

    def _completes_marker(self, b: int, top1: int) -> bool:
        """Whether the marker is in the text of row b's last thinking tokens followed by `top1`.

        Decoding that window every step for every row costs more than the rest of a soft step's bookkeeping, so a
        token that cannot end the marker is answered without it, exactly: every earlier window was checked (a match
        ends thinking), and each window holds the previous one's tokens but its first, so a match now must end in
        `top1`'s text. When the marker ends with an ASCII character, that character can only come from a token
        whose own text has it (an ASCII byte is never part of another character; decoding adds or removes only
        spaces).
        """
        if self.marker_end is not None:
            writes = self.writes_end.get(top1)
            if writes is None:
                text = self.m.backbone.tokenizer.decode([top1], skip_special_tokens=False)
                writes = self.writes_end[top1] = self.marker_end in text
            if not writes:
                return False
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
