"""Does `torch.compile` pay for CPU decoding? Greedy decode throughput with and without it, side by side.

Arms (smollm2-135m-instruct, the same left-padded chat prompts, greedy, --new-tokens tokens each, EOS ignored so
every arm decodes the same number of tokens):

- engine: latentcot's `Engine` as evaluation runs it (eager, oneDNN-packed linear layers);
- HF eager, static cache: `model.generate(cache_implementation="static")`, the set-up HF documents for compiling;
- HF compiled, static cache: the same after `model.forward = torch.compile(model.forward)` (inductor; the
  first call compiles and is not timed: its seconds are printed);
- engine compiled (--engine-compiled): the engine with its model's forward compiled (dynamic shapes, packing
  off, inductor weight freezing); the bench reports the error when torch cannot compile it.

Timings are the best of --repeats runs. Tokens are compared with the engine's.

    python bench/compile.py                       # ~6 minutes on one thread, most of it compiling
    python bench/compile.py --threads 2 --engine-compiled
"""

from __future__ import annotations

import argparse
import time

import torch
from machine import preflight, verdict
from soft_step import QUESTIONS

from latentcot.cli.common import positive_int, run_script
from latentcot.decoding.engine import Engine
from latentcot.decoding.sampling import GenerationConfig
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.models.splice import splice, tokens


def best_of(fn, repeats: int) -> tuple[float, list[list[int]]]:
    best, out = float("inf"), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=positive_int, default=8)
    ap.add_argument("--new-tokens", type=positive_int, default=64)
    ap.add_argument("--repeats", type=positive_int, default=2)
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument("--engine-compiled", action="store_true", help="also try compiling the engine's model call")
    ap.add_argument("--allow-contended", action="store_true", help="measure even when other processes hold the cores")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    bb = Backbone(model, tok, args.model)
    texts = [bb.chat_prompt(QUESTIONS[i % len(QUESTIONS)]) for i in range(args.batch)]
    n = args.new_tokens
    pad = tok.pad_token_id or 0
    prompts = [bb.encode(t) for t in texts]
    rows = [[tokens(p)] for p in prompts]
    batch = splice(rows, bb.embed, pad)  # left-padded: the same ids and mask go to HF generate()
    width = batch.attention_mask.shape[1]
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = batch.attention_mask

    def engine() -> list[list[int]]:
        eng = Engine(bb)
        state = eng.prefill(batch)
        return [o.token_ids for o in eng.generate(state, GenerationConfig(max_new_tokens=n, ignore_eos=True))]

    def hf(**kw) -> list[list[int]]:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=pad, **kw)
        return out[:, width:].tolist()

    engine()
    hf(cache_implementation="static")  # warm-ups
    watch = preflight(args.allow_contended)
    rows_out: list[tuple[str, float, list[list[int]]]] = []
    rows_out.append(("engine (eager, packed)", *best_of(engine, args.repeats)))
    rows_out.append(("HF eager, static cache", *best_of(lambda: hf(cache_implementation="static"), args.repeats)))
    eager_forward = model.forward
    model.forward = torch.compile(eager_forward)
    t0 = time.perf_counter()
    hf(cache_implementation="static")
    compile_s = time.perf_counter() - t0
    rows_out.append(("HF compiled, static cache", *best_of(lambda: hf(cache_implementation="static"), args.repeats)))
    model.forward = eager_forward
    notes = [f"HF compiled: the first call (compiling) took {compile_s:.0f} s, not timed"]
    if args.engine_compiled:
        import torch._inductor.config as inductor_config

        bb.cpu_prepack = False  # dynamo cannot trace the oneDNN packed op; inductor packs frozen weights itself
        inductor_config.freezing = True
        inner = model.model.forward
        model.model.forward = torch.compile(inner, dynamic=True)
        try:
            t0 = time.perf_counter()
            engine()
            notes.append(f"engine compiled: the first call (compiling) took {time.perf_counter() - t0:.0f} s")
            rows_out.append(("engine compiled (dynamic, frozen)", *best_of(engine, args.repeats)))
        except Exception as e:  # noqa: BLE001 - the bench reports what torch says and goes on
            last = [ln for ln in str(e).strip().splitlines() if ln.strip()][-3:]
            notes.append(f"engine compiled: torch could not compile it: {type(e).__name__}: "
                         + " / ".join(ln.strip()[:160] for ln in last))
        finally:
            model.model.forward = inner
    ref = rows_out[0][2]
    eos = set(bb.eos_ids)
    # HF's min_new_tokens masks EOS while the engine (ignore_eos) may pick it: compare up to the engine's first EOS
    cut = [next((i for i, t in enumerate(r) if t in eos), len(r)) for r in ref]
    print(f"{args.model}, batch {args.batch}, {n} greedy tokens per row (EOS ignored), best of {args.repeats}, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print("| arm | s | tokens/s | vs engine | same tokens as engine (up to its first EOS) |")
    print("|---|---:|---:|---:|---:|")
    for name, wall, toks in rows_out:
        same = sum(a[:c] == b[:c] for a, b, c in zip(toks, ref, cut))
        print(f"| {name} | {wall:.2f} | {args.batch * n / wall:.1f} | {rows_out[0][1] / wall:.2f}x | {same}/{len(ref)} |")
    for line in notes:
        print(line)
    print(verdict(watch))


if __name__ == "__main__":
    run_script(main)
