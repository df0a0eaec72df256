"""When does SDPA's flash kernel lose to two batched products? HF's SDPA attention function against the engine's
`kernels.attention`, per model shape, batch and call.

Inside its CPU calls the engine computes attention with `bmm`, softmax, `bmm` where a call has at most
`kernels.SMALL_SCORES` scores per key/value head and batch row and at least `kernels.MIN_HEAD_ROWS` batch rows x
heads (`latentcot.models.kernels`), and with HF's function (torch's flash kernel on CPU) everywhere else. This prints, for the head shapes of the demo's GPT-2, tiny-llama and
smollm2-135m and for decode steps (one query after T keys, no mask: HF passes none without padding), prefills (T
queries, causal) and a step of two positions after a cache (a boolean mask), the median microseconds of each, their
ratio, the largest difference of their outputs, and marks the calls the rule sends to the products with `*`. The
two are timed in turns, in an order shuffled every round.

    .venv/bin/python bench/attention.py [--threads 2] [--batches 1,8,32]
    .venv/bin/python bench/attention.py --keys [--batches 1,4,8,32]   # the decode cache's key layout
    .venv/bin/python bench/attention.py --values [--batches 1,4,8,32]  # why values stay (T, d)

`--keys` times decode steps of smollm2's shape the way a step meets them: one call per layer over 30 layers'
caches in turn (so the keys and values come from memory, not from the CPU's caches, as in a real step), for keys
stored as HF stores them, (T, d) per row and head, and stored transposed, (d, T) (`kernels.key_request`): HF's
function (the flash kernel) and `kernels.attention` on each. The keys are one view of the same numbers either way;
the largest output difference to the flash kernel on row-major keys is shown, and `<-` marks what the engine runs.

`--values` does the same for the second product, probs V, with the values stored (T, d) (the engine's layout) and
(d, T), where the product is computed the other way round, V^T probs^T, and both of its operands are plain: us per
call over 30 layers' caches, and how many of 16 amounts of leading padding (keys with probability 0 in front of a
row's own, as a row placed into a wider batch has them) change the product's output at all. The engine needs 0:
its outputs do not depend on the batch a row runs in, bit for bit (`tests/test_rows.py`).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from machine import preflight, verdict
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from latentcot.cli.common import positive_int, positive_ints, run_script
from latentcot.models import kernels

MODELS = {"demo gpt2": (4, 4, 32), "tiny-llama": (4, 2, 16), "smollm2-135m": (9, 3, 64)}  # heads, kv heads, dims
KEY_COUNTS = (128, 256, 512, 1024)  # --keys: keys per row of the decode steps
CALLS = [("decode", 1, 32), ("decode", 1, 128), ("decode", 1, 512), ("2 after cache", 2, 34), ("prefill", 16, 16),
         ("prefill", 64, 64), ("prefill", 256, 256)]  # (kind, queries, keys)


class _Attn(torch.nn.Module):
    """What HF's function reads from the attention module."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, True


