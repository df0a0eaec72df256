"""Row surgery in place (`latentcot.decoding.rows.place_rows`, `SlackLayer.trim`): a new row written over a finished
row's slot decodes exactly as the same row appended after the others, without copying the other rows' keys and
values; where it cannot, nothing changes."""

from __future__ import annotations

import pytest
import torch

from latentcot.decoding import rows as rows_mod
from latentcot.decoding.engine import Engine
from latentcot.models.splice import splice, tokens

QUESTIONS = ["What is 2+3?", "A longer question about apples, pears and plums. How many fruits?", "Hi"]


def _prefill(eng, bb, texts):
    return eng.prefill(splice([[tokens(bb.encode(bb.chat_prompt(t)))] for t in texts], bb.embed, 0))


def _stepped(eng, bb, texts, steps):
    state = _prefill(eng, bb, texts)
    for _ in range(steps):
        state = eng.step_tokens(state, state.logits.argmax(-1))
    return state


@pytest.mark.parametrize("slot", [0, 1, 2])
def test_a_placed_row_decodes_as_an_appended_one(tiny, slot):
    """Slot `slot` of three running rows takes a new question in place; the same question appended after the two
    other rows (the copying path) gives bitwise the same logits and keys at every later step, for every row. Row 1
    is the longest, so placing into its slot drops leading columns (a view of the same buffer, no copy)."""
    eng = Engine(tiny)
    eng._split = False  # one prefill forward: both runs see the same kernels
    new_q = ["Three apples and four pears?"]
    placed = _stepped(eng, tiny, QUESTIONS, 3)
    buffers = [layer._slack[0].data_ptr() for layer in placed.cache.layers]
    width = placed.attention_mask.shape[1]
    assert rows_mod.place_rows(placed, [slot], _prefill(eng, tiny, new_q))
    assert [layer._slack[0].data_ptr() for layer in placed.cache.layers] == buffers  # written in place
    others = [b for b in range(3) if b != slot]
    assert placed.attention_mask.shape[1] == max(placed.lengths) <= width
    if slot == 1:
        assert placed.attention_mask.shape[1] < width
    appended = rows_mod.append_rows(rows_mod.select_rows(_stepped(eng, tiny, QUESTIONS, 3), others),
                                    _prefill(eng, tiny, new_q))
    order = [*others, slot]  # appended row b' holds what placed row order[b'] holds
    assert appended.lengths == [placed.lengths[b] for b in order]
    for _ in range(4):
        assert torch.equal(appended.logits, placed.logits[order])
        for mine, theirs, n in zip(placed.cache.layers, appended.cache.layers, [min(placed.lengths)] * 99):
            assert torch.equal(mine.keys[order][:, :, -n:], theirs.keys[:, :, -n:])
            assert torch.equal(mine.values[order][:, :, -n:], theirs.values[:, :, -n:])
        placed = eng.step_tokens(placed, placed.logits.argmax(-1))
        appended = eng.step_tokens(appended, appended.logits.argmax(-1))
    assert placed.next_position[order].tolist() == appended.next_position.tolist()


def test_place_rows_refuses_and_changes_nothing(tiny):
    """A new row longer than the state is wide, a state fresh from prefill (its tensors are not the slack layer's
    own views: they may be shared), or a slot count that does not match: False, and the state is as it was."""
    eng = Engine(tiny)
    fresh = _prefill(eng, tiny, QUESTIONS[:1])
    long_q = _prefill(eng, tiny, [QUESTIONS[1] * 3])
    running = _stepped(eng, tiny, QUESTIONS, 2)
    for state, slots, new in [(running, [0], long_q), (fresh, [0], _prefill(eng, tiny, ["Hi"])),
                              (running, [0, 1], _prefill(eng, tiny, ["Hi"]))]:
        before = ([t.clone() for layer in state.cache.layers for t in (layer.keys, layer.values)],
                  state.attention_mask.clone(), state.logits.clone(), list(state.lengths))
        assert not rows_mod.place_rows(state, slots, new)
        after = ([t for layer in state.cache.layers for t in (layer.keys, layer.values)], state.attention_mask,
                 state.logits, state.lengths)
        assert all(torch.equal(a, b) for a, b in zip(before[0], after[0]))
        assert torch.equal(before[1], after[1]) and torch.equal(before[2], after[2]) and before[3] == after[3]


def test_slack_layer_trim_is_a_view_and_updates_after_it():
    """`trim` drops leading positions of the handed-out views (same buffer), and later updates append after them
    as a concatenating layer would; on keys replaced from outside it slices them."""
    from transformers.cache_utils import DynamicLayer

    torch.manual_seed(0)
    kv = [(torch.randn(2, 3, n, 4), torch.randn(2, 3, n, 4)) for n in (5, 1, 1, 1, 1)]
    slack, plain = DynamicLayer(), DynamicLayer()
    for i, (k, v) in enumerate(kv):
        if i == 1:
            slack.__class__ = rows_mod.SlackLayer
        if i == 3:
            ptr = slack._slack[0].data_ptr()
            slack.trim(2)
            plain.keys, plain.values = plain.keys[:, :, 2:], plain.values[:, :, 2:]
            assert slack.owned() and slack._slack[0].data_ptr() == ptr
        a, b = slack.update(k, v), plain.update(k, v)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    slack.keys = slack.keys.clone()  # replaced from outside: trim slices, the next update re-buffers
    slack.trim(1)
    assert not slack.owned() and slack.keys.shape[2] == 6


