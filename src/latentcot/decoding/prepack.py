"""Prepacked linear layers for CPU decoding (oneDNN).

A decode step on CPU is mostly skinny matrix products: B rows (the batch) times every weight matrix of the model.
`F.linear` runs them on the weight as stored (out x in, row-major); oneDNN can first reorder a weight into its own
blocked layout, once, and then multiply B-row inputs against it faster (README "Where the time goes";
`python bench/profile_step.py` and `--no-prepack`). vLLM's CPU backend also multiplies its unquantized linear
layers with oneDNN-prepacked weights.

`prepacked()` is a context the engine holds around its model calls (`Engine._forward`): inside it, the model's
`nn.Linear` layers and GPT-2's `Conv1D` layers (the same product with the weight stored transposed) multiply with
a packed copy of their weight when the call is on CPU, in float32, without gradients, and large enough: a weight of
at least `PACK_MIN` entries always, a smaller one (down to `PACK_FLOOR`) when the call's rows x the weight's
entries reach `PACK_WORK` multiply-adds. oneDNN's call has a fixed cost of 15-30 us, so a small layer multiplying
a few rows is faster unpacked, while the same layer in a prefill of a thousand rows is ~2x faster packed
(`python bench/prepack.py`; README, "Session 36"). Everything else (training, gradients, GPUs, other dtypes,
calls outside the engine) runs the plain product, bitwise as before.

Exactness: the packed product sums in another order than `F.linear`, so its values differ in the last bits (~1e-5
in smollm2's logits, like vLLM's own); greedy tokens stayed identical on every benchmark (`bench/throughput.py`
checks them against HF `generate()` and vLLM). `run.cpu_prepack=false` (or `Engine.prepack = False`) turns it off.

The packed copy is made at the first call and made again when the weight changes (its storage or its version
counter: an optimizer step updates weights in place), so training between evaluations is safe. It costs one more
copy of the packed weights in memory (smollm2: ~540 MB with its tied LM head).

The same context also computes GPT-2's tanh-approximate GELU (HF's `gelu_new`, seven elementwise operations) with
torch's one fused kernel (`FusedTanhGELU`): the same function up to float rounding, and on the demo's tiny GPT-2 the
activation was 17% of a batched Coconut generation (`bench/coconut.py`), and the lean model call computes small
attention calls as batched products (`latentcot.models.kernels`, whose switch this context is).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import NewGELUActivation
from transformers.pytorch_utils import Conv1D

from latentcot.models import kernels
from latentcot.models.fastpath import global_hooks, own_hooks

PACK_MIN = 1 << 18  # weights with at least this many entries are packed in every call (512 x 512 and up)
PACK_WORK = 1 << 21  # a smaller weight is packed for a call of at least this many multiply-adds (rows x entries)
PACK_FLOOR = 1 << 12  # weights with fewer entries are never packed (64 x 64 and up can be)
PACK_ROWS = 32  # the batch size oneDNN lays the packed weight out for (any batch size works with it)


@functools.cache
def available() -> bool:
    """Whether this torch build has oneDNN's packed linear (x86 and aarch64 CPU builds do)."""
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return bool(torch.backends.mkldnn.is_available() and ops is not None
                    and hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise"))
    except (AttributeError, RuntimeError):
        return False


def packs(m: nn.Module, rows: int) -> bool:
    """Whether a layer `prepare` converted multiplies a call of `rows` rows packed: always (marked so by `prepare`:
    `min_size` entries and up) or when the call reaches `PACK_WORK` multiply-adds."""
    return m.__dict__.get("_always", False) or rows * m.weight.numel() >= PACK_WORK


def _packed_product(m: nn.Module, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                    transposed: bool, gelu: bool = False) -> torch.Tensor | None:
    """x @ W^T + bias with m's packed copy of W (`w` is W, or W^T when `transposed`), made at the first call and
    again when the weight changes; None outside `prepacked`, with gradients, off the CPU, in another dtype than
    float32, or when the call is too small to gain (`packs`, see the module docstring). `gelu`: the tanh-approximate
    GELU of the product, applied by oneDNN as the product is written."""
    if not (_engine_call(x) and w.dtype is torch.float32):
        return None
    if not packs(m, x.numel() // max(1, x.shape[-1])):
        return None
    packed = _packed_copy(m, "_packed", [w], lambda: (w.detach().t().contiguous() if transposed else w.detach(),))
    if gelu:
        return torch.ops.mkldnn._linear_pointwise(x, packed[1], bias, "gelu", [], "tanh")
    return torch.ops.mkldnn._linear_pointwise(x, packed[1], bias, "none", [], "")


def _engine_call(x: torch.Tensor) -> bool:
    """Whether a product of `x` may use packed weights: inside `prepacked`, float32, CPU, no gradients."""
    return kernels.active() and x.dtype is torch.float32 and x.is_cpu and not torch.is_grad_enabled()


def _packed_copy(m: nn.Module, name: str, tensors: list[torch.Tensor], make) -> tuple:
    """(key, packed weight, *rest) kept on `m` under `name` (not a parameter or buffer: never saved, never moved),
    made by `make()` -> (weight to pack, *rest) at the first call and again when any of `tensors` changes (its
    storage or its version counter: an optimizer step updates weights in place)."""
    key = tuple((t.data_ptr(), t._version) for t in tensors)
    packed = m.__dict__.get(name)
    if packed is None or packed[0] != key:
        weight, *rest = make()
        packed = (key, torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS), *rest)
        m.__dict__[name] = packed
    return packed


def fused_whole(owner: nn.Module, parts: tuple[nn.Module, ...], x: torch.Tensor) -> torch.Tensor | None:
    """The products of `parts` (`PackedLinear` layers that read the same input `x`, such as an attention's query,
    key and value projections or an MLP's gate and up projections) as ONE packed product with their weights side by
    side: (..., sum of their output widths), one layer's outputs after the other's along the last dimension; None
    where the layers' own calls must run: outside `prepacked`, with gradients, off the CPU, another dtype, a layer
    that is not a `PackedLinear` (a LoRA wrapper) or has hooks, global hooks, mixed biases, or a call too small to
    gain (the fused weight decides as one layer would).

    One call in place of three (or two): oneDNN's fixed cost per call and the small key/value products (which a
    decode step of a few rows multiplies unpacked, `packs`) were ~15% of the linear layers' time at one row. Each
    output column is the same dot product over the same inputs as in its own layer's packed call (oneDNN blocks the
    sum over the input features the same way whatever the output width; `tests/test_prepack.py` checks it with
    `torch.equal`). The packed copy lives on `owner` (one group per owner) and is made again when any weight or bias
    changes."""
    if not _engine_call(x):
        return None
    if global_hooks() or any(type(m) is not PackedLinear or own_hooks(m) for m in parts):
        return None
    weights = [m.weight for m in parts]
    biases = [m.bias for m in parts]
    if any(w.dtype is not torch.float32 for w in weights) or len({b is None for b in biases}) > 1:
        return None
    total = sum(w.numel() for w in weights)
    if not (any(m.__dict__.get("_always", False) for m in parts) or x.numel() // x.shape[-1] * total >= PACK_WORK):
        return None
    bias = None if biases[0] is None else biases
    packed = _packed_copy(owner, "_fused_packed", weights + (bias or []), lambda: (
        torch.cat([w.detach() for w in weights]), None if bias is None else torch.cat([b.detach() for b in bias])))
    return torch.ops.mkldnn._linear_pointwise(x, packed[1], packed[2], "none", [], "")


class PackedLinear(nn.Linear):
    """An `nn.Linear` that multiplies with a oneDNN-packed copy of its weight inside `prepacked` (CPU, float32, no
    gradients, a large enough call), and is a plain `nn.Linear` everywhere else. Made by changing a module's class
    in place (`prepare`): same parameters, same state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        y = _packed_product(self, x, w, self.bias, False)
        return F.linear(x, w, self.bias) if y is None else y


class PackedConv1D(Conv1D):
    """GPT-2's `Conv1D` (x @ W + b, W stored as in x out) as `PackedLinear` does it: packed inside `prepacked` for
    a large enough call, HF's own forward everywhere else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        y = _packed_product(self, x, w, self.bias, True)
        return super().forward(x) if y is None else y


_PACKED = {nn.Linear: PackedLinear, Conv1D: PackedConv1D}
_PLAIN = {v: k for k, v in _PACKED.items()}


class FusedTanhGELU(NewGELUActivation):
    """GPT-2's tanh-approximate GELU (`gelu_new`), computed by torch's one fused kernel inside `prepacked` (CPU, no
    gradients) instead of HF's seven elementwise operations, which dominate a tiny GPT-2's prefill. The same function:
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), equal up to float rounding (~2e-7). Everywhere else (training,
    gradients, other devices) it is HF's own forward, bitwise as before."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if kernels.active() and not torch.is_grad_enabled() and x.device.type == "cpu":
            return F.gelu(x, approximate="tanh")
        return super().forward(x)


@functools.cache
def _packed_gpt2_mlp() -> tuple[type, type]:
    """(HF's GPT2MLP, PackedGPT2MLP), made at the first `prepare` (importing GPT-2's modeling costs ~0.3 s, so the
    engine's import does not)."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

    class PackedGPT2MLP(GPT2MLP):
        """GPT-2's MLP with its first product and its GELU in one oneDNN call (the GELU applied as the product is
        written: one pass over the (rows, 4d) activations fewer), where its `c_fc` would be packed and its
        activation is `FusedTanhGELU`, neither with hooks (the fused call would skip them); HF's own forward
        everywhere else."""

        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            fc, act = self.c_fc, self.act
            if (type(act) is FusedTanhGELU and type(fc) is PackedConv1D and not own_hooks(fc) and not own_hooks(act)
                    and not global_hooks()):
                h = _packed_product(fc, hidden_states, fc.weight, fc.bias, True, gelu=True)
                if h is not None:
                    h = self.c_proj(h)
                    return self.dropout(h) if self.training else h  # eval-mode dropout is the identity
            return super().forward(hidden_states)

    return GPT2MLP, PackedGPT2MLP


def prepare(model: nn.Module, min_size: int | None = None) -> int:
    """Turns the model's plain `nn.Linear` and `Conv1D` layers of at least `PACK_FLOOR` weight entries into
    `PackedLinear` / `PackedConv1D` (those of at least `min_size` entries, default `PACK_MIN`, packed in every call;
    the others when a call is large enough), and its `gelu_new` activations into `FusedTanhGELU`s, and GPT-2's MLPs
    into ones that apply that GELU inside their first packed product (in place, idempotent; a converted layer
    takes the current `min_size`). Returns how many layers are converted."""
    min_size = PACK_MIN if min_size is None else min_size
    mlp, packed_mlp = _packed_gpt2_mlp()
    n = 0
    for m in model.modules():
        if type(m) in _PACKED and m.weight.numel() >= min(min_size, PACK_FLOOR):
            m.__class__ = _PACKED[type(m)]
        elif type(m) is NewGELUActivation:
            m.__class__ = FusedTanhGELU
        elif type(m) is mlp:
            m.__class__ = packed_mlp
        if type(m) in _PLAIN:
            m.__dict__["_always"] = m.weight.numel() >= min_size
            n += 1
    return n


@contextlib.contextmanager
def prepacked(on: bool = True) -> Iterator[None]:
    """Within this context (on this thread), `PackedLinear` / `PackedConv1D` layers use their packed weights (and
    the engine's other CPU kernel choices apply: `FusedTanhGELU`, `kernels.attention`)."""
    before = kernels.set_active(on)
    try:
        yield
    finally:
        kernels.set_active(before)


def unpack(model: nn.Module) -> None:
    """Drops the packed copies (memory) and turns `PackedLinear` / `PackedConv1D` layers back into plain `nn.Linear`
    / `Conv1D` (and `FusedTanhGELU`s back into HF's `NewGELUActivation`)."""
    mlp, packed_mlp = _packed_gpt2_mlp()
    for m in model.modules():
        m.__dict__.pop("_fused_packed", None)
        if type(m) in _PLAIN:
            m.__dict__.pop("_packed", None)
            m.__dict__.pop("_always", None)
            m.__class__ = _PLAIN[type(m)]
        elif type(m) is FusedTanhGELU:
            m.__class__ = NewGELUActivation
        elif type(m) is packed_mlp:
            m.__class__ = mlp
