"""Latent rollouts: the training forward over continuous thoughts (with gradients through the KV cache) and the
cached latent loop used at generation time. Shared by `coconut`, `pause` and `codi`.

Every model call goes through `Backbone.forward` (training) or the decode `Engine` (generation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from latentcot.decoding.engine import DecodeState, Engine
from latentcot.errors import ConfigError
from latentcot.models.backbone import Backbone
from latentcot.models.compat import output_cache
from latentcot.models.splice import Piece, Spliced, splice


def forward(bb: Backbone, embeds, mask, positions, cache=None, hidden=False, keep=0):
    """One cached model call with explicit mask and positions (training and tests)."""
    return bb.forward(embeds, mask, positions, cache, use_cache=True, want_hidden=hidden, logits_to_keep=keep)


def checkpointing_on(model) -> bool:
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # newer transformers renamed it
        if hasattr(type(model), name) or hasattr(model, name):
            return bool(getattr(model, name))
    return False


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
    stride: int = 1,
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
        stride: position ids a thought advances by (1: contiguous, the papers'). With stride s, thought j of a row
            whose prefix has P positions gets position P + s*(j+1) - 1 and the suffix starts at P + s*k (k thoughts):
            each thought stands for s positions, as `think` does at generation time.
    """
    if torch.is_grad_enabled() and bb.model.training and checkpointing_on(bb.model):
        raise ConfigError("gradient_checkpointing: this method's training rollout feeds continuous thoughts through "
                          "the KV cache, which activation checkpointing turns off: set gradient_checkpointing=false")
    pad = bb.tokenizer.pad_token_id or 0
    pre = splice(prefix_rows, bb.embed, pad, "right")
    mask = pre.attention_mask  # (B, P)
    out = forward(bb, pre.inputs_embeds, mask, pre.position_ids, hidden=True, keep=1)
    cache = output_cache(out)
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
        if stride != 1:
            next_pos = next_pos + (stride - 1) * active.long()
        out = forward(bb, e[:, None].to(bb.dtype), mask, next_pos[:, None], cache, hidden=True, keep=1)
        cache = output_cache(out)
        h = torch.where(active[:, None], out.hidden_states[-1][:, -1], h)
        next_pos = next_pos + active.long()
    suf = splice(suffix_rows, bb.embed, pad, "right")
    mask = torch.cat([mask, suf.attention_mask], dim=1)  # (B, P+most+S)
    positions = next_pos[:, None] + suf.position_ids  # (B, S)
    out = forward(bb, suf.inputs_embeds, mask, positions, cache, hidden=suffix_hidden)
    return Rollout(out, suf, thoughts)


def think(
    engine: Engine,
    state: DecodeState,
    n: int,
    to_input: Callable[[torch.Tensor], torch.Tensor],
    record: list[torch.Tensor] | None = None,
    stride: int = 1,
    then: torch.Tensor | None = None,
) -> DecodeState:
    """Generation: n cached latent steps, each input = to_input(last hidden state). `record` collects the
    (B, V) logits at the state each thought is made from (for probes). `stride`: position ids each thought advances
    by (as `rollout`'s: thought j at P + stride*(j+1) - 1, the next token at P + stride*n). `then` (B, m, d): inputs
    fed right after the last thought, in the same cached call (the `<eot>` embedding; the last thought's own hidden
    state is never used, so this saves a model call per batch, as the official Coconut loop does); the state returned
    is then the one after them, without a hidden state. Runs in inference mode, like the engine's calls, so
    `to_input`'s trainable modules never record a graph over the engine's tensors."""
    with torch.inference_mode():
        for j in range(n):
            if record is not None:
                record.append(state.logits.clone())
            if stride != 1:
                state.next_position = state.next_position + (stride - 1)
            thought = to_input(state.hidden)
            if then is not None and j == n - 1:
                return engine.step(state, torch.cat([thought[:, None], then.to(thought.dtype)], dim=1))
            state = engine.step(state, thought, want_hidden=True)
        if then is not None:  # no thoughts: `then` alone
            state = engine.step(state, then)
    return state