def test_slack_layer_stores_keys_transposed_when_asked_with_the_same_values():
    """Asked through the cache kwargs (`kernels.key_request`, as the lean call passes them), the layer stores keys
    (D, T) per row and head and hands out (B, H, T, D) views of them: the same values as a concatenating layer, a
    write into the spare room each step, back to row-major storage (the same values) when a call does not ask, and
    row surgery (`take_rows`, `keep_first`) keeps the layout and copies the values exactly."""
    from transformers.cache_utils import DynamicLayer

    from latentcot.models import kernels

    torch.manual_seed(3)
    ask = {kernels.KEYS_TRANSPOSED: True}
    kv = [(torch.randn(4, 2, n, 8), torch.randn(4, 2, n, 8)) for n in (6, 1, 1, 1, 2, 1)]
    slack, plain = DynamicLayer(), DynamicLayer()
    layouts = []
    for i, (k, v) in enumerate(kv):
        if i == 1:
            slack.__class__ = rows_mod.SlackLayer
        a = slack.update(k, v, None if i == 4 else ask)  # step 4: a call that does not ask
        b = plain.update(k, v)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert a[1].stride(-1) == 1  # values stay row-major
        layouts.append(kernels.transposed(a[0]))
        if i == 2:
            ptr = slack._slack[0].data_ptr()
        if i == 3:
            assert slack._slack[0].data_ptr() == ptr  # written into the spare room, no re-buffer
    assert layouts == [False, True, True, True, False, True]  # the first call's DynamicLayer is HF's own
    keep = torch.tensor([3, 1])
    slack.take_rows(keep, 2)
    assert kernels.transposed(slack.keys) and slack.owned()
    assert torch.equal(slack.keys, plain.keys.index_select(0, keep)[:, :, 2:])
    assert torch.equal(slack.values, plain.values.index_select(0, keep)[:, :, 2:])
    before = slack.keys.clone()
    slack.keep_first([(0, 1)], 1, 1)
    assert kernels.transposed(slack.keys) and torch.equal(slack.keys, before[1:, :, 1:])


def test_compact_order_moves_the_fewest_rows():
    assert rows_mod.compact_order(5, [1]) == [0, 4, 2, 3]  # slot 1 takes the last row
    assert rows_mod.compact_order(5, [3, 4]) == [0, 1, 2]  # nothing moves
    assert rows_mod.compact_order(6, [0, 2, 5]) == [4, 1, 3]
    assert rows_mod.compact_order(3, [0, 1, 2]) == []
    for n, leave in [(7, [0, 3]), (8, [1, 2, 6]), (4, [2])]:
        keep = rows_mod.compact_order(n, leave)
        assert sorted(keep) == [b for b in range(n) if b not in leave]
        assert all(b == i or b >= len(keep) for i, b in enumerate(keep))


@pytest.mark.parametrize("leave", [[0], [1], [0, 2], [2, 3]])
def test_rows_leaving_in_place_decode_as_gathered_rows(tiny, leave):
    """Rows leaving a running batch in `compact_order`'s order move only the rows that change slot, within the
    same buffers; the kept rows then decode bitwise as when they are gathered into new buffers (the copying path)."""
    eng = Engine(tiny)
    eng._split = False
    texts = [*QUESTIONS, "Four plus four?"]
    keep = rows_mod.compact_order(4, leave)
    moved = _stepped(eng, tiny, texts, 3)
    buffers = [layer._slack[0].data_ptr() for layer in moved.cache.layers]
    moved = rows_mod.select_rows(moved, keep)
    assert [layer._slack[0].data_ptr() for layer in moved.cache.layers] == buffers  # no new buffers
    gathered = _stepped(eng, tiny, texts, 3)
    for layer in gathered.cache.layers:
        layer.keys = layer.keys.clone()  # no longer the slack layer's own views: `select_rows` gathers
    gathered = rows_mod.select_rows(gathered, keep)
    assert [layer._slack[0].data_ptr() for layer in gathered.cache.layers] != buffers
    assert moved.lengths == gathered.lengths and moved.attention_mask.shape == gathered.attention_mask.shape
    for _ in range(4):
        assert torch.equal(moved.logits, gathered.logits)
        for a, b in zip(moved.cache.layers, gathered.cache.layers):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        moved = eng.step_tokens(moved, moved.logits.argmax(-1))
        gathered = eng.step_tokens(gathered, gathered.logits.argmax(-1))
    assert moved.next_position.tolist() == gathered.next_position.tolist()
