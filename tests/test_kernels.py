"""The engine's CPU attention for small calls (`latentcot.models.kernels`): HF's SDPA attention function computed
as batched products, equal to it up to float rounding on every mask HF passes (none, causal, padding, rows that may
attend to nothing) and with grouped key/value heads; taken only where `fits` says so; and the engine's steps with it
equal to HF's forward."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from latentcot.decoding import prepack
from latentcot.decoding.engine import Engine
from latentcot.models import kernels
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.models.splice import splice, tokens


class _Attn(torch.nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, True


def _inputs(B, H, kv, d, n, past, pad, flip=False):
    """query (B, H, n, d) as the projections give it, keys and values as views into a cache with spare room (keys
    stored (d, T) per row and head with `flip`, as `kernels.key_request` asks), and HF's mask for them: None for a
    prefill without padding or a step without padding, else a boolean mask (True = attend) with the causal part and
    `pad` padded positions in front of row 0."""
    T = past + n
    q = torch.randn(B, n, H, d).transpose(1, 2)
    k = (torch.randn(B, kv, d, T + 5).transpose(2, 3) if flip else torch.randn(B, kv, T + 5, d)).narrow(2, 0, T)
    v = torch.randn(B, kv, T + 5, d).narrow(2, 0, T)
    if not pad and (past == 0 or n == 1):
        return q, k, v, None
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[0, :pad] = False
    causal = torch.ones(n, T, dtype=torch.bool).tril(T - n)
    return q, k, v, keep[:, None, None, :] & causal[None, None]


@pytest.mark.parametrize("flip", [False, True], ids=["keys row-major", "keys transposed"])
@pytest.mark.parametrize("B,H,kv,d", [(3, 4, 4, 8), (2, 4, 2, 16), (2, 9, 3, 64)])
def test_attention_equals_hfs_sdpa_function_on_every_mask(B, H, kv, d, flip):
    torch.manual_seed(0)
    for n, past, pad in itertools.product([1, 2, 5], [0, 3], [0, 2]):
        q, k, v, mask = _inputs(B, H, kv, d, n, past, pad, flip)
        assert kernels.transposed(k) == flip
        for scaling in (None, 0.3):
            ref, _ = sdpa_attention_forward(_Attn(H // kv), q, k, v, mask, scaling=scaling)
            got, none = kernels.attention(_Attn(H // kv), q, k, v, mask, scaling=scaling)
            assert none is None and got.shape == ref.shape == (B, n, H, d) and got.is_contiguous()
            torch.testing.assert_close(got, ref, atol=2e-6, rtol=1e-5)
    q, k, v, mask = _inputs(B, H, kv, d, 3, 0, 2)  # row 0's first two queries may attend to nothing: zeros
    got, _ = kernels.attention(_Attn(H // kv), q, k, v, mask)
    assert not got.isnan().any() and torch.equal(got[0, :2], torch.zeros_like(got[0, :2]))


def test_attention_without_a_mask_is_causal_from_the_first_key_as_hfs():
    """HF's convention for several queries and no mask: causal, top-left, keys cut to the query count."""
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)
    ref, _ = sdpa_attention_forward(_Attn(1), q, k, v, None)
    got, _ = kernels.attention(_Attn(1), q, k, v, None)
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=1e-5)
    first = torch.softmax(q[:, :, :1] @ k[:, :, :1].transpose(-1, -2) / 8**0.5, -1) @ v[:, :, :1]  # sees key 0 only
    torch.testing.assert_close(got[:, :1], first.transpose(1, 2), atol=2e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="dropout"):
        kernels.attention(_Attn(1), q, k, v, None, dropout=0.1)


