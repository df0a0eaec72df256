"""The engine's lean model call: the model's own modules and kernels in the model's own order, without the Python
that HF wraps around each call.

On a tiny model a decode step is mostly Python, not arithmetic: the demo's 4-layer GPT-2 at 32 rows spent about
half of a cached step in HF's per-call machinery (keyword deprecation and output-capturing wrappers, config
attribute lookups, the attention-interface lookup, module calls nested four deep) and the rest in its ~40 kernels.
`forward` runs a call that fills a KV cache (the prefill and every decode, latent and forced step after it) of a
supported model as a plain loop over its layers. It calls the same submodules (so LoRA wrappers, the packed linear
layers of `decoding.prepack` and the fused GPT-2 MLP apply as in HF's forward), HF's own mask function, rotary
embedding, `apply_rotary_pos_emb` and SDPA attention function, with the same arguments in the same order, so every
kernel sees the same inputs: logits, the last hidden state and the cache are bitwise HF's
(`tests/test_fastpath.py` compares them with `torch.equal` on padded batches, for every supported family). The one
exception is a choice of kernel, not of function: inside the engine's CPU switch (`decoding.prepack.prepacked`) a
small attention call runs as `kernels.attention`, HF's SDPA function up to float rounding (`kernels.fits`), and a
call with the engine's decode cache asks it to store keys transposed, which that function then takes at any size
and multiplies faster (`kernels.key_request`; the same keys, another summation order).

Inside that switch, a Llama/Qwen2 layer also computes its q/k/v projections as one packed product (and the MLP's
gate/up as another, `prepack.fused_whole`), rotates q and k at once from it where the model's rotary code is HF's
(`_rotate`, `_ROTARY`: the same products and sums, bitwise), and the attention mask's complement and its empty rows
are derived once per call for all layers (`kernels.blocked`). Each saves kernels, not arithmetic:
`python bench/lean_step.py` times them step by step.

Supported: `GPT2LMHeadModel`, `LlamaForCausalLM` and `Qwen2ForCausalLM` with SDPA attention, in eval mode, with
the plain options of their configs (no cross-attention, GPT-2's attention scaling by the head size only, Qwen2
without sliding windows), on transformers whose layer code matches what this module mirrors (checked once per
model by `plan`; anything else, or a model with forward hooks, is HF's own forward). `run.cpu_prepack=false` does
not turn this off: it changes no value; `Engine.fast = False` does (benchmarks compare the two).
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from dataclasses import dataclass
from typing import Any

import torch

from latentcot.decoding.rows import slack_cache
from latentcot.models import kernels
from latentcot.models.compat import cache_name


@dataclass
class _Plan:
    family: str  # "gpt2" or "llama"
    base: torch.nn.Module  # the decoder stack (GPT2Model / LlamaModel)
    head: torch.nn.Module  # lm_head
    layers: list[torch.nn.Module]
    attend: Any  # HF's SDPA attention function
    rotary: Any  # apply_rotary_pos_emb of the model's modeling module (llama family)
    mask: Any  # HF's create_causal_mask
    mask_kw: dict[str, str]  # its parameter names in this transformers
    skipped: list[torch.nn.Module]  # the modules whose own forward the lean step does not call
    fuse: Any = None  # `decoding.prepack.fused_whole` (llama family): q/k/v and, where `mlp` is set, gate/up
    mlp: bool = False  # the MLP's forward is down(act(gate(x)) * up(x)), so it may run with gate/up fused
    joint: bool = False  # `rotary` is HF's rotation of q and k (`_rotary_matches`): a fused q/k/v rotates at once


_SUPPORTED = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "llama"}


def plan(model: torch.nn.Module) -> _Plan | None:
    """The lean step's plan for `model` (made once and kept on the model), or None where HF's forward must run."""
    cached = model.__dict__.get("_latentcot_fastpath", False)
    if cached is not False:
        return cached
    made = _make_plan(model)
    model.__dict__["_latentcot_fastpath"] = made
    return made


def _make_plan(model: torch.nn.Module) -> _Plan | None:
    core = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: the wrapped model
    family = _SUPPORTED.get(type(core).__name__)
    cfg = getattr(core, "config", None)
    if family is None or cfg is None or getattr(cfg, "_attn_implementation", None) != "sdpa":
        return None
    if getattr(core, "hf_device_map", None) or getattr(cfg, "is_encoder_decoder", False):
        return None
    try:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import create_causal_mask
    except ImportError:
        return None
    params = inspect.signature(create_causal_mask).parameters
    if "cache_position" in params and params["cache_position"].default is inspect.Parameter.empty:
        return None  # an older mask API that wants cache positions: HF's forward
    mask_kw = {"embeds": "inputs_embeds" if "inputs_embeds" in params else "input_embeds",
               "cache": "cache" if "cache" in params else "past_key_values"}
    if not {mask_kw["embeds"], mask_kw["cache"], "config", "attention_mask", "position_ids"} <= set(params):
        return None
    modeling = sys.modules[type(core).__module__]
    if family == "gpt2":
        base, layers = core.transformer, list(core.transformer.h)
        if (cfg.add_cross_attention or cfg.scale_attn_by_inverse_layer_idx or cfg.reorder_and_upcast_attn
                or not cfg.scale_attn_weights or not all(hasattr(b.attn, "scaling") for b in layers)):
            return None
        rotary = None
    else:
        base = core.model
        layers = list(base.layers[: cfg.num_hidden_layers])
        if getattr(cfg, "use_sliding_window", False) or getattr(cfg, "pretraining_tp", 1) != 1:
            return None
        if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
            return None
        rotary = getattr(modeling, "apply_rotary_pos_emb", None)
        if rotary is None or not hasattr(base, "rotary_emb"):
            return None
    attns = [b.attn if family == "gpt2" else b.self_attn for b in layers]
    if not _code_matches(family, [type(core), type(base), type(layers[0]), type(attns[0])]):
        return None
    made = _Plan(family, base, core.lm_head, layers, sdpa_attention_forward, rotary, create_causal_mask, mask_kw,
                 [model, core, base, *layers, *attns])
    if family == "llama":
        from latentcot.decoding.prepack import fused_whole  # (prepack imports this module)

        made.fuse = fused_whole
        made.mlp = all(_mlp_matches(type(b.mlp)) for b in layers)
        made.joint = _rotary_matches(rotary, modeling)
    return made


_MLP = "self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))"


def _mlp_matches(cls: type) -> bool:
    """Whether an MLP class's forward is `_MLP` and nothing else (Llama's and Qwen2's)."""
    try:
        lines = [ln.strip() for ln in inspect.getsource(cls.forward).splitlines()]
    except (OSError, TypeError):
        return False
    body = [ln for ln in lines[1:] if ln and not ln.startswith("#")]
    return body in ([f"down_proj = {_MLP}", "return down_proj"], [f"return {_MLP}"])


