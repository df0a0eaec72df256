"""oneDNN-packed linear layers in CPU decoding (`latentcot.decoding.prepack`): the same products as `F.linear` up
to summation order, only where asked (the engine's no-grad CPU calls), following in-place weight updates, and
greedy decoding through them equal to HF `generate()`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentcot.decoding import prepack
from latentcot.decoding.engine import Engine
from latentcot.decoding.prepack import FusedTanhGELU, PackedLinear, prepacked, prepare, unpack
from latentcot.decoding.sampling import GenerationConfig
from latentcot.models.splice import splice, tokens

pytestmark = pytest.mark.skipif(not prepack.available(), reason="this torch build has no oneDNN packed linear")

PROMPTS = ["What is 2+3?", "A longer question about apples, pears and plums. How many fruits?", "Hi"]


def test_packed_linear_equals_linear_inside_and_is_linear_outside():
    torch.manual_seed(0)
    lin = nn.Linear(96, 80)
    x = torch.randn(3, 5, 96)
    ref = F.linear(x, lin.weight, lin.bias)
    keys = list(lin.state_dict())
    assert prepare(lin, min_size=0) == 1 and type(lin) is PackedLinear
    assert list(lin.state_dict()) == keys  # same parameters, nothing packed is saved
    with torch.no_grad():
        assert torch.equal(lin(x), ref)  # outside the context: plain F.linear
        with prepacked():
            y = lin(x)
            assert "_packed" in lin.__dict__
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    with prepacked():  # gradients on: the plain product, with its graph
        z = lin(x)
    assert torch.equal(z, ref) and z.requires_grad
    with torch.no_grad(), prepacked(False):
        assert torch.equal(lin(x), ref)
    unpack(lin)
    assert type(lin) is nn.Linear and "_packed" not in lin.__dict__


def test_fused_tanh_gelu_is_gpt2s_gelu_new_inside_and_hf_outside():
    """gelu_new by its formula (computed here in float64) = the fused kernel inside the context; outside it, and
    with gradients, the module is HF's own forward bitwise."""
    from transformers.activations import NewGELUActivation

    torch.manual_seed(2)
    act = nn.Sequential(NewGELUActivation())
    x = torch.randn(4, 7, 96) * 3
    xd = x.double()
    formula = (0.5 * xd * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (xd + 0.044715 * xd**3)))).float()
    hf = act(x)
    assert prepare(act) == 0 and type(act[0]) is FusedTanhGELU
    with torch.no_grad():
        assert torch.equal(act(x), hf)  # outside the context
        with prepacked():
            fused = act(x)
    with prepacked():
        assert torch.equal(act(x), hf)  # gradients on: HF's forward
    torch.testing.assert_close(fused, formula, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(hf, formula, atol=1e-6, rtol=1e-6)
    unpack(act)
    assert type(act[0]) is NewGELUActivation


def test_small_layers_stay_plain():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(1024, 512))
    assert prepare(model) == 1
    assert type(model[0]) is nn.Linear and type(model[1]) is PackedLinear


