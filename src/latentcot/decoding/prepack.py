"""Prepacked linear layers for CPU decoding (oneDNN).

A decode step on CPU is mostly skinny matrix products: B rows (the batch) times every weight matrix of the model.
`F.linear` runs them on the weight as stored (out x in, row-major); oneDNN can first reorder a weight into its own
blocked layout, once, and then multiply B-row inputs against it faster (README "Where the time goes";
`python bench/profile_step.py` and `--no-prepack`). vLLM's CPU backend also multiplies its unquantized linear
layers with oneDNN-prepacked weights.

`prepacked()` is a context the engine holds around its model calls (`Engine._forward`): inside it, every
large enough `nn.Linear` of the model (weight >= `PACK_MIN` entries; small layers gain nothing) multiplies with a
packed copy of its weight when the call is on CPU, in float32 and without gradients. Everything else (training,
gradients, GPUs, other dtypes, calls outside the engine) runs the plain `F.linear`, bitwise as before.

Exactness: the packed product sums in another order than `F.linear`, so its values differ in the last bits (~1e-5
in smollm2's logits, like vLLM's own); greedy tokens stayed identical on every benchmark (`bench/throughput.py`
checks them against HF `generate()` and vLLM). `run.cpu_prepack=false` (or `Engine.prepack = False`) turns it off.

The packed copy is made at the first call and made again when the weight changes (its storage or its version
counter: an optimizer step updates weights in place), so training between evaluations is safe. It costs one more
copy of the packed weights in memory (smollm2: ~540 MB with its tied LM head).

The same context also computes GPT-2's tanh-approximate GELU (HF's `gelu_new`, seven elementwise operations) with
torch's one fused kernel (`FusedTanhGELU`): the same function up to float rounding, and on the demo's tiny GPT-2 the
activation was 17% of a batched Coconut generation (`bench/coconut.py`).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import NewGELUActivation

PACK_MIN = 1 << 18  # weights with fewer entries keep F.linear (a 512 x 512 layer and up is packed)
PACK_ROWS = 32  # the batch size oneDNN lays the packed weight out for (any batch size works with it)

_state = threading.local()


@functools.cache
def available() -> bool:
    """Whether this torch build has oneDNN's packed linear (x86 and aarch64 CPU builds do)."""
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return bool(torch.backends.mkldnn.is_available() and ops is not None
                    and hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise"))
    except (AttributeError, RuntimeError):
        return False


def _active() -> bool:
    return getattr(_state, "on", False)


class PackedLinear(nn.Linear):
    """An `nn.Linear` that multiplies with a oneDNN-packed copy of its weight inside `prepacked` (CPU, float32, no
    gradients), and is a plain `nn.Linear` everywhere else. Made by changing a module's class in place
    (`prepare`): same parameters, same state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if not _active() or torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32 \
                or w.dtype != torch.float32:
            return F.linear(x, w, self.bias)
        key = (w.data_ptr(), w._version)
        packed = self.__dict__.get("_packed")
        if packed is None or packed[0] != key:
            packed = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach(), PACK_ROWS))
            self.__dict__["_packed"] = packed  # not a parameter or buffer: never saved, never moved
        return torch.ops.mkldnn._linear_pointwise(x, packed[1], self.bias, "none", [], "")


class FusedTanhGELU(NewGELUActivation):
    """GPT-2's tanh-approximate GELU (`gelu_new`), computed by torch's one fused kernel inside `prepacked` (CPU, no
    gradients) instead of HF's seven elementwise operations, which dominate a tiny GPT-2's prefill. The same function:
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), equal up to float rounding (~2e-7). Everywhere else (training,
    gradients, other devices) it is HF's own forward, bitwise as before."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _active() and not torch.is_grad_enabled() and x.device.type == "cpu":
            return F.gelu(x, approximate="tanh")
        return super().forward(x)


def prepare(model: nn.Module, min_size: int | None = None) -> int:
    """Turns the model's plain `nn.Linear`s of at least `min_size` (default `PACK_MIN`) weight entries into
    `PackedLinear`s, and its `gelu_new` activations into `FusedTanhGELU`s (in place, idempotent). Returns how many
    linear layers are packed."""
    min_size = PACK_MIN if min_size is None else min_size
    n = 0
    for m in model.modules():
        if type(m) is nn.Linear and m.weight.numel() >= min_size:
            m.__class__ = PackedLinear
        elif type(m) is NewGELUActivation:
            m.__class__ = FusedTanhGELU
        n += type(m) is PackedLinear
    return n


@contextlib.contextmanager
def prepacked(on: bool = True) -> Iterator[None]:
    """Within this context (on this thread), `PackedLinear` layers use their packed weights."""
    before = _active()
    _state.on = on
    try:
        yield
    finally:
        _state.on = before


def unpack(model: nn.Module) -> None:
    """Drops the packed copies (memory) and turns `PackedLinear`s back into plain `nn.Linear`s (and
    `FusedTanhGELU`s back into HF's `NewGELUActivation`)."""
    for m in model.modules():
        if type(m) is PackedLinear:
            m.__dict__.pop("_packed", None)
            m.__class__ = nn.Linear
        elif type(m) is FusedTanhGELU:
            m.__class__ = NewGELUActivation
