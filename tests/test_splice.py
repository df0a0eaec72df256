"""splice's token-only fast path (every generation prompt) against a batch built by hand, and against the
general path (the same rows with an empty vector block, which the fast path does not take)."""

from __future__ import annotations

import random

import pytest
import torch

from latentcot.models.splice import IGNORE, splice, tokens, vectors


def _by_hand(rows, embed, pad_id, side):
    flat = [[i for p in row for i in p.ids] for row in rows]
    T = max(len(f) for f in flat)
    d = embed.weight.shape[1]
    embeds = torch.zeros(len(rows), T, d)
    ids = torch.full((len(rows), T), pad_id)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    pos = torch.zeros(len(rows), T, dtype=torch.long)
    for b, f in enumerate(flat):
        off = T - len(f) if side == "left" else 0
        for j, t in enumerate(f):
            embeds[b, off + j] = embed.weight[t]
            ids[b, off + j] = t
            mask[b, off + j] = 1
            pos[b, off + j] = j
    return embeds, ids, mask, pos


@pytest.mark.parametrize("side", ["left", "right"])
def test_token_rows_equal_a_batch_built_by_hand_and_the_general_path(side):
    rng = random.Random(0)
    emb = torch.nn.Embedding(40, 6)
    for _ in range(60):
        rows = [[tokens([rng.randrange(40) for _ in range(rng.randint(0, 4))], name=rng.choice([None, "q", "a"]))
                 for _ in range(rng.randint(1, 3))] for _ in range(rng.randint(1, 5))]
        if max(sum(len(p) for p in r) for r in rows) == 0:
            continue
        with torch.no_grad():
            fast = splice(rows, emb, 3, side)
            general = splice([r + [vectors(torch.zeros(0, 6))] for r in rows], emb, 3, side)
            embeds, ids, mask, pos = _by_hand(rows, emb, 3, side)
        assert torch.equal(fast.inputs_embeds, embeds) and not fast.inputs_embeds.signbit()[mask == 0].any()
        assert torch.equal(fast.input_ids, ids) and torch.equal(fast.attention_mask, mask)
        assert torch.equal(fast.position_ids, pos) and bool((fast.labels == IGNORE).all())
        for f in ("inputs_embeds", "attention_mask", "position_ids", "labels", "input_ids"):
            assert torch.equal(getattr(fast, f), getattr(general, f)), f
        assert fast.spans == general.spans
