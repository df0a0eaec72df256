"""The engine's lean cached step (`latentcot.models.fastpath`): bitwise HF's forward (logits, last hidden state,
KV cache) on padded batches for every supported family, HF's forward wherever it does not apply, and generations
through the engine identical with it on and off."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from latentcot.decoding import prepack
from latentcot.decoding.engine import Engine
from latentcot.decoding.rows import use_slack
from latentcot.decoding.sampling import GenerationConfig
from latentcot.models import fastpath, kernels
from latentcot.models.backbone import Backbone
from latentcot.models.compat import output_cache
from latentcot.models.loading import load_model
from latentcot.models.splice import splice, tokens

V = 97


def _plan_or_skip(model):
    """The plan; a skip where this transformers' layer code is not what `fastpath` mirrors (HF's forward runs
    there, which the engine test below covers on every version)."""
    import transformers

    p = fastpath.plan(model)
    if p is None:
        pytest.skip(f"transformers {transformers.__version__}: the lean step does not apply, HF's forward runs")
    return p


def _model(family: str, **kw) -> torch.nn.Module:
    torch.manual_seed(3)
    if family == "gpt2":
        cfg = GPT2Config(vocab_size=V, n_embd=48, n_layer=2, n_head=4, n_positions=64, **kw)
        model = GPT2LMHeadModel(cfg)
    elif family == "llama":
        cfg = LlamaConfig(vocab_size=V, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=80, max_position_embeddings=64, **kw)
        model = LlamaForCausalLM(cfg)
    else:
        cfg = Qwen2Config(vocab_size=V, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=80, max_position_embeddings=64, **kw)
        model = Qwen2ForCausalLM(cfg)
    return model.eval()


def _hf(model, embeds, mask, pos, cache, hidden=True, keep=1):
    from latentcot.models.compat import cache_name

    return model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True,
                 output_hidden_states=hidden, logits_to_keep=keep, return_dict=True, **{cache_name(): cache})


def _prefill_inputs(model, lengths=(5, 2, 4)):
    """A left-padded batch of rows of the given lengths: (embeds, mask, positions)."""
    T = max(lengths)
    mask = torch.tensor([[0] * (T - n) + [1] * n for n in lengths])
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    return model.get_input_embeddings()(torch.randint(3, V, (len(lengths), T))), mask, pos


def _padded_start(model):
    """HF's prefill of three rows of different lengths: (cache, mask, next positions)."""
    embeds, mask, pos = _prefill_inputs(model)
    out = _hf(model, embeds, mask, pos, None, hidden=False)
    return output_cache(out), mask, pos[:, -1] + 1


def _one_step(model, p, between=None):
    """HF's forward and the lean step of one new position after HF's padded prefill (`between()` runs between the
    two): (lean output, HF output, the step's (embeds, mask, positions), the lean step's cache)."""
    cache, mask, nxt = _padded_start(model)
    mine = copy.deepcopy(cache)
    embeds = torch.randn(3, 1, 48)
    mask = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], dim=1)
    ref = _hf(model, embeds, mask, nxt[:, None], cache)
    if between is not None:
        between()
    got = fastpath.forward(p, embeds, mask, nxt[:, None], mine, True)
    return got, ref, (embeds, mask, nxt[:, None]), mine