def timed(fns: dict, rounds: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k in random.sample(list(fns), len(fns)):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def cell(model: str, batch: int, n: int, T: int, rounds: int) -> str:
    heads, kv, d = MODELS[model]
    q = torch.randn(batch, n, heads, d).transpose(1, 2)  # as the projections give it
    k = torch.randn(batch, kv, T + 16, d).narrow(2, 0, T)  # a view into a cache with room, as the engine's
    v = torch.randn(batch, kv, T + 16, d).narrow(2, 0, T)
    mask = None
    if n > 1 and n < T:  # queries after a cache: HF's boolean mask (True = attend)
        mask = torch.ones(n, T, dtype=torch.bool).tril(T - n)[None, None].expand(batch, 1, n, T)
    attn = _Attn(heads // kv)
    hf = lambda: sdpa_attention_forward(attn, q, k, v, mask, scaling=d**-0.5)[0]  # noqa: E731
    ours = lambda: kernels.attention(attn, q, k, v, mask, scaling=d**-0.5)[0]  # noqa: E731
    diff = float((hf() - ours()).abs().max())
    t = timed({"hf": hf, "ours": ours}, rounds)
    before = kernels.set_active(True)
    rule = kernels.fits(q, k, mask)
    kernels.set_active(before)
    return f"{t['hf']:.0f} / {t['ours']:.0f} ({t['hf'] / t['ours']:.2f}x, {diff:.0e}){' *' if rule else ''}"


def keys_cell(batch: int, T: int, rounds: int) -> str:
    """A decode step of smollm2's attention over 30 layers' caches (from memory): us per call for the flash kernel
    and `kernels.attention` on row-major keys and `kernels.attention` on transposed keys."""
    heads, kv, d = MODELS["smollm2-135m"]
    layers = 30
    keys = [torch.randn(batch, kv, T + 16, d).narrow(2, 0, T) for _ in range(layers)]
    flipped = [torch.empty(batch, kv, d, T + 16).transpose(2, 3).narrow(2, 0, T).copy_(k) for k in keys]
    values = [torch.randn(batch, kv, T + 16, d).narrow(2, 0, T) for _ in range(layers)]
    q = [torch.randn(batch, 1, heads, d).transpose(1, 2) for _ in range(layers)]
    attn = _Attn(heads // kv)

    def sweep(fn, ks):
        return lambda: [fn(attn, q[i], ks[i], values[i], None, scaling=d**-0.5)[0] for i in range(layers)]

    arms = {"flash": sweep(sdpa_attention_forward, keys), "bmm": sweep(kernels.attention, keys),
            "bmm, keys (d, T)": sweep(kernels.attention, flipped)}
    ref = arms["flash"]()[0]
    diff = max(float((arm()[0] - ref).abs().max()) for arm in arms.values())
    t = {k: v / layers for k, v in timed(arms, rounds).items()}
    before = kernels.set_active(True)
    flip = kernels.key_request(torch.empty(batch, 1, d)) is not None
    taken = "bmm, keys (d, T)" if flip else ("bmm" if kernels.fits(q[0], keys[0], None) else "flash")
    kernels.set_active(before)
    return " / ".join(f"{t[k]:.0f}{' <-' if k == taken else ''}" for k in arms) + \
        f" ({t['flash'] / t['bmm, keys (d, T)']:.2f}x, {t['bmm'] / t['bmm, keys (d, T)']:.2f}x; {diff:.0e})"


def values_cell(batch: int, T: int, rounds: int) -> str:
    """probs V of smollm2's decode step over 30 layers' caches: us per call with V stored (T, d), as `bmm(p, V)`,
    and stored (d, T), as `bmm(V^T, p^T)`, their largest difference, and for each how many of 16 paddings change
    the output."""
    heads, kv, d = MODELS["smollm2-135m"]
    layers, g = 30, heads // kv
    rows = [torch.randn(batch * kv, T, d) for _ in range(layers)]
    cols = [torch.empty(batch * kv, d, T + 16).narrow(2, 0, T).copy_(v.transpose(1, 2)) for v in rows]
    probs = [torch.softmax(torch.randn(batch * kv, g, T), -1) for _ in range(layers)]
    forms = {"V (T, d)": lambda p, v: torch.bmm(p, v), "V (d, T)": lambda p, v: torch.bmm(v, p.transpose(1, 2))}
    stored = {"V (T, d)": rows, "V (d, T)": cols}
    arms = {k: lambda f=f, vs=stored[k]: [f(probs[i], vs[i]) for i in range(layers)] for k, f in forms.items()}
    diff = float((arms["V (T, d)"]()[0] - arms["V (d, T)"]()[0].transpose(1, 2)).abs().max())
    t = {k: v / layers for k, v in timed(arms, rounds).items()}
    changed = dict.fromkeys(forms, 0)
    for pad in range(1, 17):
        front = torch.randn(batch * kv, pad, d)  # keys the rows may not attend to: probability 0
        v_pad = torch.cat([front, rows[0]], 1)
        p_pad = torch.cat([torch.zeros(batch * kv, g, pad), probs[0]], -1)
        for k, f in forms.items():
            wide = v_pad if k == "V (T, d)" else v_pad.transpose(1, 2).contiguous()
            changed[k] += not torch.equal(f(p_pad, wide), arms[k]()[0])
    return (f"{t['V (T, d)']:.0f} / {t['V (d, T)']:.0f} ({t['V (T, d)'] / t['V (d, T)']:.2f}x, {diff:.0e}); "
            f"{changed['V (T, d)']} / {changed['V (d, T)']} of 16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8,32", type=positive_ints, help="batch rows per call")
    ap.add_argument("--threads", type=positive_int, default=2, help="torch intra-op threads")
    ap.add_argument("--rounds", type=positive_int, default=200, help="timed calls of each")
    ap.add_argument("--keys", action="store_true", help="decode steps over 30 layers' caches, keys stored two ways")
    ap.add_argument("--values", action="store_true", help="probs V over 30 layers' caches, values stored two ways")
    ap.add_argument("--allow-contended", action="store_true", help="measure even when other processes hold the cores")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    watch = preflight(args.allow_contended)
    if args.values:
        title = (f"smollm2-135m decode step's probs V (1 query, {MODELS['smollm2-135m']} heads / kv heads / dims), "
                 f"us per layer over 30 layers' caches: values stored (T, d), bmm(p, V) / stored (d, T), "
                 f"bmm(V^T, p^T) (ratio, largest difference); paddings of 1-16 positions that change the output, "
                 f"(T, d) / (d, T)")
        head = ["keys"]
        rows = ((f"{T}", lambda T=T: [values_cell(b, T, max(3, args.rounds // 20)) for b in args.batches])
                for T in KEY_COUNTS)
    elif args.keys:
        title = (f"smollm2-135m decode step (1 query, {MODELS['smollm2-135m']} heads / kv heads / dims), us per layer "
                 f"over 30 layers' caches: flash (keys (T, d)) / bmm (keys (T, d)) / bmm (keys (d, T)), then flash "
                 f"and bmm on (T, d) against bmm on (d, T), largest output difference; <- = the engine's choice")
        head = ["keys"]
        rows = ((f"{T}", lambda T=T: [keys_cell(b, T, max(3, args.rounds // 20)) for b in args.batches])
                for T in KEY_COUNTS)
    else:
        title = (f"us per call, HF's SDPA function (flash kernel) / kernels.attention (HF / ours, largest difference); "
                 f"* = the engine's rule (SMALL_SCORES {kernels.SMALL_SCORES}, MIN_HEAD_ROWS {kernels.MIN_HEAD_ROWS})")
        head = ["model", "call (queries x keys)"]
        rows = ((f"{model} | {kind} ({n} x {T})",
                 lambda model=model, n=n, T=T: [cell(model, b, n, T, args.rounds) for b in args.batches])
                for model in MODELS for kind, n, T in CALLS)
    print(f"{title}; {torch.get_num_threads()} thread(s)")
    print("| " + " | ".join(head) + " | " + " | ".join(f"batch {b}" for b in args.batches) + " |")
    print("|" + "---|" * len(head) + "---:|" * len(args.batches))
    torch.manual_seed(0)
    with torch.inference_mode():
        for label, cells in rows:
            print(f"| {label} | " + " | ".join(cells()) + " |", flush=True)
    print(verdict(watch))


if __name__ == "__main__":
    run_script(main)
