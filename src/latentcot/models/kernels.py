"""CPU kernel choices inside the engine's calls: the switch `decoding.prepack.prepacked` turns on, and attention by
two batched matrix products for calls too small for SDPA's flash kernel.

On CPU, torch's scaled-dot-product attention runs its flash kernel for float32 inputs. The kernel splits the work
into blocks of queries per batch row and head and runs them on the intra-op threads, with buffers per thread; for
a decode step or a short prefill of a small model that set-up is most of the call. Measured by
`python bench/attention.py` (README, "Session 39"; 2 threads): a prefill of 16 positions x 32 rows of the demo's
GPT-2 (4 heads of 32) took 426 us in the flash kernel and 219 us as `bmm`, softmax, `bmm`, a step of two positions
after a cache (with a mask) 415 against 198 us, a decode step of smollm2 at 32 rows 1.24-1.39x faster this way;
at one row, or for long prefills, the flash kernel wins (0.27-0.96x), and the rule below keeps it there. Of the
calls the rule takes, one lost in that run: tiny-llama's 16-position prefill at 32 rows (0.71x, ~55 us).

`attention` is HF's SDPA attention function (`transformers.integrations.sdpa_attention.sdpa_attention_forward`)
computed that way: the same arguments, the same masks (a boolean mask, True = attend; None = causal for several
queries, HF's convention: top-left, keys cut to the query count), grouped-query heads without repeating the keys (the
query heads of one key/value head are stacked as rows of one product), and rows that may attend to nothing give zeros,
as SDPA does. It sums in another order than the flash kernel, so values differ in the last bits (2e-7 to 5e-7 on the
bench's shapes); the engine's benches check that greedy tokens stay the same (`bench/coconut.py` against the
cache-less loop, `bench/throughput.py` against HF `generate()`). `fits` says which calls take it: float32 CPU calls
inside the switch, without gradients, with at least `MIN_HEAD_ROWS` batch rows x query heads and at most
`SMALL_SCORES` attention scores per key/value head and batch row, and every such call on keys stored transposed
(below); everything else is HF's function, and outside the engine (training, HF's own forward) nothing changes.
`run.cpu_prepack=false` turns it off with the packed layers.

The decode cache's key layout (`key_request`, `decoding.rows.SlackLayer`): a lean call asks the engine's cache to
store keys (d, T) per row and head, so the scores' product reads them as a plain operand; values stay (T, d).
`python bench/attention.py --keys` times both layouts over 30 layers' caches, and `python bench/lean_step.py` whole
steps ('keys row-major').
"""

from __future__ import annotations

import threading

import torch

from latentcot.decoding.sampling import _cpu_read  # a CPU tensor's value: no device read

TRANSPOSED_KEYS = True  # lean calls ask the engine's decode cache for keys stored transposed (`key_request`)
SMALL_SCORES = 1024  # at most this many scores (queries x keys) per key/value head and batch row, and
MIN_HEAD_ROWS = 64  # at least this many (batch row, query head) pairs: `attention` replaces the flash kernel

state = threading.local()  # .on: the switch, per thread
_NEG = float("-inf")


def active() -> bool:
    """Whether the engine's CPU kernel choices are on (inside `decoding.prepack.prepacked`, on this thread)."""
    return getattr(state, "on", False)


def set_active(on: bool) -> bool:
    """Turns the choices on or off on this thread; returns the setting before."""
    before = active()
    state.on = on
    return before


def _inference_cpu(x: torch.Tensor) -> bool:
    """The switch on, and `x` a float32 CPU tensor computed without gradients."""
    return getattr(state, "on", False) and x.dtype is torch.float32 and x.is_cpu and not torch.is_grad_enabled()


def transposed(key: torch.Tensor) -> bool:
    """Whether `key` (B, H, T, D) is a view of keys stored transposed, (D, T) per batch row and head."""
    return key.shape[-1] > 1 and key.stride(-1) != 1


