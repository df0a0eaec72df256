"""Cost of per-row random streams (definition v1) against one batched draw, next to the step they feed.

Each row of a batch owns a Mersenne-Twister `torch.Generator`, so a batch's draw is a Python loop over rows. This
measures, per draw of k uniforms for B rows:

- v1 as first written: a preallocated (B, k) tensor filled row by row (`torch.rand(..., out=out[b])`);
- v1 per row (`RowRandom.uniform` before blocks): one `torch.rand` per row, then one `torch.stack` (the same
  numbers);
- v1 as drawn now in a loop (`RowRandom.uniform`): the rows' draws come from blocks drawn ahead together, so a
  step's draw is one indexing op (the same numbers; a block is refilled every 1024 / k draws, included);
- one generator for the whole batch (`torch.rand((B, k))`): what a vectorised stream definition could cost at
  best (it would change every sampled result, and results would depend on the batch unless made counter-based);

and a cached tiny-llama decode step at the same batch, the cheapest step the draws sit next to.

    .venv/bin/python bench/streams.py [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from machine import preflight, verdict

from latentcot.cli.common import positive_int, positive_ints, run_script
from latentcot.decoding.engine import Engine
from latentcot.decoding.sampling import RowRandom, row_seed
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.models.splice import splice, tokens


def per_call(fn, n: int = 2000, repeats: int = 5) -> float:
    """Best-of-`repeats` microseconds per call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def v1_loop(gens: list[torch.Generator], k: int) -> torch.Tensor:
    out = torch.empty((len(gens), k))
    for b, g in enumerate(gens):
        torch.rand((k,), generator=g, out=out[b])
    return out


def row(B: int, k: int, eng: Engine, bb: Backbone) -> str:
    rand = RowRandom([row_seed(0, str(i), 0) for i in range(B)])
    check = RowRandom([row_seed(0, str(i), 0) for i in range(B)])
    assert torch.equal(rand.uniform(k), v1_loop(check.generators, k))  # same stream, same numbers
    one = torch.Generator().manual_seed(0)
    loop = per_call(lambda: v1_loop(rand.generators, k))
    gens = rand.generators
    per_row = per_call(lambda: torch.stack([torch.rand((k,), generator=g) for g in gens]))
    now = per_call(lambda: rand.uniform(k))
    batched = per_call(lambda: torch.rand((B, k), generator=one))
    state = eng.prefill(splice([[tokens(bb.encode("a b c d e f"))]] * B, bb.embed, bb.tokenizer.pad_token_id or 0))
    ids = state.logits.argmax(-1)
    with torch.no_grad():
        step = per_call(lambda: eng.step_tokens(state, ids), n=20, repeats=3)  # the cache grows 1 per call
    return f"| {B} | {loop:.1f} | {per_row:.1f} | {now:.1f} | {batched:.1f} | {step:.0f} | {100 * now / step:.1f}% |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="8,32,100", type=positive_ints)
    ap.add_argument("--k", type=positive_int, default=15, help="uniforms per row and draw (Gumbel: soft_top_k)")
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument("--allow-contended", action="store_true", help="measure even when other processes hold the cores")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bb = Backbone(*load_model("tiny-llama"), "tiny-llama")
    eng = Engine(bb)
    watch = preflight(args.allow_contended)
    print(f"us per draw of {args.k} uniforms per row; {torch.get_num_threads()} thread(s)")
    print("| batch | v1 loop into a preallocated tensor | v1 per-row rand + stack | v1 from blocks (now) "
          "| one generator (not v1) | tiny-llama cached step | now, share of the step |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for B in args.batch_sizes:
        print(row(B, args.k, eng, bb))
    print(verdict(watch))


if __name__ == "__main__":
    run_script(main)
