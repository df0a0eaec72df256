"""Equivalences of the decode engine (STYLE.md tier 3) on tiny GPT-2 (absolute) and Llama (rotary) models."""

from __future__ import annotations

import pytest
import torch

from latentcot.decoding import engine as engine_mod
from latentcot.decoding import rows as rows_mod
from latentcot.decoding.engine import PREFILL_WASTE, Engine, prefill_groups
from latentcot.decoding.sampling import GenerationConfig, RowRandom, row_seed
from latentcot.errors import ConfigError, ModelError
from latentcot.models.backbone import Backbone
from latentcot.models.splice import positions_from_mask, splice, tokens, vectors

PROMPTS = ["What is 2+3?", "A longer question about apples, pears and plums. How many fruits?", "Hi"]


def _ids(bb, texts=PROMPTS):
    return [bb.encode(bb.chat_prompt(t)) for t in texts]


def test_inputs_embeds_equal_input_ids(tiny):
    ids = torch.tensor([_ids(tiny)[0]])
    a = tiny.model(input_ids=ids).logits
    b = tiny.model(inputs_embeds=tiny.embed(ids)).logits
    torch.testing.assert_close(a, b)


def test_cached_stepping_equals_full_forward(tiny):
    """Prefill + 5 cached token steps == one forward over the whole (left-padded) sequence."""
    eng = Engine(tiny)
    rows = _ids(tiny)
    extra = torch.tensor([[5, 6, 7, 8, 9]] * len(rows))
    state = eng.prefill(splice([[tokens(r)] for r in rows], tiny.embed, 0))
    for j in range(extra.shape[1]):
        state = eng.step_tokens(state, extra[:, j])
    full = splice([[tokens(r + extra[i].tolist())] for i, r in enumerate(rows)], tiny.embed, 0)
    ref = tiny.model(inputs_embeds=full.inputs_embeds, attention_mask=full.attention_mask, position_ids=full.position_ids).logits[:, -1]
    torch.testing.assert_close(state.logits, ref.float(), atol=1e-4, rtol=1e-4)


def test_latent_and_soft_steps_equal_full_recompute(tiny):
    """Latent steps (last hidden fed back) and soft steps (embedding mixtures) through the cache equal a full
    forward over the spliced sequence of the same vectors."""
    eng = Engine(tiny)
    rows = _ids(tiny)
    state = eng.prefill(splice([[tokens(r)] for r in rows], tiny.embed, 0), want_hidden=True)
    fed = []
    for _ in range(3):  # latent steps
        v = state.hidden.clone()
        fed.append(v)
        state = eng.step(state, v, want_hidden=True)
    for _ in range(2):  # soft steps: softmax mixture over the whole vocabulary
        p = torch.softmax(state.logits, -1)
        v = p.to(tiny.dtype) @ tiny.embedding_matrix
        fed.append(v)
        state = eng.step(state, v, want_hidden=True)
    seq = torch.stack(fed, 1)  # (B, 5, d)
    full = splice([[tokens(r), vectors(seq[i])] for i, r in enumerate(rows)], tiny.embed, 0)
    ref = tiny.model(inputs_embeds=full.inputs_embeds, attention_mask=full.attention_mask, position_ids=full.position_ids).logits[:, -1]
    torch.testing.assert_close(state.logits, ref.float(), atol=1e-4, rtol=1e-4)


def test_left_padded_batch_equals_each_row_alone(tiny):
    eng = Engine(tiny)
    rows = _ids(tiny)
    cfg = GenerationConfig(max_new_tokens=12)
    batch = eng.generate(eng.prefill(splice([[tokens(r)] for r in rows], tiny.embed, 0)), cfg)
    for i, r in enumerate(rows):
        alone = eng.generate(eng.prefill(splice([[tokens(r)]], tiny.embed, 0)), cfg)[0]
        assert batch[i].token_ids == alone.token_ids


