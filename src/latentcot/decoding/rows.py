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

from latentcot.models.kernels import KEYS_TRANSPOSED, transposed


def supports_rows(cache: object) -> bool:
    """True when every layer of `cache` is a plain DynamicLayer (or a SlackLayer) holding (B, H, T, D) keys and values."""
    layers = getattr(cache, "layers", None)
    if not isinstance(cache, DynamicCache) or not layers:
        return False
    return all(type(layer) in (DynamicLayer, SlackLayer) and _initialized(layer) for layer in layers)


SLACK = 32  # the fewest spare positions a SlackLayer reserves past its keys (more for long caches: `_reserve`)


def _reserve(t: int) -> int:
    """Spare positions for a buffer of `t` filled ones: a quarter more, at least SLACK (a long cache re-buffers
    every t / 4 steps, not every 32: at 32 rows x 400 positions one re-buffer of smollm2's cache is ~1.6 ms per
    layer)."""
    return max(SLACK, t // 4)


class SlackLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views into buffers with spare positions.

    A plain DynamicLayer grows by concatenation, which copies the whole cache at every decode step (smollm2, 32
    rows: 60 copies of 6 MB per step). This layer writes the step's keys and values into the spare positions and
    returns views of the filled part, so a copy happens once every `_reserve(t)` steps. The values are the same
    tensors a DynamicLayer would hold. The views may start after the buffer's first position (`trim` drops leading
    columns without a copy). Row surgery that assigns new `keys` / `values` (`select_rows`, `concat_states`) is
    seen at the next update (they are no longer the views it handed out), which re-buffers them; `place_rows`
    writes into the views in place. Decoding only (no autograd: the buffers are written in place).

    Where the call's cache kwargs ask for it (`kernels.key_request`: the engine's lean CPU calls), the key buffer is
    stored (D, room) per row and head and the keys handed out are transposed views of it, still (B, H, T, D): the
    same numbers, which `kernels.attention` multiplies as a plain operand. A call that does not ask (or asks the
    other way) re-buffers the keys as it wants them first.
    """

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys, values = self.keys, self.values
        n = key_states.shape[-2]
        t = keys.shape[2]
        buf = self.__dict__.get("_slack")  # key buffer, value buffer, first used position, the views handed out
        # the caller's cache kwargs (positional, as HF's attention passes them) may ask for keys stored transposed
        flip = bool(args and isinstance(args[0], dict) and args[0].get(KEYS_TRANSPOSED))
        if not self.owned() or buf[2] + t + n > buf[0].shape[2] or transposed(buf[0]) != flip:
            b, h, _, d = keys.shape
            room = t + n + _reserve(t + n)
            kb = _empty_keys(keys, b, room, flip)
            vb = values.new_empty(b, values.shape[1], room, values.shape[3])
            kb.narrow(2, 0, t).copy_(keys)
            vb.narrow(2, 0, t).copy_(values)
            start = 0
        else:
            kb, vb, start = buf[0], buf[1], buf[2]
        kb.narrow(2, start + t, n).copy_(key_states)
        vb.narrow(2, start + t, n).copy_(value_states)
        self._hand_out(kb, vb, start, t + n)
        return self.keys, self.values

    def owned(self) -> bool:
        """Whether `keys` / `values` are still the views of this layer's buffers it handed out."""
        buf = self.__dict__.get("_slack")
        return buf is not None and self.keys is buf[3] and self.values is buf[4]

    def trim(self, lead: int) -> None:
        """Drops the first `lead` positions (views of the same buffers when owned: no copy)."""
        if self.owned():
            kb, vb, start = self._slack[:3]
            self._hand_out(kb, vb, start + lead, self.keys.shape[2] - lead)
        else:
            self.keys, self.values = self.keys[:, :, lead:], self.values[:, :, lead:]

    def take_rows(self, idx: torch.Tensor, lead: int) -> None:
        """Keeps rows `idx` (in that order) and drops the first `lead` positions, gathered straight into new buffers
        with spare positions (one copy; assigning the gathered tensors would cost a second at the next update)."""
        keys, values = self.keys, self.values
        t = keys.shape[2] - lead
        room = t + _reserve(t)
        kb = _empty_keys(keys, len(idx), room, transposed(keys))
        vb = values.new_empty(len(idx), values.shape[1], room, values.shape[3])
        torch.index_select(keys[:, :, lead:], 0, idx, out=kb.narrow(2, 0, t))
        torch.index_select(values[:, :, lead:], 0, idx, out=vb.narrow(2, 0, t))
        self._hand_out(kb, vb, 0, t)

    @torch.inference_mode()  # the buffers may be inference tensors (written in place)
    def keep_first(self, moves: Sequence[tuple[int, int]], m: int, lead: int) -> None:
        """Row `dst` takes row `src`'s keys and values for each (dst, src) in `moves` (every src >= m, so no source
        is overwritten), then the first `m` rows stay, without their first `lead` positions: views of the same
        buffers, so only the moved rows are copied. Needs `owned()`."""
        kb, vb, start = self._slack[:3]
        t = self.keys.shape[2] - lead
        for dst, src in moves:
            self.keys[dst, :, lead:].copy_(self.keys[src, :, lead:])
            self.values[dst, :, lead:].copy_(self.values[src, :, lead:])
        self._hand_out(kb[:m], vb[:m], start + lead, t)

    def _hand_out(self, kb: torch.Tensor, vb: torch.Tensor, start: int, t: int) -> None:
        self.keys, self.values = kb.narrow(2, start, t), vb.narrow(2, start, t)
        self._slack = (kb, vb, start, self.keys, self.values)


