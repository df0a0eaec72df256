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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8,32", type=positive_ints, help="batch rows per call")
    ap.add_argument("--threads", type=positive_int, default=2, help="torch intra-op threads")
    ap.add_argument("--rounds", type=positive_int, default=200, help="timed calls of each")
    ap.add_argument("--allow-contended", action="store_true", help="measure even when other processes hold the cores")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    watch = preflight(args.allow_contended)
    print(f"us per call, HF's SDPA function (flash kernel) / kernels.attention (HF / ours, largest difference); "
          f"* = the engine's rule (SMALL_SCORES {kernels.SMALL_SCORES}, MIN_HEAD_ROWS {kernels.MIN_HEAD_ROWS}); "
          f"{torch.get_num_threads()} thread(s)")
    print("| model | call (queries x keys) | " + " | ".join(f"batch {b}" for b in args.batches) + " |")
    print("|---|---|" + "---:|" * len(args.batches))
    torch.manual_seed(0)
    with torch.inference_mode():
        for model in MODELS:
            for kind, n, T in CALLS:
                cells = [cell(model, b, n, T, args.rounds) for b in args.batches]
                print(f"| {model} | {kind} ({n} x {T}) | " + " | ".join(cells) + " |")
    print(verdict(watch))


if __name__ == "__main__":
    run_script(main)