def test_small_layer_is_packed_only_for_a_call_with_enough_work(monkeypatch):
    """A layer below PACK_MIN keeps the plain product (bitwise, nothing packed) for a few rows and is packed for a
    call of rows x entries >= PACK_WORK (a prefill); below PACK_FLOOR it is never converted."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(64, 128), nn.Linear(16, 8))
    assert prepare(model) == 1 and type(model[0]) is PackedLinear and type(model[1]) is nn.Linear
    lin = model[0]
    few = torch.randn(2, 3, 64)
    rows = prepack.PACK_WORK // lin.weight.numel()  # the fewest rows that reach PACK_WORK
    many = torch.randn(rows, 64)
    with torch.no_grad(), prepacked():
        assert torch.equal(lin(few), F.linear(few, lin.weight, lin.bias))
        assert "_packed" not in lin.__dict__
        assert torch.equal(lin(many[:-1]), F.linear(many[:-1], lin.weight, lin.bias))  # one row short
        assert "_packed" not in lin.__dict__
        y = lin(many)
        assert "_packed" in lin.__dict__
    torch.testing.assert_close(y, F.linear(many, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)


def test_packed_conv1d_is_gpt2s_conv1d_inside_and_hf_outside():
    """GPT-2's Conv1D (weight stored in x out) through the packed product: equal to HF's addmm up to summation
    order inside the context, HF's own forward bitwise outside it and with gradients; unpack restores it."""
    from transformers.pytorch_utils import Conv1D

    from latentcot.decoding.prepack import PackedConv1D

    torch.manual_seed(4)
    conv = Conv1D(96, 80)  # nf=96 outputs, nx=80 inputs
    nn.init.normal_(conv.bias)
    x = torch.randn(4, 7, 80)
    ref = conv(x)
    keys = list(conv.state_dict())
    assert prepare(conv, min_size=0) == 1 and type(conv) is PackedConv1D
    assert list(conv.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(conv(x), ref)
        with prepacked():
            y = conv(x)
            assert "_packed" in conv.__dict__
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    formula = x.double() @ conv.weight.double() + conv.bias.double()
    torch.testing.assert_close(y.double(), formula, atol=1e-5, rtol=1e-5)
    with prepacked():
        z = conv(x)
    assert torch.equal(z, ref) and z.requires_grad
    unpack(conv)
    assert type(conv) is Conv1D and "_packed" not in conv.__dict__


def test_gpt2_mlp_product_and_gelu_in_one_call_equal_hf():
    """GPT-2's MLP with c_fc and its gelu_new fused in one oneDNN call: equal to HF's MLP computed in float64 (the
    formula) to float rounding for a call with enough work; a small call and any call outside the context take
    HF's path, the latter bitwise."""
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

    torch.manual_seed(5)
    mlp = GPT2MLP(512, GPT2Config(n_embd=128, activation_function="gelu_new")).eval()
    for conv in (mlp.c_fc, mlp.c_proj):
        nn.init.normal_(conv.bias, std=0.1)
    x = torch.randn(100, 16, 128)
    with torch.no_grad():
        hf = mlp(x)
        d = {k: v.double() for k, v in mlp.state_dict().items()}
        h = x.double() @ d["c_fc.weight"] + d["c_fc.bias"]
        h = 0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h**3)))
        formula = (h @ d["c_proj.weight"] + d["c_proj.bias"]).float()
    assert prepare(mlp) == 2 and type(mlp).__name__ == "PackedGPT2MLP"
    with torch.no_grad():
        assert torch.equal(mlp(x), hf)  # outside the context
        with prepacked():
            fused = mlp(x)
            assert "_packed" in mlp.c_fc.__dict__
            small = mlp(x[:1, :2])
    torch.testing.assert_close(fused, formula, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hf, formula, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(small, formula[:1, :2], atol=1e-5, rtol=1e-5)
    seen = []
    for module in (mlp.c_fc, mlp.act):  # a hooked c_fc or activation: no fused call, so both hooks run
        handle = module.register_forward_hook(lambda m, a, out: seen.append(type(m).__name__))
        with torch.no_grad(), prepacked():
            torch.testing.assert_close(mlp(x), formula, atol=1e-5, rtol=1e-5)
        handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, out: seen.append(type(m).__name__))
    with torch.no_grad(), prepacked():  # a global hook: every submodule's call, c_fc's and the activation's too
        torch.testing.assert_close(mlp(x), formula, atol=1e-5, rtol=1e-5)
    handle.remove()
    assert seen[:2] == ["PackedConv1D", "FusedTanhGELU"] and {"PackedConv1D", "FusedTanhGELU"} <= set(seen[2:])
    unpack(mlp)
    assert type(mlp) is GPT2MLP


def test_packed_copy_follows_in_place_weight_updates():
    torch.manual_seed(1)
    lin = nn.Linear(64, 48, bias=False)
    prepare(lin, min_size=0)
    x = torch.randn(4, 64)
    with torch.no_grad(), prepacked():
        before = lin(x)
        lin.weight.mul_(-2.0)  # what an optimizer step does: same storage, a new version
        doubled = lin(x)
        lin.load_state_dict({"weight": torch.randn(48, 64)})  # copied into the same storage
        loaded = lin(x)
    with torch.no_grad():
        torch.testing.assert_close(doubled, -2.0 * before, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded, F.linear(x, lin.weight), atol=1e-5, rtol=1e-5)