# HF's rotary embedding of the llama family (Llama's and Qwen2's `apply_rotary_pos_emb` and `rotate_half`), statement
# by statement (docstrings aside, as `ast.unparse` writes them)
_ROTARY = (["cos = cos.unsqueeze(unsqueeze_dim)", "sin = sin.unsqueeze(unsqueeze_dim)",
            "q_embed = q * cos + rotate_half(q) * sin", "k_embed = k * cos + rotate_half(k) * sin",
            "return (q_embed, k_embed)"],
           ["x1 = x[..., :x.shape[-1] // 2]", "x2 = x[..., x.shape[-1] // 2:]", "return torch.cat((-x2, x1), dim=-1)"])


def _rotary_matches(rotary: Any, modeling: Any) -> bool:
    """Whether `rotary` (the modeling module's `apply_rotary_pos_emb`, not wrapped) and the module's `rotate_half`
    compute exactly `_ROTARY`: then `_rotate` computes the same values for q and k heads side by side."""
    half = getattr(modeling, "rotate_half", None)
    if rotary is None or half is None or inspect.unwrap(rotary) is not rotary or inspect.unwrap(half) is not half:
        return False
    try:
        bodies = [ast.parse(textwrap.dedent(inspect.getsource(f))).body[0].body for f in (rotary, half)]
    except (OSError, TypeError, SyntaxError, AttributeError):
        return False
    code = [[ast.unparse(st) for st in body if not (isinstance(st, ast.Expr) and isinstance(st.value, ast.Constant))]
            for body in bodies]
    return code == [list(c) for c in _ROTARY]


def usable(p: _Plan | None) -> bool:
    """Whether the lean step may run now: a plan, eval mode, no global module hooks, no jit tracing, and no hook on a
    module whose forward it skips (HF's own output-capturing hooks aside: they record only inside HF's forward)."""
    if p is None or p.base.training or torch._C._get_tracing_state() or global_hooks():
        return False
    for m in p.skipped:
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            if hooks and any("output_capturing_hook" not in getattr(h, "__qualname__", "") for h in hooks.values()):
                return False
    return True