def test_prefill_groups_bound_the_padding():
    assert prefill_groups([7, 7, 7]) == [[0, 1, 2]]  # equal lengths: one forward, as before
    lengths = [118, 85, 169, 90, 160, 120, 101, 150]
    groups = prefill_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert len(groups) > 1
    for g in groups:
        width, real = max(lengths[i] for i in g), sum(lengths[i] for i in g)
        assert len(g) * width <= (1 + PREFILL_WASTE) * real
        assert [lengths[i] for i in g] == sorted(lengths[i] for i in g)


def test_split_prefill_is_each_groups_own_forward(tiny):
    """Rows of very different lengths prefill in separate groups: each row's logits, cache and hidden state are
    exactly those of its group fed alone, merged back in row order; the one padded forward differs by rounding."""
    eng = Engine(tiny)
    rows = _ids(tiny, ["Hi", "A longer question about apples, pears and plums. How many fruits? " * 3, "Why?"])
    batch = splice([[tokens(r)] for r in rows], tiny.embed, 0)
    assert len(prefill_groups([len(r) for r in rows])) > 1
    state = eng.prefill(batch, want_hidden=True)
    one = Engine(tiny)
    one._split = False
    padded = one.prefill(batch, want_hidden=True)
    assert torch.equal(state.attention_mask, padded.attention_mask)
    assert torch.equal(state.next_position, padded.next_position) and state.lengths == padded.lengths
    torch.testing.assert_close(state.logits, padded.logits, atol=1e-4, rtol=1e-4)
    for group in prefill_groups([len(r) for r in rows]):
        alone = eng.prefill(splice([[tokens(rows[b])] for b in group], tiny.embed, 0), want_hidden=True)
        for j, b in enumerate(group):
            assert torch.equal(state.logits[b], alone.logits[j]) and torch.equal(state.hidden[b], alone.hidden[j])
            n = len(rows[b])
            for mine, theirs in zip(state.cache.layers, alone.cache.layers):
                assert torch.equal(mine.keys[b, :, -n:], theirs.keys[j, :, -n:])
                assert torch.equal(mine.values[b, :, -n:], theirs.values[j, :, -n:])


@pytest.mark.parametrize("flip", [False, True], ids=["keys row-major", "keys transposed"])
def test_slack_cache_equals_concatenation_through_row_surgery(tiny, monkeypatch, flip):
    """Decode steps into the spare positions of a SlackLayer give bitwise the keys, values and logits that
    concatenation gives, also across dropped and appended rows, and the buffer is not copied at every step. With
    the keys stored transposed (the lean call's default, `kernels.key_request`) the keys and values are the same
    numbers and the logits, keys and values differ only by the attention's summation order (the same tokens are
    fed to both: on a random tiny model such a difference can turn an argmax)."""
    from latentcot.models import fastpath, kernels

    monkeypatch.setattr(kernels, "TRANSPOSED_KEYS", flip)
    flip = flip and fastpath.plan(tiny.model) is not None  # HF's own forward never asks
    rows = _ids(tiny)
    extra = _ids(tiny, ["Three apples and four pears?"])
    runs = {}
    for slack in (True, False):
        eng = Engine(tiny)
        eng._split = False
        monkeypatch.setattr(engine_mod, "use_slack", rows_mod.use_slack if slack else (lambda cache: cache))
        state = eng.prefill(splice([[tokens(r)] for r in rows], tiny.embed, 0))
        logits, moved, feed = [], 0, torch.Generator().manual_seed(7)
        for k in range(rows_mod.SLACK + 6):
            if k == 3:
                state = rows_mod.select_rows(state, [0, 2])
            if k == 5:
                state = rows_mod.append_rows(state, eng.prefill(splice([[tokens(r)] for r in extra], tiny.embed, 0)))
            before = state.cache.layers[0].keys.data_ptr() if k > 6 else None
            ids = torch.randint(3, 90, (state.batch_size,), generator=feed) if flip else state.logits.argmax(-1)
            state = eng.step_tokens(state, ids)
            moved += before is not None and state.cache.layers[0].keys.data_ptr() != before
            logits.append(state.logits)
        runs[slack] = (logits, [(layer.keys, layer.values) for layer in state.cache.layers], moved)
        if slack:
            assert all(type(layer) is rows_mod.SlackLayer for layer in state.cache.layers)
            assert all(kernels.transposed(layer.keys) == flip for layer in state.cache.layers)
    (la, kva, moved), (lb, kvb, _) = runs[True], runs[False]
    if flip:
        for a, b in zip(la + [t for pair in kva for t in pair], lb + [t for pair in kvb for t in pair]):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    else:
        assert all(torch.equal(a, b) for a, b in zip(la, lb))
        assert all(torch.equal(ka, kb) and torch.equal(va, vb) for (ka, va), (kb, vb) in zip(kva, kvb))
    assert moved <= 1  # at most one re-buffering in SLACK - 1 steps with no row surgery