def _same_cache(a, b):
    assert len(a.layers) == len(b.layers)
    for x, y in zip(a.layers, b.layers):
        assert torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_lean_step_is_bitwise_hfs_forward_on_padded_batches(family, packed, monkeypatch):
    """Steps of one and of two positions, with and without hidden states, from a padded cache (a plain cache and
    the engine's slack buffers): logits, last hidden state and every key and value equal HF's with torch.equal.
    (With the keys row-major: keys stored transposed are the next test.)"""
    monkeypatch.setattr(kernels, "TRANSPOSED_KEYS", False)
    model = _model(family)
    if packed:
        prepack.prepare(model, min_size=0)
    p = _plan_or_skip(model)
    assert fastpath.usable(p)
    torch.manual_seed(5)
    with torch.inference_mode(), prepack.prepacked(packed):
        embeds, mask, pos = _prefill_inputs(model)
        ref = _hf(model, embeds, mask, pos, None)
        got = fastpath.forward(p, embeds, mask, pos, None, True)  # the prefill, into a new cache
        assert torch.equal(got.logits, ref.logits) and torch.equal(got.hidden_states[-1], ref.hidden_states[-1])
        cache, mine, nxt = output_cache(ref), output_cache(got), pos[:, -1] + 1
        _same_cache(cache, mine)
        if packed:
            use_slack(cache), use_slack(mine)
        for n, hidden in [(1, True), (1, False), (2, True), (1, True)]:
            embeds = torch.randn(3, n, 48)
            mask = torch.cat([mask, torch.ones(3, n, dtype=mask.dtype)], dim=1)
            pos = nxt[:, None] + torch.arange(n)
            ref = _hf(model, embeds, mask, pos, cache, hidden)
            got = fastpath.forward(p, embeds, mask, pos, mine, hidden)
            assert torch.equal(got.logits, ref.logits)
            assert got.logits.shape == (3, 1, V)
            if hidden:
                assert torch.equal(got.hidden_states[-1], ref.hidden_states[-1])
                assert len(got.hidden_states) == len(ref.hidden_states)
            else:
                assert got.hidden_states is None
            assert output_cache(got) is mine
            _same_cache(cache, mine)
            nxt = nxt + n
    assert mask[1, :3].tolist() == [0, 0, 0]  # the short row kept its padding throughout


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_lean_steps_with_keys_stored_transposed_stay_close_to_hfs_forward(family):
    """In the engine's switch the lean call asks its slack cache for keys stored transposed (`kernels.key_request`)
    and computes attention from them: logits and the cache's keys and values stay within float rounding of HF's
    forward over steps of one and of two positions, the keys stored (d, T) and the values (T, d)."""
    model = _model(family)
    prepack.prepare(model, min_size=0)
    p = _plan_or_skip(model)
    torch.manual_seed(6)
    with torch.inference_mode(), prepack.prepacked(True):
        embeds, mask, pos = _prefill_inputs(model)
        cache = output_cache(_hf(model, embeds, mask, pos, None))
        mine = use_slack(output_cache(fastpath.forward(p, embeds, mask, pos, None, True)))
        use_slack(cache)
        nxt = pos[:, -1] + 1
        for n in (1, 2, 1):
            embeds = torch.randn(3, n, 48)
            mask = torch.cat([mask, torch.ones(3, n, dtype=mask.dtype)], dim=1)
            pos = nxt[:, None] + torch.arange(n)
            with prepack.prepacked(False):  # HF's forward with HF's SDPA function, keys row-major
                ref = _hf(model, embeds, mask, pos, cache)
            got = fastpath.forward(p, embeds, mask, pos, mine, False)
            torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=1e-4)
            for x, y in zip(cache.layers, mine.layers):
                assert kernels.transposed(y.keys) and not kernels.transposed(x.keys)
                assert not kernels.transposed(y.values)
                torch.testing.assert_close(y.keys, x.keys, atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(y.values, x.values, atol=1e-5, rtol=1e-4)
            nxt = nxt + n


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_lean_prefill_of_rows_without_padding(family):
    """Rows of one length (HF's mask is then no tensor at all, the causal flag of SDPA instead): bitwise equal."""
    model = _model(family)
    p = _plan_or_skip(model)
    with torch.inference_mode():
        embeds, mask, pos = _prefill_inputs(model, (4, 4, 4))
        ref, got = _hf(model, embeds, mask, pos, None, keep=0), fastpath.forward(p, embeds, mask, pos, None, True, 0)
        assert got.logits.shape == (3, 4, V)  # logits_to_keep=0: every position
        assert torch.equal(got.logits, ref.logits) and torch.equal(got.hidden_states[-1], ref.hidden_states[-1])
        _same_cache(output_cache(ref), output_cache(got))


@pytest.mark.parametrize(("family", "kw"), [
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}),
    ("gpt2", {"reorder_and_upcast_attn": True}),
    ("gpt2", {"attn_implementation": "eager"}),
    ("llama", {"attn_implementation": "eager"}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 0}),
])
def test_plan_declines_what_it_does_not_mirror(family, kw):
    assert fastpath.plan(_model(family, **kw)) is None