def global_hooks() -> bool:
    """Whether global module hooks are registered (nn.Module then runs them on every module's call)."""
    mod = torch.nn.modules.module
    return bool(mod._global_forward_hooks or mod._global_forward_pre_hooks or mod._global_backward_hooks
                or mod._global_backward_pre_hooks)


def own_hooks(m: torch.nn.Module) -> bool:
    """Whether module m has hooks of its own. With neither these nor `global_hooks`, calling m is calling its
    forward: nn.Module's own fast path checks exactly these."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _call(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """m(x): the module's forward itself when it has no hooks (`usable` has checked there are no global ones), so
    the step skips nn.Module's call machinery; through its hooks otherwise."""
    return m(x) if own_hooks(m) else m.forward(x)


# What each mirrored forward (the LM, its decoder stack, a layer, its attention) must contain, in this order (a
# transformers release that changes this code makes `plan` decline the model rather than compute something else).
_SHAPES = {
    "gpt2": (["self.lm_head(hidden_states)"],
             ["self.wpe(position_ids)", "inputs_embeds + position_embeds", "create_causal_mask", "self.ln_f("],
             ["ln_1", "self.attn", "attn_output + residual", "ln_2", "self.mlp", "residual + feed_forward"],
             ["self.c_attn(hidden_states).split", "view(shape_kv).transpose(1, 2)", "view(shape_q).transpose(1, 2)",
              ".update(key_states, value_states, self.layer_idx", "scaling=self.scaling",
              "reshape(*attn_output.shape[:-2], -1).contiguous()", "self.c_proj(attn_output)"]),
    "llama": (["self.lm_head(hidden_states)"],
              ["create_causal_mask", "self.rotary_emb(hidden_states", "self.norm(hidden_states)"],
              ["input_layernorm", "self.self_attn", "residual + hidden_states", "post_attention_layernorm",
               "self.mlp", "residual + hidden_states"],
              ["self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)",
               "self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)",
               "self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)",
               "apply_rotary_pos_emb(query_states, key_states, cos, sin)",
               ".update(key_states, value_states, self.layer_idx", "scaling=self.scaling",
               "reshape(*input_shape, -1).contiguous()", "self.o_proj(attn_output)"]),
}


def _code_matches(family: str, classes: list[type]) -> bool:
    try:
        sources = [inspect.getsource(cls.forward) for cls in classes]
    except (OSError, TypeError):
        return False
    for src, parts in zip(sources, _SHAPES[family]):
        at = 0
        for part in parts:
            at = src.find(part, at)
            if at < 0:
                return False
    return True


class _Output:
    """What the engine reads from a model call: logits, hidden_states (the last is the final norm's output) and
    the cache under the name this transformers uses (`compat.output_cache`)."""

    def __init__(self, logits: torch.Tensor, hidden: tuple[torch.Tensor, ...] | None, cache: object) -> None:
        self.logits, self.hidden_states = logits, hidden
        setattr(self, cache_name(), cache)


def forward(p: _Plan, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: object | None,
            want_hidden: bool, logits_to_keep: int = 1) -> _Output:
    """One call with the KV cache (embeds (B, n, d) after the cache's positions; `cache` None: a prefill into a new
    cache, made as HF's forward makes it) as HF's forward computes it."""
    if cache is None:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(config=p.base.config)
    causal = _mask(p, embeds, mask, positions, cache)
    # the mask, what `kernels.attention` derives from it once per call, and the key layout asked of the cache
    attend = (causal, kernels.blocked(causal), kernels.key_request(embeds) if slack_cache(cache) else None)
    hidden: list[torch.Tensor] = []
    if p.family == "gpt2":
        h = embeds + _call(p.base.wpe, positions).to(embeds.device)
        for layer in p.layers:
            hidden.append(h)
            h = _gpt2_layer(p, layer, h, attend, cache)
        h = _call(p.base.ln_f, h)
    else:
        h = embeds
        cos, sin = p.base.rotary_emb(h, position_ids=positions)
        half = sin.shape[-1] // 2  # for `_rotate`: (B, n, 1, D), sin with its first half negated
        rope = (cos, sin, cos.unsqueeze(2), torch.cat((-sin[..., :half], sin[..., half:]), -1).unsqueeze(2))
        for layer in p.layers:
            hidden.append(h)
            h = _llama_layer(p, layer, h, attend, cache, rope)
        h = _call(p.base.norm, h)
    hidden.append(h)
    logits = _call(p.head, h[:, -logits_to_keep:, :] if logits_to_keep else h)
    return _Output(logits, tuple(hidden) if want_hidden else None, cache)


