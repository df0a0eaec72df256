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
    """True when every layer of `cache` is a plain DynamicLayer (or a SlackLayer) holding (B, H, T, D) keys and values."""
    layers = getattr(cache, "layers", None)
    if not isinstance(cache, DynamicCache) or not layers:
        return False
    return all(type(layer) in (DynamicLayer, SlackLayer) and _initialized(layer) for layer in layers)


SLACK = 32  # spare positions a SlackLayer reserves past its keys


class SlackLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views into buffers with `SLACK` spare positions.

    A plain DynamicLayer grows by concatenation, which copies the whole cache at every decode step (smollm2, 32
    rows: 60 copies of 6 MB per step). This layer writes the step's keys and values into the spare positions and
    returns views of the filled part, so a copy happens once every `SLACK` steps. The values are the same tensors
    a DynamicLayer would hold. Row surgery (`select_rows`, `concat_states`) assigns new `keys` / `values`; the next
    update sees that they are no longer the views it handed out and re-buffers them. Decoding only (no autograd:
    the buffers are written in place).
    """

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys, values = self.keys, self.values
        n = key_states.shape[-2]
        buf = self.__dict__.get("_slack")  # key and value buffers, the views of them this layer last handed out
        t = keys.shape[2]
        if buf is None or keys is not buf[2] or values is not buf[3] or t + n > buf[0].shape[2]:
            b, h, _, d = keys.shape
            kb = keys.new_empty(b, h, t + n + SLACK, d)
            vb = values.new_empty(b, values.shape[1], t + n + SLACK, values.shape[3])
            kb.narrow(2, 0, t).copy_(keys)
            vb.narrow(2, 0, t).copy_(values)
        else:
            kb, vb = buf[0], buf[1]
        kb.narrow(2, t, n).copy_(key_states)
        vb.narrow(2, t, n).copy_(value_states)
        self.keys, self.values = kb.narrow(2, 0, t + n), vb.narrow(2, 0, t + n)
        self._slack = (kb, vb, self.keys, self.values)
        return self.keys, self.values


def use_slack(cache: object) -> object:
    """`cache` with its plain DynamicLayers turned into SlackLayers (in place; other caches are left as they are)."""
    if supports_rows(cache):
        for layer in cache.layers:
            layer.__class__ = SlackLayer  # same attributes, a different `update`
    return cache


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


def concat_states(states: Sequence):
    """One state holding the rows of `states` in order (each right-aligned; the result left-padded to the widest)."""
    t = max(s.attention_mask.shape[1] for s in states)
    pad = [t - s.attention_mask.shape[1] for s in states]
    first = states[0]
    for layers in zip(*(_kv(s.cache) for s in states)):
        keys = torch.cat([_left_pad(layer.keys, p, 2) for layer, p in zip(layers, pad)], dim=0)  # (B, H, T, D)
        values = torch.cat([_left_pad(layer.values, p, 2) for layer, p in zip(layers, pad)], dim=0)
        layers[0].keys, layers[0].values = keys, values
    first.attention_mask = torch.cat([_left_pad(s.attention_mask, p, 1) for s, p in zip(states, pad)])
    for name in ("next_position", "logits", "prefill_tokens", "steps"):
        setattr(first, name, torch.cat([getattr(s, name) for s in states]))
    hidden = [s.hidden for s in states]
    first.hidden = None if any(h is None for h in hidden) else torch.cat(hidden)
    first.lengths = [n for s in states for n in s.lengths]
    return first


def append_rows(state, new):
    """`state` with the rows of `new` appended after its own (in place on `state`); both right-aligned."""
    return concat_states([state, new])
