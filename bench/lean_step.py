"""What each of the lean model call's CPU choices saves in a decode step of a real model, measured step by step.

The engine's lean call (`models/fastpath.py`) makes choices that change no value: q/k/v and gate/up as one packed
product each (`prepack.fused_whole`), q and k rotated at once from that product (`fastpath._rotate`), the attention
mask's complement and its empty rows derived once per call instead of in every layer (`kernels.blocked`); and one that
changes the summation order: keys stored transposed in the decode cache, which
`kernels.attention` multiplies as a plain operand (`kernels.key_request`). Each arm below turns some of them off; all
arms step their own copy of one prefilled state with the same greedy tokens, taking turns step by step in an order
shuffled every round (seeded), so the machine's drift hits them alike. The rotation's and the mask's arms must give
the default's logits with torch.equal at every step (the bench stops otherwise); 'keys row-major', 'no fused products'
(small key/value layers then multiply unpacked at a few rows, `prepack.packs`) and 'HF forward' (the engine with
`Engine.fast = False`: HF's SDPA function in place of the small-call attention) sum in other orders and are shown with
their largest logit difference.

    python bench/lean_step.py                                   # smollm2, batch 1, 8, 32, 96 steps, 2 threads
    python bench/lean_step.py --batch-sizes 8 --steps 200 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import random
import statistics
import time

import torch
from machine import preflight, verdict

from latentcot.cli.common import positive_int, positive_ints, run_script
from latentcot.methods import build_method
from latentcot.models import fastpath, kernels
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.tasks import get_task

# arm -> (fused products, joint rotation, mask derived once per call, keys stored transposed, lean call)
ARMS = {
    "lean (default)": (True, True, True, True, True),
    "mask in every layer": (True, True, False, True, True),
    "rotation per tensor": (True, False, True, True, True),
    "both, per layer": (True, False, False, True, True),
    "keys row-major": (True, True, True, False, True),
    "no fused products": (False, False, False, False, True),
    "HF forward": (False, False, False, False, False),
}
EXACT = ["mask in every layer", "rotation per tensor", "both, per layer"]  # must equal the default bitwise
OTHER = ["keys row-major", "no fused products", "HF forward"]  # other summation orders: largest logit difference


@contextlib.contextmanager
def arm(method, name: str):
    """The engine as arm `name` makes it, for one step."""
    fused, joint, once, flip, lean = ARMS[name]
    p = fastpath.plan(method.backbone.model)
    saved = (p.fuse, p.joint, kernels.blocked, kernels.TRANSPOSED_KEYS, method.engine.fast)
    p.fuse = saved[0] if fused else None
    p.joint = saved[1] and joint
    kernels.blocked = saved[2] if once else (lambda mask: None)
    kernels.TRANSPOSED_KEYS = saved[3] and flip  # row-major keys: the cache re-buffers at its first step
    method.engine.fast = lean
    try:
        yield
    finally:
        p.fuse, p.joint, kernels.blocked, kernels.TRANSPOSED_KEYS, method.engine.fast = saved


def run(method, task, batch: int, steps: int, seed: int) -> dict[str, float]:
    """Seconds per step of each arm (median over steps) and the `OTHER` arms' largest logit differences."""
    exs = task.load("test")[:batch]
    with torch.inference_mode():
        first = method.start_state(exs, task)
    states = {name: copy.deepcopy(first) for name in ARMS}
    times: dict[str, list[float]] = {name: [] for name in ARMS}
    rng, diff = random.Random(seed), dict.fromkeys(OTHER, 0.0)
    with torch.inference_mode():
        for _ in range(steps):
            ids = states["lean (default)"].logits.argmax(-1)  # every arm feeds the same tokens
            order = list(ARMS)
            rng.shuffle(order)
            for name in order:
                embeds = method.backbone.embed(ids)
                with arm(method, name):
                    t0 = time.perf_counter()
                    states[name] = method.engine.step(states[name], embeds)
                    times[name].append(time.perf_counter() - t0)
            ref = states["lean (default)"].logits
            for name in EXACT:
                if not torch.equal(states[name].logits, ref):
                    raise SystemExit(f"arm {name!r} gave other logits than the default: a choice changed values")
            for name in OTHER:
                diff[name] = max(diff[name], (states[name].logits - ref).abs().max().item())
    return {name: statistics.median(t) for name, t in times.items()}, diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch-sizes", default="1,8,32", type=positive_ints)
    ap.add_argument("--steps", type=positive_int, default=96)
    ap.add_argument("--threads", type=positive_int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allow-contended", action="store_true", help="measure even when other processes hold the cores")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bb = Backbone(*load_model(args.model), args.model)
    if fastpath.plan(bb.model) is None or not fastpath.plan(bb.model).fuse:
        raise SystemExit(f"{args.model}: the lean call's llama-family plan does not apply to this model")
    task = get_task("gsm8k")
    method = build_method("cot", {}, bb)
    method.eval()
    run(method, task, 2, 2, args.seed)  # warm-up (packed copies made, stop matcher etc.)
    watch = preflight(args.allow_contended)
    print(f"{args.model}, GSM8K cot prompts, decode steps after the prefill, greedy, {args.threads} thread(s); "
          f"ms per step (median over {args.steps} steps, arms in turn); 'vs default': this arm's time / the default's")
    print("| batch | arm | ms/step | vs default |")
    print("|---:|---|---:|---:|")
    for batch in args.batch_sizes:
        got, diff = run(method, task, batch, args.steps, args.seed)
        base = got["lean (default)"]
        for name in ARMS:
            print(f"| {batch} | {name} | {got[name] * 1e3:.2f} | {got[name] / base:.3f}x |", flush=True)
        others = ", ".join(f"{name} within {d:.1e}" for name, d in diff.items())
        print(f"|  | (logits: {', '.join(EXACT)} equal to the default with torch.equal; {others}) | | |")
    print(verdict(watch))


if __name__ == "__main__":
    run_script(main)