def fits(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether `attention` computes this call: the switch on, CPU, float32, no gradients, a boolean mask shared by
    the heads (or none), at least `MIN_HEAD_ROWS` batch rows x query heads (below that the flash kernel's set-up is
    small and its one call beats three) and at most `SMALL_SCORES` scores per key/value head and batch row (above
    that the flash kernel's blocks win). Keys stored transposed (`key_request`) always fit: the flash kernel reads
    them 5-8x slower, `attention` faster than row-major ones."""
    if not _inference_cpu(query):
        return False
    if mask is not None and not _shared(mask):
        return False
    heads, kv_heads = query.shape[1], key.shape[1]
    if heads % kv_heads:
        return False
    return transposed(key) or (query.shape[0] * heads >= MIN_HEAD_ROWS
                               and (heads // kv_heads) * query.shape[2] * key.shape[2] <= SMALL_SCORES)


KEYS_TRANSPOSED = "latentcot_keys_transposed"  # the cache-kwargs key a lean call sets (`decoding.rows.SlackLayer`)
_ASK = {KEYS_TRANSPOSED: True}


def key_request(x: torch.Tensor) -> dict | None:
    """The cache kwargs a lean model call on `x` (B, n, d) passes to its cache's `update`: keys stored transposed
    where `attention` will read them (the switch on, CPU, float32, no gradients; `TRANSPOSED_KEYS`), else None
    (keys as HF stores them).

    Why: a decode step's scores q K^T multiply a few query rows by each row's keys; with K stored (T, d) the
    batched product reads K^T as a transposed operand, with K stored (d, T) as a plain one, which the CPU's matrix
    product reads faster: the whole attention of smollm2's decode steps at 2 to 32 rows and 128 to 1,024 keys is
    1.1-1.5x faster than on row-major keys and 1.2-1.5x faster than the flash kernel on them, and at one row about
    as fast as the flash kernel (`python bench/attention.py --keys`, README). Values stay (T, d), the plain operand
    of probs V."""
    return _ASK if TRANSPOSED_KEYS and _inference_cpu(x) else None


def _shared(mask: torch.Tensor) -> bool:
    """Whether `attention` takes this mask: boolean, (B, 1, n, T), one mask shared by the heads."""
    return mask.dtype is torch.bool and mask.dim() == 4 and mask.shape[1] == 1


_upper: dict[int, torch.Tensor] = {}


def _future(n: int) -> torch.Tensor:
    """(n, n) True above the diagonal: the keys a causal query may not see."""
    m = _upper.get(n)
    if m is None:
        m = _upper[n] = torch.ones(n, n, dtype=torch.bool).triu(1)
    return m


def blocked(mask: torch.Tensor | None) -> tuple[torch.Tensor, bool] | None:
    """What `attention` derives from a boolean mask, for a model call whose layers share it: (the mask's complement,
    True = may not attend; whether some query may attend to nothing), computed once per call instead of in every
    layer; None outside the switch or for a mask `attention` does not take."""
    if not (getattr(state, "on", False) and mask is not None and _shared(mask) and mask.is_cpu):
        return None
    out = mask.logical_not()
    return out, _cpu_read(out.all(-1).any())


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              blocked: tuple[torch.Tensor, bool] | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """HF's SDPA attention function as `bmm`, softmax, `bmm`: query (B, H, n, d), key and value (B, Hkv, T, d)
    -> ((B, n, H, d) contiguous, None). Inference only (`dropout` must be 0). `blocked`: `blocked(attention_mask)`,
    where the caller has it (a softmax whose every row may attend to something needs no zeroing: the same values
    with two kernels fewer)."""
    if dropout:
        raise ValueError("kernels.attention is for inference: dropout must be 0")
    B, H, n, d = query.shape
    kv = key.shape[1]
    g = H // kv
    if attention_mask is None and n > 1:  # HF: causal from the first key, keys cut to the query count
        key, value = key[:, :, :n], value[:, :, :n]
    T = key.shape[2]
    q = query.reshape(B * kv, g * n, d)  # the g query heads of one key/value head, stacked as rows
    scores = torch.bmm(q, key.reshape(B * kv, T, d).transpose(1, 2))  # (B * kv, g * n, T)
    scores.mul_(d**-0.5 if scaling is None else scaling)
    if attention_mask is not None:
        off, empty = blocked if blocked is not None else (attention_mask.logical_not(), True)
        scores.view(B, kv, g, n, T).masked_fill_(off[:, :, None], _NEG)
        # a row that may attend to nothing gives zeros, as SDPA (softmax and then zeros where a row is all -inf)
        probs = torch.ops.aten._safe_softmax(scores, -1) if empty else torch.softmax(scores, -1)
    else:
        if n > 1:
            scores.view(B * kv, g, n, T).masked_fill_(_future(n), _NEG)
        probs = torch.softmax(scores, -1)
    out = torch.bmm(probs, value.reshape(B * kv, T, d))  # (B * kv, g * n, d)
    return out.view(B, H, n, d).transpose(1, 2).contiguous(), None