def test_engine_decodes_through_packed_layers_as_hf_generate(tiny, monkeypatch):
    """With every linear layer packed (threshold 0), the engine's greedy tokens equal HF generate() and its
    logits equal the unpacked engine's up to summation order; cpu_prepack=False leaves the model unconverted."""
    monkeypatch.setattr(prepack, "PACK_MIN", 0)
    rows = [tiny.encode(tiny.chat_prompt(t)) for t in PROMPTS]
    batch = splice([[tokens(r)] for r in rows], tiny.embed, tiny.tokenizer.pad_token_id)
    tiny.cpu_prepack = False
    plain = Engine(tiny).prefill(batch)
    assert not any(type(m) is PackedLinear for m in tiny.model.modules())
    tiny.cpu_prepack = True
    eng = Engine(tiny)
    state = eng.prefill(batch)
    assert any(type(m) is PackedLinear for m in tiny.model.modules())
    if tiny.name == "tiny-gpt2":  # its gelu_new runs fused as well
        assert any(type(m) is FusedTanhGELU for m in tiny.model.modules())
    torch.testing.assert_close(state.logits, plain.logits, atol=1e-4, rtol=1e-4)
    ours = eng.generate(state, GenerationConfig(max_new_tokens=16))
    assert any("_packed" in m.__dict__ for m in tiny.model.modules())  # the packed path ran
    enc = tiny.tokenizer([tiny.chat_prompt(t) for t in PROMPTS], return_tensors="pt", padding=True,
                         add_special_tokens=False, return_token_type_ids=False)
    ref = tiny.model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tiny.tokenizer.pad_token_id,
                              eos_token_id=tiny.eos_ids)
    for b, o in enumerate(ours):
        theirs = [t for t in ref[b, enc["input_ids"].shape[1]:].tolist()
                  if t not in tiny.eos_ids and t != tiny.tokenizer.pad_token_id]
        assert o.token_ids == theirs


def test_run_setting_reaches_the_backbone():
    from latentcot.pipeline import load_backbone, resolve

    res = resolve({"model": "tiny-llama", "cpu_prepack": "false"})
    assert res.run.cpu_prepack is False
    assert load_backbone("tiny-llama", res.run).cpu_prepack is False
    assert load_backbone("tiny-llama", resolve({"model": "tiny-llama"}).run).cpu_prepack is True


def test_fused_product_is_each_layers_packed_product_bitwise():
    """q/k/v-like layers (with biases) read the same input: one packed product over their stacked weights, split,
    equals each layer's own packed call with torch.equal, at a decode's few rows and a prefill's many; it is made
    again after an in-place weight update, and declines (None) where the layers' own calls must run."""
    from latentcot.decoding.prepack import fused_whole

    def fused_product(owner, parts, x):  # the fused product split back into one output per layer
        y = fused_whole(owner, parts, x)
        return None if y is None else y.split([m.weight.shape[0] for m in parts], dim=-1)

    torch.manual_seed(6)
    owner = nn.Module()
    owner.q, owner.k, owner.v = nn.Linear(96, 96), nn.Linear(96, 32), nn.Linear(96, 32)
    parts = (owner.q, owner.k, owner.v)
    assert prepare(owner, min_size=0) == 3
    with torch.no_grad(), prepacked():
        for rows in (1, 3, 8, 200):
            x = torch.randn(rows, 1, 96)
            got = fused_product(owner, parts, x)
            assert [t.shape[-1] for t in got] == [96, 32, 32]
            assert all(torch.equal(a, m(x)) for a, m in zip(got, parts))
        owner.k.weight.mul_(2)  # an optimizer step: the stacked copy follows
        assert torch.equal(fused_product(owner, parts, x)[1], owner.k(x))
        handle = owner.v.register_forward_hook(lambda *a: None)
        assert fused_product(owner, parts, x) is None  # a hooked layer: its own call runs
        handle.remove()
        plain = nn.Linear(96, 32)
        assert fused_product(owner, (owner.q, plain), x) is None  # not a PackedLinear (e.g. a LoRA wrapper)
        assert fused_product(owner, (owner.q, owner.k), x.double()) is None
    with prepacked():
        assert fused_product(owner, parts, x) is None  # gradients on
    with torch.no_grad():
        assert fused_product(owner, parts, x) is None  # outside the context
    unpack(owner)
    assert "_fused_packed" not in owner.__dict__