def _mask(p: _Plan, embeds, mask, positions, cache):
    kw = {p.mask_kw["embeds"]: embeds, p.mask_kw["cache"]: cache}
    return p.mask(config=p.base.config, attention_mask=mask, position_ids=positions, **kw)


def _attention(p: _Plan, attn, q, k, v, attend, cache, proj):
    """Both families' tail of the attention: the cache update, HF's SDPA function, the output projection. `attend`:
    (the call's mask, `kernels.blocked` of it, `kernels.key_request`)."""
    causal, blocked, ask = attend
    k, v = cache.update(k, v, attn.layer_idx, ask)  # `ask` as HF passes its cache kwargs (None: nothing asked)
    if kernels.fits(q, k, causal):  # small calls: batched products (CPU)
        out, _ = kernels.attention(attn, q, k, v, causal, dropout=0.0, scaling=attn.scaling, blocked=blocked)
    else:
        out, _ = p.attend(attn, q, k, v, causal, dropout=0.0, scaling=attn.scaling)
    return _call(proj, out.reshape(*out.shape[:-2], -1).contiguous())


def _gpt2_layer(p: _Plan, block, h, attend, cache):
    residual = h
    x = _call(block.ln_1, h)
    attn = block.attn
    q, k, v = _call(attn.c_attn, x).split(attn.split_size, dim=2)
    shape_kv = (*k.shape[:-1], -1, attn.head_dim)
    k = k.view(shape_kv).transpose(1, 2)
    v = v.view(shape_kv).transpose(1, 2)
    q = q.view((*q.shape[:-1], -1, attn.head_dim)).transpose(1, 2)
    h = _attention(p, attn, q, k, v, attend, cache, attn.c_proj) + residual
    return h + _call(block.mlp, _call(block.ln_2, h))


def _llama_layer(p: _Plan, layer, h, attend, cache, rope):
    residual = h
    x = _call(layer.input_layernorm, h)
    attn = layer.self_attn
    shape = (*x.shape[:-1], -1, attn.head_dim)
    parts = (attn.q_proj, attn.k_proj, attn.v_proj)
    qkv = p.fuse(attn, parts, x) if p.fuse is not None else None
    if qkv is None:  # the layers' own calls
        q, k, v = (_call(m, x).view(shape).transpose(1, 2) for m in parts)
        q, k = p.rotary(q, k, *rope[:2])
    else:  # one product, (B, n, q heads + key heads + value heads, D)
        heads = qkv.view(shape)
        nq, nk = (m.weight.shape[0] // attn.head_dim for m in parts[:2])
        if p.joint:  # q and k heads side by side, rotated at once
            qk = _rotate(heads[:, :, : nq + nk], *rope[2:])
            q, k = qk[:, :, :nq].transpose(1, 2), qk[:, :, nq:].transpose(1, 2)
        else:
            q, k = p.rotary(heads[:, :, :nq].transpose(1, 2), heads[:, :, nq : nq + nk].transpose(1, 2), *rope[:2])
        v = heads[:, :, nq + nk :].transpose(1, 2)
    h = residual + _attention(p, attn, q, k, v, attend, cache, attn.o_proj)
    return h + _mlp(p, layer.mlp, _call(layer.post_attention_layernorm, h))


def _rotate(x, cos, signed_sin):
    """HF's rotary embedding (`_ROTARY`) of heads x (B, n, h, D) with cos and sin (B, n, 1, D), sin's first half
    negated: x cos + [x2, x1] [-sin1, sin2] is x cos + [-x2, x1] [sin1, sin2] with the same products and sums (a
    product's sign is exact), in 4 kernels for q and k together instead of HF's 5 for each."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((x[..., half:], x[..., :half]), -1) * signed_sin


def _mlp(p: _Plan, mlp, x):
    """The llama family's MLP, down(act(gate(x)) * up(x)), with gate and up as one packed product where
    `prepack.fused_whole` takes the call (the MLP without hooks of its own); the MLP's own call otherwise."""
    parts = (mlp.gate_proj, mlp.up_proj)
    both = p.fuse(mlp, parts, x) if p.fuse and p.mlp and not own_hooks(mlp) else None
    if both is None:
        return _call(mlp, x)
    gate, up = both.split([m.weight.shape[0] for m in parts], dim=-1)
    # the activation on a contiguous copy: an elementwise kernel over strided rows may round differently (SiLU's
    # vectorised and scalar paths); the product with `up` is exactly rounded either way
    return _call(mlp.down_proj, _call(mlp.act_fn, gate.contiguous()) * up)
