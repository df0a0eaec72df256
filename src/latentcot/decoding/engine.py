"""The one batched, left-padded, KV-cached decode engine.

Every method generates through it. The engine holds the per-batch state (KV cache, attention mask, next
position per row, last logits and last hidden state) and offers three kinds of step:

- token steps: the next input is the embedding of a chosen token;
- latent steps: the next input is a vector computed from the last hidden state (Coconut, CODI);
- soft steps: the next input is a mixture of token embeddings (Soft Thinking, soft/fuzzy tokens).

All three are one call, `step(state, embeds)`; what differs is how the caller computes `embeds`. The token
loop with per-row stopping lives in `generate`, which takes an optional `Controller` for methods whose rows
switch between soft and hard steps at different times.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from latentcot.decoding import prepack
from latentcot.decoding.rows import (
    append_rows,
    compact_order,
    concat_states,
    place_rows,
    select_rows,
    supports_rows,
    use_slack,
)
from latentcot.decoding.sampling import GenerationConfig, RowRandom, next_tokens
from latentcot.decoding.stopping import StopMatcher
from latentcot.models.backbone import Backbone
from latentcot.models.compat import output_cache
from latentcot.models.splice import Piece, Spliced, splice

log = logging.getLogger(__name__)


@dataclass
class DecodeState:
    """Per-batch decoding state.

    Attributes:
        cache: the model's KV cache (transformers Cache object).
        attention_mask: (B, T) over every position fed so far, padding included.
        next_position: (B,) position id the next input gets.
        logits: (B, V) float32 next-token logits after the last input.
        hidden: (B, d) last-layer hidden state at the last input (None unless asked for).
        prefill_tokens: (B,) real (unpadded) positions fed at prefill.
        steps: (B,) decode steps each row has taken (token, latent and soft steps alike).
        lengths: per row, real (unpadded) positions fed so far, kept on the host so that length checks and
            row surgery need no device-to-host transfer; each row's positions are the last lengths[b] columns.
    """

    cache: object
    attention_mask: torch.Tensor
    next_position: torch.Tensor
    logits: torch.Tensor
    hidden: torch.Tensor | None
    prefill_tokens: torch.Tensor
    steps: torch.Tensor
    lengths: list[int] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return int(self.attention_mask.shape[0])


@dataclass
class RowOutput:
    """What one row (one question x one sample) produced.

    Attributes:
        token_ids: hard tokens generated (stop strings cut, EOS excluded).
        text: decoded output text.
        finish_reason: "eos", "stop", or "length".
        latent_steps / soft_steps: continuous steps taken (counted in decode steps).
        decode_steps: every forward step of this row after prefill.
        prefill_tokens: positions fed at prefill (assistant model's prefill added by methods that have one).
        seconds: this row's share of the batch's wall-clock time.
        extra: method-specific records (e.g. soft-thinking entropies, thinking text).
    """

    token_ids: list[int]
    text: str
    finish_reason: str
    latent_steps: int = 0
    soft_steps: int = 0
    decode_steps: int = 0
    prefill_tokens: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class Controller(Protocol):
    """Chooses the next input of every row during `Engine.generate` (for methods that mix step kinds).

    `inputs` gets which rows are still running and returns the (B, d) next inputs and the hard token each row emits
    this step (-1 for a soft/latent step, which emits no token) as Python ints, with at most one device-to-host
    transfer. It may update its own per-row records.
    """

    def inputs(self, state: DecodeState, active: Sequence[bool]) -> tuple[torch.Tensor, list[int]]: ...


class Engine:
    """Batched KV-cached decoding over a Backbone.

    Its calls run in `torch.inference_mode` (no autograd bookkeeping at all: a tiny model's decode step is about a
    tenth cheaper than under `no_grad`), so the states it returns hold inference tensors: step them with the engine,
    and clone a tensor before using it where autograd records (torch refuses inference tensors there).

    Args:
        backbone: the model to decode with.
    """

    def __init__(self, backbone: Backbone) -> None:
        self.bb = backbone
        self._split = True  # prefill in length groups on CPU (`prefill`); False: one padded forward
        self._packed_model: object | None = None  # the model whose linear layers `prepack.prepare` converted
        self.fast = True  # model calls through `models.fastpath` (bitwise HF's forward; False: HF's own)

    # --- low-level steps ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, batch: Spliced, want_hidden: bool = False) -> DecodeState:
        """Feeds a left-padded batch; returns the state after its last position.

        On CPU, rows of very different lengths are fed in groups of similar length (`prefill_groups`), each group
        cut to its own width, and the groups' states are merged back into one left-padded state in row order: a
        CPU prefill's cost is its positions, padding included (smollm2: 219-243 real positions/s at 1 to 32 rows
        of 118), so padding was pure waste (30% of the positions of 32 GSM8K prompts). Each row's values are those
        of its own group's forward; they equal the one-batch prefill's up to float rounding (the masked padding
        in front of a row changes the attention kernel's block sums, ~1e-5 in logits). One group (rows of similar
        length, any other device, or a cache that cannot be merged) is the single forward it always was.
        """
        host = batch.attention_mask.sum(-1).tolist()  # real positions per row
        if self._packing(batch.attention_mask) and self._packed_model is not self.bb.model:
            prepack.prepare(self.bb.model)
            self._packed_model = self.bb.model
        self.bb.check_length(max(host))
        groups = prefill_groups(host) if batch.attention_mask.device.type == "cpu" and self._split else []
        if len(groups) > 1:
            parts = [self._prefill_rows(batch, idx, [host[i] for i in idx], want_hidden) for idx in groups]
            if all(supports_rows(p.cache) for p in parts):
                order = [i for idx in groups for i in idx]
                back = sorted(range(len(order)), key=order.__getitem__)  # merged row -> original row
                return select_rows(concat_states(parts), back)
            self._split = False  # e.g. sliding-window layers: one padded forward from now on
            log.info("this model's KV cache cannot merge rows: prefilling in one padded batch")
        return self._prefill_rows(batch, None, host, want_hidden)

    def _prefill_rows(self, batch: Spliced, idx: list[int] | None, host: list[int], want_hidden: bool) -> DecodeState:
        """One forward over rows `idx` (None: every row) cut to their own width; `host` are their lengths."""
        width = max(host)
        embeds, mask, pos = batch.inputs_embeds, batch.attention_mask, batch.position_ids
        if idx is not None:
            rows = torch.tensor(idx, device=mask.device)
            embeds, mask, pos = (t.index_select(0, rows) for t in (embeds, mask, pos))
        embeds, mask, pos = embeds[:, -width:], mask[:, -width:], pos[:, -width:]
        out = self._forward(embeds, mask, pos, None, want_hidden)
        return DecodeState(
            cache=output_cache(out),
            attention_mask=mask,
            next_position=pos[:, -1] + 1,
            logits=out.logits[:, -1].float(),
            hidden=out.hidden_states[-1][:, -1] if want_hidden else None,
            prefill_tokens=mask.sum(-1),
            steps=torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device),
            lengths=list(host),
        )

    @torch.inference_mode()
    def step(self, state: DecodeState, embeds: torch.Tensor, want_hidden: bool = False) -> DecodeState:
        """Feeds one input vector per row. embeds (B, d) or (B, n, d) for n forced positions at once."""
        if embeds.dim() == 2:
            embeds = embeds[:, None]  # (B, 1, d)
        B, n, _ = embeds.shape
        ones = torch.ones(B, n, dtype=state.attention_mask.dtype, device=embeds.device)
        mask = torch.cat([state.attention_mask, ones], dim=1)  # (B, T+n)
        if not state.lengths:  # a state built by hand: one transfer to learn the row lengths
            state.lengths = state.attention_mask.sum(-1).tolist()
        self.bb.check_length(max(state.lengths) + n, "sequence")
        pos = state.next_position[:, None] + torch.arange(n, device=embeds.device)  # (B, n)
        out = self._forward(embeds.to(self.bb.dtype), mask, pos, use_slack(state.cache), want_hidden)
        state.cache = output_cache(out)
        state.attention_mask = mask
        state.next_position = state.next_position + n
        state.logits = out.logits[:, -1].float()
        state.hidden = out.hidden_states[-1][:, -1] if want_hidden else None
        state.steps = state.steps + n
        state.lengths = [t + n for t in state.lengths]
        return state

    def step_tokens(self, state: DecodeState, ids: torch.Tensor, want_hidden: bool = False) -> DecodeState:
        """Token step(s): ids (B,) or (B, n)."""
        return self.step(state, self.bb.embed(ids), want_hidden)

    def _packing(self, t: torch.Tensor) -> bool:
        """Whether model calls on `t`'s device use oneDNN-packed linear layers (`decoding.prepack`)."""
        return self.bb.cpu_prepack and t.device.type == "cpu" and prepack.available()

    def _forward(self, embeds, mask, positions, cache, want_hidden):
        with prepack.prepacked(self._packing(embeds)):
            return self.bb.forward(embeds, mask, positions, cache, use_cache=True, want_hidden=want_hidden,
                                   logits_to_keep=1, lean=self.fast)

    # --- the generation protocol (latentcot.decoding.backend.GenerationBackend) ---------------------------------
    @torch.inference_mode()
    def generate_rows(
        self, rows: Sequence[Sequence[Piece]], cfg: GenerationConfig, rand: RowRandom | None = None
    ) -> list[RowOutput]:
        """Plain prompts (token and vector pieces) -> one RowOutput per row: left-padded prefill, then `generate`."""
        batch = splice(rows, self.bb.embed, self.bb.tokenizer.pad_token_id or 0, "left")
        return self.generate(self.prefill(batch), cfg, rand)

    # --- the token loop ----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        state: DecodeState,
        cfg: GenerationConfig,
        rand: RowRandom | None = None,
        controller: Controller | None = None,
        max_steps: int | None = None,
        want_hidden: bool = False,
    ) -> list[RowOutput]:
        """Decodes until every row has stopped (EOS, a stop string, or `cfg.max_new_tokens` hard tokens).

        Without a controller, finished rows leave the batch (their cache rows are dropped), so the batch never
        computes for them; with one, the batch stays rectangular because the controller indexes rows by position.

        Args:
            state: after prefill (and any latent steps).
            cfg: sampling and stopping settings.
            rand: per-row random streams (needed when sampling).
            controller: chooses next inputs when a method mixes soft and hard steps; default: token steps.
            max_steps: cap on all steps (hard + soft), default `cfg.max_new_tokens` plus nothing.
            want_hidden: keep the last hidden state on the state at each step (for controllers that need it).
        """
        if controller is not None:
            return self._generate_controlled(state, cfg, rand, controller, max_steps, want_hidden)
        outs: list[RowOutput] = [None] * state.batch_size  # type: ignore[list-item]
        for i, out in self._token_loop(state, list(range(state.batch_size)), cfg, rand, max_steps, want_hidden):
            outs[i] = out
        return outs

    @torch.inference_mode()
    def generate_stream(
        self,
        start: Callable[[list[int]], DecodeState],
        count: int,
        batch_size: int,
        cfg: GenerationConfig,
        streams: Callable[[list[int]], RowRandom | None],
    ) -> Iterator[tuple[int, RowOutput]]:
        """Continuous batching (refill) over `count` items: when rows finish, the next items take their slots.

        Each item is decoded as `generate` decodes it in a static batch (its own prefill, its own random stream,
        per-row positions and masks), so its output does not depend on which items share the batch.

        Args:
            start: item indices -> their decode state after prefill (and any latent steps), one row per item.
            count: number of items.
            batch_size: most rows decoded at once.
            cfg: sampling and stopping settings.
            streams: item indices -> their random streams (None when decoding is greedy).
        Yields:
            (item index, its RowOutput) as rows finish (not in item order).
        """
        first = list(range(min(batch_size, count)))
        if not first:
            return
        t0 = time.perf_counter()
        state = start(first)
        spent = time.perf_counter() - t0  # the first rows' prefill: theirs, as a fed row's is
        if not supports_rows(state.cache):
            log.info("this model's KV cache cannot drop or add rows: decoding in static batches instead")
            for lo in range(0, count, batch_size):
                items = list(range(lo, min(lo + batch_size, count)))
                yield from zip(items, self.generate(state if lo == 0 else start(items), cfg, streams(items)))
            return
        pending = iter(range(len(first), count))

        def feed(n: int) -> tuple[DecodeState, list[int], RowRandom | None, float] | None:
            items = [i for _, i in zip(range(n), pending)]
            if not items:
                return None
            t0 = time.perf_counter()
            new = start(items)
            return new, items, streams(items), time.perf_counter() - t0

        yield from self._token_loop(state, first, cfg, streams(first), None, False, feed, spent)

    def _token_loop(self, state, items, cfg, rand, max_steps, want_hidden, feed=None,
                    spent: float = 0.0) -> Iterator[tuple[int, RowOutput]]:
        """Token steps until every row is done; yields (item, RowOutput) as rows finish.

        One device-to-host transfer per step (the chosen ids). Finished rows are dropped from the batch when the
        cache allows it (else they feed pad tokens and their outputs are ignored); `feed(n)` may give new rows
        (state, items, streams, seconds spent) that are appended in their place. A row's `seconds`: its share of
        its prefill (`spent` for the first rows, split evenly; a fed row's likewise) and of every step's wall
        clock while it was unfinished (split among the unfinished rows), so the rows' seconds add up to the loop's
        time.
        """
        eos = set() if cfg.ignore_eos else set(self.bb.eos_ids)
        stop = self._stop_matcher(cfg.stop)
        limit = max_steps if max_steps is not None else cfg.max_new_tokens
        compact = supports_rows(state.cache)
        rows = _Row.start(state, items)
        for r in rows:
            r.seconds = spent / len(rows)
        last = time.perf_counter()
        while rows:
            ids = next_tokens(state.logits, cfg, rand)  # (B,)
            chosen = ids.tolist()  # the step's one device-to-host transfer
            done = [b for b, (r, t) in enumerate(zip(rows, chosen)) if not r.finished and r.take(t, eos, stop, cfg.max_new_tokens, limit)]
            now = time.perf_counter()
            live = sum(not r.finished for r in rows) + len(done)
            for r in rows:
                if not r.finished or r.ended_now:
                    r.seconds += (now - last) / live
                r.ended_now = False
            last = now
            for b in done:
                yield rows[b].item, rows[b].output(self.bb, stop)
            new, slots = None, []
            if done and compact:
                new = feed(len(done)) if feed is not None else None
                # finished rows whose slots the new rows take in place after this step (`place_rows`); the other
                # finished rows leave the batch now
                slots = done[: new[0].batch_size] if new is not None and len(done) < len(rows) else []
                keep = compact_order(len(rows), [b for b, r in enumerate(rows) if r.finished and b not in slots])
                if len(keep) < len(rows):
                    if keep:
                        state = select_rows(state, keep)
                        ids = ids[keep]
                        rand = None if rand is None else rand.select(keep)
                    slots = [keep.index(b) for b in slots]
                rows = [rows[b] for b in keep]
                for b in slots:  # a finished row in a kept slot steps once more, from position 0 (its output unused)
                    state.lengths[b] = 0
                if slots:
                    state.next_position[slots] = 0
            if any(not r.finished for r in rows):
                if not compact and len(rows) > sum(not r.finished for r in rows):  # finished rows feed pad tokens
                    alive = torch.tensor([not r.finished for r in rows], device=ids.device)
                    ids = torch.where(alive, ids, torch.full_like(ids, self.bb.tokenizer.pad_token_id or 0))
                state = self.step(state, self.bb.embed(ids), want_hidden)
            else:
                rows, slots = [], []
            if new is not None:
                new_state, new_items, new_rand, seconds = new
                fresh = _Row.start(new_state, new_items)
                for r in fresh:
                    r.seconds = seconds / len(fresh)
                if slots and place_rows(state, slots, new_state):
                    for b, r in zip(slots, fresh):
                        rows[b] = r
                    if rand is not None:
                        rand = rand.select(range(len(rows)))
                        for b, stream in zip(slots, new_rand.streams):
                            rand.streams[b] = stream
                elif rows:
                    if slots:  # not placed: the finished rows leave, the new ones are appended
                        keep = compact_order(len(rows), slots)
                        state = select_rows(state, keep)
                        rows = [rows[b] for b in keep]
                        rand = None if rand is None else rand.select(keep)
                    state = append_rows(state, new_state)
                    rand = None if rand is None else RowRandom.concat([rand, new_rand])
                    rows = rows + fresh
                else:
                    state, rand = new_state, new_rand
                    rows = fresh
                last += seconds  # the new rows' prefill is theirs (above), not a share of the next step

    def _stop_matcher(self, stops: Sequence[str]) -> StopMatcher | None:
        """The stop-string matcher for `stops` (built once per engine and stop list)."""
        stops = [s for s in stops if s]
        if not stops:
            return None
        key = tuple(stops)
        cache = self.__dict__.setdefault("_stops", {})
        if key not in cache:
            cache[key] = StopMatcher(self.bb.tokenizer, stops)
        return cache[key]

    def _generate_controlled(self, state, cfg, rand, controller, max_steps, want_hidden) -> list[RowOutput]:
        """The token loop for methods whose rows mix soft / latent and hard steps under a `Controller`."""
        t0 = time.perf_counter()
        B = state.batch_size
        eos = set() if cfg.ignore_eos else set(self.bb.eos_ids)
        stop = self._stop_matcher(cfg.stop)
        rows = _Row.start(state, list(range(B)))
        limit = max_steps if max_steps is not None else cfg.max_new_tokens
        active = [True] * B
        for _ in range(limit):
            embeds, chosen = controller.inputs(state, active)  # the controller reads the device once per step
            for b, t in enumerate(chosen):
                r = rows[b]
                if r.finished:
                    continue
                if t < 0:
                    r.choices += 1
                    r.soft += 1
                elif r.take(t, eos, stop, cfg.max_new_tokens, limit + 1):
                    active[b] = False
            if all(r.finished for r in rows):
                break
            # Finished rows still take a step (their outputs are ignored); keeps the batch rectangular.
            state = self.step(state, embeds, want_hidden)
        seconds = (time.perf_counter() - t0) / B
        outs = []
        for r in rows:
            r.seconds = seconds
            outs.append(r.output(self.bb, stop))
        return outs