def _empty_keys(like: torch.Tensor, b: int, room: int, flip: bool) -> torch.Tensor:
    """A (b, H, room, D) key buffer like `like`'s; `flip`: stored (D, room) per row and head (a transposed view,
    which `kernels.attention` multiplies as a plain operand; `kernels.key_request` says when)."""
    h, d = like.shape[1], like.shape[3]
    return like.new_empty(b, h, d, room).transpose(2, 3) if flip else like.new_empty(b, h, room, d)


def slack_cache(cache: object) -> bool:
    """Whether `cache` is made of SlackLayers (the engine's decode cache, `use_slack`)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and type(layers[0]) is SlackLayer


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


def compact_order(n: int, leave: Sequence[int]) -> list[int]:
    """The rows to keep (for `select_rows`) when rows `leave` of `n` leave the batch, in the order that moves the
    fewest: a kept row below the new row count stays in its slot, and each slot left free below it takes a kept row
    from above it (the last first). A row's slot changes nothing in its values (every kernel computes rows on
    their own; refill already puts new rows into any free slot)."""
    gone = set(leave)
    m = n - len(gone)
    above = [b for b in range(m, n) if b not in gone]
    return [above.pop() if b in gone else b for b in range(m)]


def select_rows(state, keep: Sequence[int]):
    """Keeps rows `keep` (in that order) of `state`, in place, and trims columns that became all padding. Where
    every row that changes slot comes from beyond the kept count (`compact_order`'s order) and the cache is made
    of the engine's own slack buffers, only the moved rows' keys and values are copied (`SlackLayer.keep_first`);
    otherwise the kept rows are gathered into new buffers."""
    idx = torch.tensor(list(keep), dtype=torch.long, device=state.attention_mask.device)
    lengths = [state.lengths[b] for b in keep]
    lead = state.attention_mask.shape[1] - max(lengths)  # leading columns no kept row uses
    m, layers = len(keep), _kv(state.cache)
    moves = [(i, b) for i, b in enumerate(keep) if b != i]
    in_place = all(b >= m for _, b in moves) and all(type(layer) is SlackLayer and layer.owned() for layer in layers)
    for layer in layers:
        if in_place:
            layer.keep_first(moves, m, lead)
        elif type(layer) is SlackLayer:
            layer.take_rows(idx, lead)
        else:
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


@torch.inference_mode()
def place_rows(state, slots: Sequence[int], new) -> bool:
    """Writes the rows of `new` over rows `slots` of `state` (one slot per new row, in order), in place, then drops
    columns that became all padding; True when done. Continuous batching's cheap path: a finished row's slot takes
    the next question without copying the other rows' keys and values (`select_rows` + `append_rows` copy the whole
    cache, twice with the re-buffering after them: 3.4 s of a 45 s refill run at 32 rows on smollm2).

    A new row's positions go into the last columns of its slot, right-aligned like every row; the columns in front
    of them keep the finished row's keys and values, finite numbers that the slot's attention mask now hides (a
    masked key's score is replaced before the softmax, and a zero weight times a finite value adds nothing), so the
    row decodes as it would after zero padding. False (nothing changed) where it cannot: a layer whose tensors are
    not a `SlackLayer`'s own views (they may be shared with a caller), a cache `new` that cannot be rearranged, or
    a new row longer than the state is wide (`append_rows` pads then)."""
    layers, fresh = _kv(state.cache), getattr(new.cache, "layers", None)
    if not all(type(layer) is SlackLayer and layer.owned() for layer in layers) or not supports_rows(new.cache):
        return False
    width = state.attention_mask.shape[1]
    p = max(new.lengths)
    if p > width or len(fresh) != len(layers) or len(slots) != new.batch_size:
        return False
    idx = torch.tensor(list(slots), dtype=torch.long, device=state.attention_mask.device)
    for layer, src in zip(layers, fresh):
        layer.keys[idx, :, width - p :] = src.keys[:, :, -p:]
        layer.values[idx, :, width - p :] = src.values[:, :, -p:]
    state.attention_mask[idx] = 0
    state.attention_mask[idx, width - p :] = new.attention_mask[:, -p:].to(state.attention_mask.dtype)
    for name in ("next_position", "logits", "prefill_tokens", "steps"):
        getattr(state, name)[idx] = getattr(new, name)
    if state.hidden is not None and new.hidden is not None:
        state.hidden[idx] = new.hidden
    else:
        state.hidden = None
    for j, n in zip(slots, new.lengths):
        state.lengths[j] = n
    lead = width - max(state.lengths)
    if lead > 0:
        for layer in layers:
            layer.trim(lead)
        state.attention_mask = state.attention_mask[:, lead:]
    return True