def test_a_hook_or_training_mode_sends_the_step_to_hfs_forward():
    model = _model("llama")
    p = _plan_or_skip(model)
    assert fastpath.usable(p)
    handle = model.model.layers[1].register_forward_hook(lambda *a: None)
    assert not fastpath.usable(p)
    handle.remove()
    assert fastpath.usable(p)
    model.train()
    assert not fastpath.usable(p)
    model.eval()
    assert fastpath.usable(p) and not fastpath.usable(None)


def test_hooks_the_lean_step_meets_still_run_and_global_hooks_send_it_to_hf():
    """A hook on a module the lean step calls (it calls that module's forward directly only when the module has no
    hooks) fires once per call, with the same output as HF's forward; a global module hook sends the step to HF's
    forward, which runs it on every module."""
    model = _model("llama")
    p = _plan_or_skip(model)
    seen = []
    handle = model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    assert fastpath.usable(p)
    with torch.inference_mode():
        got, ref, _, _ = _one_step(model, p, between=seen.clear)
    handle.remove()
    assert seen == [torch.Size([3, 1, 48])] and torch.equal(got.logits, ref.logits)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert not fastpath.usable(p)
    finally:
        handle.remove()
    assert fastpath.usable(p)


def test_lora_model_steps_through_its_adapters():
    """A PEFT LoRA model: the plan finds the base model and calls the wrapped layers, so the adapters' delta is in
    the step (bitwise HF's forward through PEFT, and different from the base model's)."""
    peft = pytest.importorskip("peft")
    model = _model("llama")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, prm in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(prm, std=0.5)  # a nonzero adapter
    lora.eval()
    p = _plan_or_skip(lora)
    assert fastpath.usable(p)
    with torch.inference_mode():
        got, ref, step, mine = _one_step(lora, p)
        assert torch.equal(got.logits, ref.logits)
        with lora.disable_adapter():
            base = _hf(lora, *step, copy.deepcopy(mine))
        assert not torch.allclose(got.logits, base.logits)


