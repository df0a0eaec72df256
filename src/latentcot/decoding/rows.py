"""Row surgery on a decode state: drop finished rows, add newly prefilled rows, trim all-padding columns.

What continuous batching (refill) and compaction need. Every row of a state is right-aligned: its real positions
are the last `lengths[b]` columns of the attention mask and of the KV cache, the columns before them are left
padding (mask 0). Dropping or adding rows therefore never moves a row's own keys and values relative to each
other, only the amount of padding in front of them, which the attention mask hides; positions are per row.

Only caches made of plain `DynamicLayer`s (full attention, concatenated keys and values) can be rearranged;
`supports_rows` tells the engine whether a state qualifies (sliding-window layers, for example, do not).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer


def supports_rows(cache: object) -> bool:
    """True when every layer of `cache` is a plain DynamicLayer holding (B, H, T, D) keys and values."""
    layers = getattr(cache, "layers", None)
    if not isinstance(cache, DynamicCache) or not layers:
        return False
    return all(type(layer) is DynamicLayer and _initialized(layer) for layer in layers)


def _initialized(layer: DynamicLayer) -> bool:
    """Whether the layer holds keys yet (`is_initialized` from transformers 4.57; before it, keys start as None)."""
    flag = getattr(layer, "is_initialized", None)
    return bool(flag) if flag is not None else getattr(layer, "keys", None) is not None


def _kv(cache: DynamicCache) -> list[DynamicLayer]:
    return list(cache.layers)


def select_rows(state, keep: Sequence[int]):
    """Keeps rows `keep` (in that order) of `state`, in place, and trims columns that became all padding."""
    idx = torch.tensor(list(keep), dtype=torch.long, device=state.attention_mask.device)
    lengths = [state.lengths[b] for b in keep]
    lead = state.attention_mask.shape[1] - max(lengths)  # leading columns no kept row uses
    for layer in _kv(state.cache):
        layer.keys = layer.keys.index_select(0, idx)[:, :, lead:]  # (B', H, T - lead, D)
        layer.values = layer.values.index_select(0, idx)[:, :, lead:]
    state.attention_mask = state.attention_mask.index_select(0, idx)[:, lead:]  # (B', T - lead)
    state.next_position = state.next_position.index_select(0, idx)
    state.logits = state.logits.index_select(0, idx)
    state.hidden = None if state.hidden is None else state.hidden.index_select(0, idx)
    state.prefill_tokens = state.prefill_tokens.index_select(0, idx)
    state.steps = state.steps.index_select(0, idx)
    state.lengths = lengths
    return state


def _left_pad(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [n, 0]  # F.pad counts dimensions from the last one
    return F.pad(t, pad)


def append_rows(state, new):
    """`state` with the rows of `new` appended after its own (in place on `state`); both right-aligned."""
    ta, tb = state.attention_mask.shape[1], new.attention_mask.shape[1]
    t = max(ta, tb)
    for la, lb in zip(_kv(state.cache), _kv(new.cache)):
        la.keys = torch.cat([_left_pad(la.keys, t - ta, 2), _left_pad(lb.keys, t - tb, 2)], dim=0)  # (B+n, H, T, D)
        la.values = torch.cat([_left_pad(la.values, t - ta, 2), _left_pad(lb.values, t - tb, 2)], dim=0)
    state.attention_mask = torch.cat([_left_pad(state.attention_mask, t - ta, 1), _left_pad(new.attention_mask, t - tb, 1)])
    state.next_position = torch.cat([state.next_position, new.next_position])
    state.logits = torch.cat([state.logits, new.logits])
    if state.hidden is not None and new.hidden is not None:
        state.hidden = torch.cat([state.hidden, new.hidden])
    else:
        state.hidden = None
    state.prefill_tokens = torch.cat([state.prefill_tokens, new.prefill_tokens])
    state.steps = torch.cat([state.steps, new.steps])
    state.lengths = state.lengths + new.lengths
    return state