def test_slack_layer_follows_keys_replaced_in_its_buffer():
    """A SlackLayer writes into its buffer only while its keys and values are the views it handed out: keys cropped
    by HF's `crop` (a new view of the same buffer) or replaced by row surgery are taken as they are, so every update
    gives what a concatenating DynamicLayer gives."""
    from transformers.cache_utils import DynamicLayer

    torch.manual_seed(0)
    kv = [(torch.randn(2, 3, n, 4), torch.randn(2, 3, n, 4)) for n in (5, 1, 1, 2, 1, 1)]
    slack, plain = DynamicLayer(), DynamicLayer()
    for i, (k, v) in enumerate(kv):
        if i == 1:
            slack.__class__ = rows_mod.SlackLayer  # as `use_slack` turns a prefilled layer into one
        if i == 3:
            for layer in (slack, plain):
                layer.crop(-2)  # 7 -> 5 positions, a view of the buffer: the next update must not append after 7
        if i == 5:
            for layer in (slack, plain):
                layer.keys, layer.values = layer.keys.flip(0), layer.values.flip(0)  # rows reordered
        a, b = slack.update(k, v), plain.update(k, v)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert slack.keys.shape[2] == 9


def test_greedy_equals_hf_generate(tiny):
    eng = Engine(tiny)
    texts = [tiny.chat_prompt(t) for t in PROMPTS]
    rows = _ids(tiny)
    ours = eng.generate(eng.prefill(splice([[tokens(r)] for r in rows], tiny.embed, tiny.tokenizer.pad_token_id)), GenerationConfig(max_new_tokens=16))
    # no token_type_ids: transformers 4.x tokenizers return them, and generate() rejects or misuses them
    enc = tiny.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False, return_token_type_ids=False)
    ref = tiny.model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tiny.tokenizer.pad_token_id, eos_token_id=tiny.eos_ids)
    for b, o in enumerate(ours):
        theirs = [t for t in ref[b, enc["input_ids"].shape[1] :].tolist() if t not in tiny.eos_ids and t != tiny.tokenizer.pad_token_id]
        assert o.token_ids == theirs


def test_sampling_depends_only_on_seed_and_question(tiny):
    eng = Engine(tiny)
    rows = _ids(tiny)
    cfg = GenerationConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, top_k=50)
    seeds = [row_seed(3, f"q{i}", 0) for i in range(len(rows))]
    batch = eng.generate(eng.prefill(splice([[tokens(r)] for r in rows], tiny.embed, 0)), cfg, RowRandom(seeds))
    # the same question in another batch (reversed order, other neighbours) samples the same tokens
    rev = eng.generate(eng.prefill(splice([[tokens(r)] for r in rows[::-1]], tiny.embed, 0)), cfg, RowRandom(seeds[::-1]))
    for i in range(len(rows)):
        assert batch[i].token_ids == rev[len(rows) - 1 - i].token_ids
    other_seed = eng.generate(eng.prefill(splice([[tokens(rows[1])]], tiny.embed, 0)), cfg, RowRandom([row_seed(4, "q1", 0)]))
    assert other_seed[0].token_ids != batch[1].token_ids or len(batch[1].token_ids) < 3