class _Row:
    """Host-side record of one row during the token loop."""

    __slots__ = ("item", "tokens", "choices", "soft", "reason", "cut", "finished", "ended_now", "start_steps",
                 "prefill", "seconds")

    def __init__(self, item: int, start_steps: int, prefill: int) -> None:
        self.item = item
        self.tokens: list[int] = []
        self.choices = 0  # steps in which the row chose an input (hard token, EOS, or soft/latent)
        self.soft = 0
        self.reason = "length"
        self.cut: str | None = None
        self.finished = False
        self.ended_now = False
        self.start_steps = start_steps  # latent / forced steps taken before the loop
        self.prefill = prefill
        self.seconds = 0.0

    @staticmethod
    def start(state: DecodeState, items: Sequence[int]) -> list[_Row]:
        steps, prefill = state.steps.tolist(), state.prefill_tokens.tolist()
        return [_Row(i, s, p) for i, s, p in zip(items, steps, prefill)]

    def take(self, t: int, eos: set[int], stop: StopMatcher | None, max_new: int, limit: int) -> bool:
        """Records chosen token `t`; True when the row ends with it."""
        self.choices += 1
        if t in eos:
            self.reason = "eos"
        else:
            self.tokens.append(t)
            if stop is not None and stop.hit(self.tokens):
                self.reason = "stop"
            elif len(self.tokens) < max_new and self.choices < limit:
                return False
        self.finished = self.ended_now = True
        return True

    def output(self, bb: Backbone, stop: StopMatcher | None) -> RowOutput:
        text = bb.decode(self.tokens)
        if self.reason == "stop" and stop is not None:
            text = stop.cut(text)
        return RowOutput(
            token_ids=self.tokens,
            text=text,
            finish_reason=self.reason,
            soft_steps=self.soft,
            decode_steps=self.start_steps + self.choices,
            prefill_tokens=self.prefill,
            seconds=self.seconds,
        )


PREFILL_WASTE = 0.125  # the share of a prefill group's positions that may be padding


def prefill_groups(lengths: Sequence[int], waste: float = PREFILL_WASTE) -> list[list[int]]:
    """Rows grouped for prefill: sorted by length, each group grown while its padding stays within `waste`.

    A group of n rows is n x (its longest length) positions; a row joins while that is at most (1 + waste) x the
    group's real positions. Rows of similar length (or all equal) make one group.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    real = 0
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[i] <= (1 + waste) * (real + lengths[i]):
            groups[-1].append(i)
            real += lengths[i]
        else:
            groups.append([i])
            real = lengths[i]
    return groups