@pytest.mark.parametrize("alias", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("flip", [False, True], ids=["keys row-major", "keys transposed"])
def test_engine_generations_are_identical_with_the_lean_step_on_and_off(alias, flip, monkeypatch):
    """Greedy and sampled generations, and the states' logits, through `Engine` with `fast` on and off (the lean
    step ran in the `fast` arm wherever this transformers has a plan for the model): the same tokens, and the same
    logits with torch.equal while the lean call keeps keys row-major (`kernels.TRANSPOSED_KEYS` off), within float
    rounding with its default, keys stored transposed (another summation order in the attention's products)."""
    monkeypatch.setattr(kernels, "TRANSPOSED_KEYS", flip)
    bb = Backbone(*load_model(alias), alias)
    calls, real = [], fastpath.forward
    monkeypatch.setattr(fastpath, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    eng = Engine(bb)
    rows = [[tokens(bb.tokenizer.encode(t))] for t in ["What is 2+3?", "Hi", "A longer question about plums."]]
    from latentcot.decoding.sampling import RowRandom

    outs = {}
    for fast in (False, True):
        eng.fast = fast
        batch = splice(rows, bb.embed, bb.tokenizer.pad_token_id or 0, "left")
        greedy = eng.generate(eng.prefill(batch), GenerationConfig(max_new_tokens=12, ignore_eos=True), None)
        state = eng.prefill(batch)
        rand = RowRandom([1, 2, 3])
        sampled = eng.generate(state, GenerationConfig(max_new_tokens=12, temperature=0.8, ignore_eos=True), rand)
        stepped = eng.step_tokens(eng.prefill(batch), torch.tensor([5, 6, 7]))
        outs[fast] = ([o.token_ids for o in greedy], [o.token_ids for o in sampled], stepped.logits)
        assert bool(calls) == (fast and fastpath.plan(bb.model) is not None)
    assert outs[True][0] == outs[False][0] and outs[True][1] == outs[False][1]
    if flip:
        torch.testing.assert_close(outs[True][2], outs[False][2], atol=1e-5, rtol=1e-4)
    else:
        assert torch.equal(outs[True][2], outs[False][2])


def test_the_lean_call_applies_on_the_transformers_this_project_installs():
    """On transformers 5.24 and later (what `make test` installs) every supported family gets a plan, so the bitwise
    tests above run instead of skipping; older releases (4.56 in `make test-oldest`) keep HF's forward."""
    import transformers
    from packaging.version import Version

    plans = [fastpath.plan(_model(f)) for f in ("gpt2", "llama", "qwen2")]
    if Version(transformers.__version__) >= Version("5.24"):
        assert all(p is not None for p in plans)
        assert plans[1].mlp and plans[2].mlp  # Llama's and Qwen2's MLPs may run with gate/up fused
        assert plans[1].joint and plans[2].joint  # and their fused q/k/v rotate q and k at once
    elif Version(transformers.__version__) < Version("5"):
        assert all(p is None for p in plans)


def test_joint_rotation_is_hfs_rotary_embedding_bitwise():
    """`_rotate` over q and k heads side by side (strided views of one fused product, as the lean layer has them)
    gives HF's apply_rotary_pos_emb values with torch.equal, for the positions and shapes of a prefill and a step."""
    from transformers.models.llama import modeling_llama

    torch.manual_seed(3)
    for B, n, nq, nk, D in [(3, 5, 4, 2, 8), (8, 1, 9, 3, 64), (2, 7, 6, 6, 16)]:
        y = torch.randn(B, n, (nq + 2 * nk) * D) * 4
        heads = y.view(B, n, -1, D)
        cos, sin = torch.randn(B, n, D), torch.randn(B, n, D)
        ref_q, ref_k = modeling_llama.apply_rotary_pos_emb(
            heads[:, :, :nq].transpose(1, 2), heads[:, :, nq : nq + nk].transpose(1, 2), cos, sin)
        signed = torch.cat((-sin[..., : D // 2], sin[..., D // 2 :]), -1)
        qk = fastpath._rotate(heads[:, :, : nq + nk], cos.unsqueeze(2), signed.unsqueeze(2))
        assert torch.equal(qk[:, :, :nq].transpose(1, 2), ref_q) and torch.equal(qk[:, :, nq:].transpose(1, 2), ref_k)


def test_joint_rotation_only_for_the_rotary_code_it_mirrors():
    """A modeling module whose rotation differs in any statement (or is wrapped) keeps HF's own function."""
    import types

    from transformers.models.llama import modeling_llama

    assert fastpath._rotary_matches(modeling_llama.apply_rotary_pos_emb, modeling_llama)

    def rotate_half(x):
        x1 = x[..., : x.shape[-1] // 2]
        x2 = x[..., x.shape[-1] // 2 :]
        return torch.cat((x2, -x1), dim=-1)  # the other sign convention

    other = types.SimpleNamespace(rotate_half=rotate_half)
    assert not fastpath._rotary_matches(modeling_llama.apply_rotary_pos_emb, other)

    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        cos = cos.unsqueeze(unsqueeze_dim)
        sin = sin.unsqueeze(unsqueeze_dim)
        q_embed = (q * cos) + (rotate_half(q) * sin)
        k_embed = (k * cos) - (rotate_half(k) * sin)
        return q_embed, k_embed

    assert not fastpath._rotary_matches(apply_rotary_pos_emb, modeling_llama)
    wrapped = functools.wraps(modeling_llama.apply_rotary_pos_emb)(lambda *a: a)
    assert not fastpath._rotary_matches(wrapped, modeling_llama)
    assert not fastpath._rotary_matches(None, modeling_llama)