def test_sampled_tokens_follow_the_plain_streams(tiny):
    """Sampling draws one uniform per row and token; after two steps the rows' draws come from blocks drawn ahead.
    The tokens are those of inverse-CDF sampling with each row's generator drawn one number at a time."""
    eng = Engine(tiny)
    rows = _ids(tiny)
    cfg = GenerationConfig(max_new_tokens=12, temperature=1.0, ignore_eos=True)
    seeds = [row_seed(5, f"q{i}", 0) for i in range(len(rows))]
    rand = RowRandom(seeds)
    outs = eng.generate(eng.prefill(splice([[tokens(r)] for r in rows], tiny.embed, 0)), cfg, rand)
    assert any(s.block is not None for s in rand.streams)  # the loop was served from blocks
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    state = eng.prefill(splice([[tokens(r)] for r in rows], tiny.embed, 0))
    want = [[] for _ in rows]
    for _ in range(12):
        probs = torch.softmax(state.logits.float(), -1)
        u = torch.stack([torch.rand((), generator=g) for g in gens])
        cdf = probs.cumsum(-1)
        ids = (cdf <= u[:, None] * cdf[:, -1:]).sum(-1)
        for b, t in enumerate(ids.tolist()):
            want[b].append(t)
        state = eng.step_tokens(state, ids)
    assert [o.token_ids for o in outs] == want


def test_engine_calls_run_in_inference_mode(tiny):
    eng = Engine(tiny)
    state = eng.prefill(splice([[tokens(r)] for r in _ids(tiny)], tiny.embed, 0))
    assert state.logits.is_inference() and not state.logits.requires_grad
    with torch.enable_grad():  # callers with gradients on get no graph (and no error)
        outs = eng.generate(state, GenerationConfig(max_new_tokens=3))
    assert all(len(o.token_ids) <= 3 for o in outs)


def test_stop_strings_and_max_tokens(tiny):
    eng = Engine(tiny)
    rows = _ids(tiny)
    state = eng.prefill(splice([[tokens(r)] for r in rows], tiny.embed, 0))
    free = eng.generate(state, GenerationConfig(max_new_tokens=20))
    long_row = max(range(len(rows)), key=lambda i: len(free[i].text))
    text = free[long_row].text
    if len(text) < 4:
        pytest.skip("the random model ends too early for a stop string")
    stop = text[2:4]
    state = eng.prefill(splice([[tokens(rows[long_row])]], tiny.embed, 0))
    out = eng.generate(state, GenerationConfig(max_new_tokens=20, stop=[stop]))[0]
    assert out.finish_reason == "stop" and stop not in out.text and text.startswith(out.text)
    state = eng.prefill(splice([[tokens(rows[long_row])]], tiny.embed, 0))
    out = eng.generate(state, GenerationConfig(max_new_tokens=3))[0]
    assert len(out.token_ids) <= 3 and out.decode_steps == len(out.token_ids) + (out.finish_reason == "eos")


def test_prompt_longer_than_context_is_refused(tiny):
    eng = Engine(tiny)
    limit = tiny.max_context
    with pytest.raises(ModelError, match=str(limit)):
        eng.prefill(splice([[tokens([5] * (limit + 1))]], tiny.embed, 0))


@pytest.mark.parametrize(
    "field,value",
    [("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("max_new_tokens", 0), ("num_samples", 0), ("min_p", 1.0)],
)
def test_impossible_generation_settings_are_refused(field, value):
    with pytest.raises(ConfigError, match=field):
        GenerationConfig(**{field: value})


def test_splice_keeps_everything_aligned():
    emb = torch.nn.Embedding(20, 4)
    v = torch.randn(2, 4)
    out = splice([[tokens([1, 2]), vectors(v, name="soft"), tokens([3], labels=True, name="ans")], [tokens([4])]], emb, pad_id=0, padding_side="left")
    assert out.inputs_embeds.shape == (2, 5, 4)
    assert out.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]
    assert out.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 0, 0]]
    assert out.spans[0] == {"soft": (2, 4), "ans": (4, 5)}
    torch.testing.assert_close(out.inputs_embeds[0, 2:4], v)
    assert out.labels[0].tolist() == [-100, -100, -100, -100, 3]
    right = splice([[tokens([1])], [tokens([2, 3])]], emb, 0, padding_side="right")
    assert right.attention_mask.tolist() == [[1, 0], [1, 1]]
    assert positions_from_mask(right.attention_mask).tolist() == [[0, 0], [0, 1]]