def test_fits_only_inside_the_switch_for_small_float32_inference_calls():
    q, k = torch.randn(16, 4, 1, 8), torch.randn(16, 2, 30, 8)
    mask = torch.ones(16, 1, 1, 30, dtype=torch.bool)
    assert not kernels.fits(q, k, None)  # the switch is off outside the engine's calls
    with prepack.prepacked(True), torch.inference_mode():
        assert kernels.fits(q, k, None) and kernels.fits(q, k, mask)
        assert not kernels.fits(q[:8], k[:8], None)  # 8 rows x 4 heads < MIN_HEAD_ROWS: the flash kernel
        assert not kernels.fits(q.double(), k.double(), None)
        assert not kernels.fits(q, k, mask.float())  # an additive mask: HF's function
        assert not kernels.fits(q, k, mask.expand(16, 4, 1, 30))  # a mask per head: HF's function
        big = torch.randn(16, 2, kernels.SMALL_SCORES // 2 + 1, 8)
        assert not kernels.fits(q, big, None)  # too many scores per key/value head and row
    with prepack.prepacked(True), torch.enable_grad():
        assert not kernels.fits(q, k, None)
    with prepack.prepacked(False), torch.inference_mode():
        assert not kernels.fits(q, k, None)


def test_keys_stored_transposed_are_asked_in_the_engines_calls_and_always_fit():
    """`key_request` asks for transposed keys in the engine's float32 CPU inference calls; such keys take
    `attention` at any size (the flash kernel reads them slowly), outside the switch they do not."""
    x = torch.randn(1, 1, 16)
    assert kernels.key_request(x) is None  # outside the engine's calls
    with prepack.prepacked(True), torch.inference_mode():
        assert kernels.key_request(x) == {kernels.KEYS_TRANSPOSED: True}
        assert kernels.key_request(x.double()) is None
        q = torch.randn(1, 4, 1, 8)
        long = torch.randn(1, 2, 8, kernels.SMALL_SCORES).transpose(2, 3)  # one row, many scores: still fits
        assert kernels.transposed(long) and kernels.fits(q, long, None)
        assert not kernels.fits(q, long.contiguous(), None)
        assert not kernels.fits(q, long, torch.ones(1, 4, 1, kernels.SMALL_SCORES, dtype=torch.bool))  # per head
    with prepack.prepacked(True), torch.enable_grad():
        assert kernels.key_request(x) is None and not kernels.fits(q, long, None)


@pytest.mark.parametrize("alias", ["tiny-gpt2", "tiny-llama"])
def test_engine_steps_with_the_small_attention_equal_hfs_forward(alias, monkeypatch):
    """A padded batch of 16 rows (64 row-heads: the small attention applies) through the engine's prefill and
    steps of one and of two positions: logits equal HF's forward up to float rounding, and the small attention ran
    in every layer of both steps (a prefill of 16 rows of one length takes it too: next test)."""
    bb = Backbone(*load_model(alias), alias)
    calls, real = [], kernels.attention
    monkeypatch.setattr(kernels, "attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    eng = Engine(bb)
    texts = ["What is 2+3?", "Hi", "A longer question about plums.", "Why?"] * 4
    batch = splice([[tokens(bb.tokenizer.encode(t))] for t in texts], bb.embed, bb.tokenizer.pad_token_id or 0, "left")
    ids = torch.randint(3, 90, (16, 3))
    state = eng.prefill(batch)  # in groups of similar length (fewer rows each: the flash kernel)
    calls.clear()
    state = eng.step_tokens(state, ids[:, 0])
    state = eng.step_tokens(state, ids[:, 1:])
    assert len(calls) == (2 * bb.model.config.num_hidden_layers if _lean(bb) else 0)
    # the lean call's steps keep keys transposed, HF's forward as HF stores them
    assert all(kernels.transposed(layer.keys) == _lean(bb) for layer in state.cache.layers)
    full_ids = torch.cat([batch.input_ids, ids], dim=1)
    mask = torch.cat([batch.attention_mask, torch.ones(16, 3, dtype=batch.attention_mask.dtype)], dim=1)
    with torch.no_grad():
        ref = bb.model(input_ids=full_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits
    torch.testing.assert_close(state.logits, ref[:, -1].float(), atol=1e-5, rtol=1e-4)


def _lean(bb) -> bool:
    from latentcot.models import fastpath

    return fastpath.plan(bb.model) is not None


def test_a_prefill_of_rows_of_one_length_takes_the_small_attention(monkeypatch):
    bb = Backbone(*load_model("tiny-gpt2"), "tiny-gpt2")
    calls, real = [], kernels.attention
    monkeypatch.setattr(kernels, "attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    batch = splice([[tokens(list(range(5 + i, 17 + i)))] for i in range(16)], bb.embed, 0, "left")
    state = Engine(bb).prefill(batch)
    assert len(calls) == (bb.model.config.num_hidden_layers if _lean(bb) else 0)
    with torch.no_grad():
        ref = bb.model(input_ids=batch.input_ids).logits[:, -1].float()
    torch.testing.assert_close(state.logits, ref, atol=1e-5, rtol=1e-4)


def test_a_mask_derived_once_per_call_gives_the_same_values():
    """`blocked` (the mask's complement and whether a query may attend to nothing, made once per model call) gives
    `attention` the same outputs with torch.equal, with plain softmax where no row is empty and zeros where one is."""
    torch.manual_seed(2)
    with prepack.prepacked(True), torch.inference_mode():
        for n, past, pad in [(1, 6, 2), (2, 3, 0), (3, 0, 2), (1, 4, 0)]:
            q, k, v, mask = _inputs(4, 9, 3, 16, n, past, pad)
            if mask is None:
                mask = torch.ones(4, 1, n, past + n, dtype=torch.bool)
            derived = kernels.blocked(mask)
            assert torch.equal(derived[0], ~mask) and derived[1] == bool((~mask).all(-1).any())
            ref, _ = kernels.attention(_Attn(3), q, k, v, mask)
            got, _ = kernels.attention(_Attn(3), q, k, v, mask, blocked=derived)
            assert torch.equal(got, ref)
        assert kernels.blocked(None) is None and kernels.blocked(mask.float()) is None
        assert kernels.blocked(mask.expand(4, 9, *mask.shape[2:])) is None  # a mask per head: not `attention`'s
        q, k, v, mask = _inputs(4, 9, 3, 16, 3, 0, 2)
        assert kernels.blocked(mask)[1]  # row 0's first queries may attend to nothing
        got, _ = kernels.attention(_Attn(3), q, k, v, mask, blocked=kernels.blocked(mask))
        assert torch.equal(got[0, :2], torch.zeros_like(got[0, :2]))
    assert kernels.blocked(mask) is None  # outside the switch
