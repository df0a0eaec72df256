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

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from latentcot.decoding.sampling import GenerationConfig, RowRandom, next_tokens
from latentcot.models.backbone import Backbone
from latentcot.models.compat import output_cache
from latentcot.models.splice import Piece, Spliced, splice


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
    """

    cache: object
    attention_mask: torch.Tensor
    next_position: torch.Tensor
    logits: torch.Tensor
    hidden: torch.Tensor | None
    prefill_tokens: torch.Tensor
    steps: torch.Tensor

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

    `inputs` returns the (B, d) next inputs and a (B,) long tensor of the hard token each row emits this step
    (-1 for a soft/latent step, which emits no token). It may update its own per-row records.
    """

    def inputs(self, state: DecodeState, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class Engine:
    """Batched KV-cached decoding over a Backbone.

    Args:
        backbone: the model to decode with.
    """

    def __init__(self, backbone: Backbone) -> None:
        self.bb = backbone

    # --- low-level steps ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, batch: Spliced, want_hidden: bool = False) -> DecodeState:
        """Feeds a left-padded batch; returns the state after its last position."""
        mask = batch.attention_mask
        self.bb.check_length(int(mask.sum(-1).max()))
        out = self._forward(batch.inputs_embeds, mask, batch.position_ids, None, want_hidden)
        return DecodeState(
            cache=output_cache(out),
            attention_mask=mask,
            next_position=batch.position_ids[:, -1] + 1,
            logits=out.logits[:, -1].float(),
            hidden=out.hidden_states[-1][:, -1] if want_hidden else None,
            prefill_tokens=mask.sum(-1),
            steps=torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device),
        )

    @torch.no_grad()
    def step(self, state: DecodeState, embeds: torch.Tensor, want_hidden: bool = False) -> DecodeState:
        """Feeds one input vector per row. embeds (B, d) or (B, n, d) for n forced positions at once."""
        if embeds.dim() == 2:
            embeds = embeds[:, None]  # (B, 1, d)
        B, n, _ = embeds.shape
        ones = torch.ones(B, n, dtype=state.attention_mask.dtype, device=embeds.device)
        mask = torch.cat([state.attention_mask, ones], dim=1)  # (B, T+n)
        self.bb.check_length(int(state.next_position.max()) + n, "sequence")
        pos = state.next_position[:, None] + torch.arange(n, device=embeds.device)  # (B, n)
        out = self._forward(embeds.to(self.bb.dtype), mask, pos, state.cache, want_hidden)
        state.cache = output_cache(out)
        state.attention_mask = mask
        state.next_position = state.next_position + n
        state.logits = out.logits[:, -1].float()
        state.hidden = out.hidden_states[-1][:, -1] if want_hidden else None
        state.steps = state.steps + n
        return state

    def step_tokens(self, state: DecodeState, ids: torch.Tensor, want_hidden: bool = False) -> DecodeState:
        """Token step(s): ids (B,) or (B, n)."""
        return self.step(state, self.bb.embed(ids), want_hidden)

    def _forward(self, embeds, mask, positions, cache, want_hidden):
        return self.bb.forward(embeds, mask, positions, cache, use_cache=True, want_hidden=want_hidden, logits_to_keep=1)

    # --- the generation protocol (latentcot.decoding.backend.GenerationBackend) ---------------------------------
    @torch.no_grad()
    def generate_rows(
        self, rows: Sequence[Sequence[Piece]], cfg: GenerationConfig, rand: RowRandom | None = None
    ) -> list[RowOutput]:
        """Plain prompts (token and vector pieces) -> one RowOutput per row: left-padded prefill, then `generate`."""
        batch = splice(rows, self.bb.embed, self.bb.tokenizer.pad_token_id or 0, "left")
        return self.generate(self.prefill(batch), cfg, rand)

    # --- the token loop ----------------------------------------------------------------------------------------
    @torch.no_grad()
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

        Args:
            state: after prefill (and any latent steps).
            cfg: sampling and stopping settings.
            rand: per-row random streams (needed when sampling).
            controller: chooses next inputs when a method mixes soft and hard steps; default: token steps.
            max_steps: cap on all steps (hard + soft), default `cfg.max_new_tokens` plus nothing.
            want_hidden: keep the last hidden state on the state at each step (for controllers that need it).
        """
        t0 = time.perf_counter()
        B = state.batch_size
        dev = state.logits.device
        eos = set() if cfg.ignore_eos else set(self.bb.eos_ids)
        pad_id = self.bb.tokenizer.pad_token_id or 0
        tokens: list[list[int]] = [[] for _ in range(B)]
        soft = [0] * B
        reason = ["length"] * B
        cut_text: list[str | None] = [None] * B
        active = torch.ones(B, dtype=torch.bool, device=dev)
        start_steps = state.steps.clone()  # latent / forced steps taken before this loop
        choices = [0] * B  # one per step in which the row chose an input (hard token, EOS, or soft/latent)
        limit = max_steps if max_steps is not None else cfg.max_new_tokens
        longest_stop = max((len(s) for s in cfg.stop), default=0)
        for _ in range(limit):
            if controller is None:
                ids = next_tokens(state.logits, cfg, rand)  # (B,)
                embeds = None
            else:
                embeds, ids = controller.inputs(state, active)
            chosen = ids.tolist()
            for b in torch.nonzero(active).flatten().tolist():
                choices[b] += 1
                t = chosen[b]
                if t < 0:
                    soft[b] += 1
                    continue
                if t in eos:
                    reason[b] = "eos"
                    active[b] = False
                    continue
                tokens[b].append(t)
                if longest_stop:
                    tail = self.bb.tokenizer.decode(tokens[b][-(longest_stop + 8) :], skip_special_tokens=True)
                    if any(s in tail for s in cfg.stop):
                        text = self.bb.decode(tokens[b])
                        cut = min(text.find(s) for s in cfg.stop if s in text)
                        cut_text[b] = text[:cut]
                        reason[b] = "stop"
                        active[b] = False
                        continue
                if len(tokens[b]) >= cfg.max_new_tokens:
                    active[b] = False
            if not bool(active.any()):
                break
            # Finished rows still take a step (their outputs are ignored); keeps the batch rectangular.
            if embeds is None:
                safe = torch.where(active, ids, torch.full_like(ids, pad_id))
                embeds = self.bb.embed(safe)
            state = self.step(state, embeds, want_hidden)
        seconds = (time.perf_counter() - t0) / B
        outs = []
        for b in range(B):
            text = cut_text[b] if cut_text[b] is not None else self.bb.decode(tokens[b])
            steps = int(start_steps[b]) + choices[b]
            outs.append(
                RowOutput(
                    token_ids=tokens[b],
                    text=text,
                    finish_reason=reason[b],
                    soft_steps=soft[b],
                    decode_steps=steps,
                    prefill_tokens=int(state.prefill_tokens[b]),
                    seconds=seconds,
                )
            )
        return outs