def test_added_tokens_get_the_mean_row_and_leave_the_rng_alone(tiny):
    before_rows = tiny.embedding_matrix.detach().clone()
    state = torch.get_rng_state()
    ids = tiny.add_tokens(["<bot>", "<eot>"])
    assert torch.equal(torch.get_rng_state(), state)
    E = tiny.embedding_matrix
    assert E.shape[0] == before_rows.shape[0] + 2 and ids == [before_rows.shape[0], before_rows.shape[0] + 1]
    torch.testing.assert_close(E[ids[0]], before_rows.mean(0))
    assert tiny.add_tokens(["<bot>"]) == ids[:1]  # already there: nothing added


def test_input_embeddings_follow_the_model(tiny):
    """`Backbone.input_embeddings` (HF's lookup once, then the module's path) returns what HF's lookup returns after a
    swap at the same place, a resize, PEFT's wrapping of the embedding and of the model, and for a module outside
    the tree."""
    from peft import LoraConfig, get_peft_model
    from torch import nn

    model = tiny.model
    first = tiny.input_embeddings()
    assert first is model.get_input_embeddings()
    ids = torch.tensor([[1, 2, 3]])
    swapped = nn.Embedding(*first.weight.shape)
    model.set_input_embeddings(swapped)
    assert tiny.input_embeddings() is swapped and torch.equal(tiny.embed(ids), swapped(ids))
    assert tiny.dtype == swapped.weight.dtype and tiny.hidden_size == first.weight.shape[1]
    tiny.add_tokens(["<bot>", "<eot>"])  # a resize (HF may put a new module in the same slot)
    assert tiny.input_embeddings() is model.get_input_embeddings()
    assert tiny.embedding_matrix.shape[0] == first.weight.shape[0] + 2
    slot = next(n for n, m in model.named_modules() if m is model.get_input_embeddings()).split(".")[-1]
    tiny.model = get_peft_model(model, LoraConfig(r=2, target_modules=["lm_head"], modules_to_save=[slot]))
    wrapped = tiny.model.get_input_embeddings()
    assert tiny.input_embeddings() is wrapped and type(wrapped).__name__ == "ModulesToSaveWrapper"
    assert torch.equal(tiny.embed(ids), wrapped(ids))
    outside = [nn.Embedding(4, 3), nn.Embedding(4, 5)]  # in no submodule slot: HF's lookup is asked each time
    plain = Backbone(nn.Module(), tiny.tokenizer, "outside")
    plain.model.get_input_embeddings = lambda: outside[0]
    assert plain.input_embeddings() is outside[0] and plain.hidden_size == 3
    outside.reverse()
    assert plain.input_embeddings() is outside[0] and plain.hidden_size == 5


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_added_tokens_get_the_mean_row_when_the_matrix_has_spare_rows(arch):
    """Like Qwen2.5 (151,936 rows, 151,665 tokens): the new ids fall on untrained padding rows, which must become
    the mean of the tokenizer's own rows (padding rows left out of the mean), without resizing."""
    from latentcot.models.tiny import build_tiny
    from latentcot.models.tokenizers import byte_level_tokenizer

    tok = byte_level_tokenizer()
    n = len(tok)
    model = build_tiny(arch, n + 5)  # llama: untied output rows
    with torch.no_grad():
        model.get_input_embeddings().weight[n:] = 100.0  # spare rows: far from every real row
        if arch == "llama":
            model.get_output_embeddings().weight[n:] = -100.0
    bb = Backbone(model, tok, f"tiny-{arch}-spare")
    real_in = model.get_input_embeddings().weight[:n].detach().clone()
    real_out = model.get_output_embeddings().weight[:n].detach().clone()
    ids = bb.add_tokens(["<bot>", "<eot>"])
    assert ids == [n, n + 1] and bb.embedding_matrix.shape[0] == n + 5  # the spare rows are used, no resize
    for i in ids:
        torch.testing.assert_close(bb.embedding_matrix[i], real_in.mean(0))
        torch.testing.assert_close(model.get_output_embeddings().weight[i], real_out.mean(0))
    assert (bb.embedding_matrix[n + 2 :] == 100.0).all()  # the other spare rows are untouched
