"""Where a decode step's time goes on a real model: prefill rate by batch size, and the ops of a decode step.

The engine-speed work's profile, as a command (README "Where the time goes"):

1. prefill rate: real positions per second of one forward over B rows of `--prompt-len` tokens, B = 1..32, no
   padding (the cost of a CPU forward per position hardly depends on the batch, so padding is pure waste);
2. the padding in one batch of `--questions` GSM8K cot prompts: widest vs mean prompt length;
3. a torch profiler table of `--steps` greedy decode steps of the engine at batch `--questions`, after a prefill
   of those prompts, with the KV cache as the engine keeps it (`--plain-cache` for concatenation, as before
   SlackLayer), sorted by self CPU time.

    python bench/profile_step.py                        # smollm2-135m-instruct, 1 thread
    python bench/profile_step.py --plain-cache          # the same with the cache grown by torch.cat
    python bench/profile_step.py --no-prepack           # the same with plain F.linear (no oneDNN-packed weights)
    python bench/profile_step.py --questions 8 --temperature 0.6 --top-p 0.95 [--nucleus-sort]   # sampled steps

With --temperature the profiled steps sample their tokens (`sampling.next_tokens` with per-row streams, top-p
--top-p) instead of taking the argmax; --nucleus-sort cuts the nucleus by a sort of the whole vocabulary, as the
engine did before 2026-12-01 (`sampling.NUCLEUS_WIDTHS = ()`).
"""

from __future__ import annotations

import argparse
import time

import torch
from machine import preflight, verdict
from torch.profiler import ProfilerActivity, profile

import latentcot.decoding.engine as engine_mod
from latentcot.cli.common import positive_int, run_script
from latentcot.decoding import sampling
from latentcot.decoding.sampling import GenerationConfig, RowRandom, next_tokens, row_seed
from latentcot.methods import build_method
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.tasks import get_task


def prefill_rate(bb: Backbone, batch: int, length: int, seconds: float) -> float:
    """Real positions per second of one unpadded forward over `batch` rows of `length` tokens."""
    V = bb.vocab_size  # ids from 100 up (past most special tokens), inside the vocabulary (tiny-llama has 261)
    ids = torch.randint(min(100, V // 2), min(1000, V), (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch, length, dtype=torch.long)
    pos = torch.arange(length).expand(batch, length)
    with torch.no_grad():
        bb.forward(bb.embed(ids[:, :8]), mask[:, :8], pos[:, :8], use_cache=True, logits_to_keep=1)  # warm-up
        t0, n = time.perf_counter(), 0
        while n == 0 or time.perf_counter() - t0 < seconds:
            bb.forward(bb.embed(ids), mask, pos, use_cache=True, logits_to_keep=1)
            n += 1
    return batch * length * n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--questions", type=positive_int, default=32, help="GSM8K cot prompts decoded at once")
    ap.add_argument("--steps", type=positive_int, default=8, help="decode steps profiled (after 16 unprofiled ones)")
    ap.add_argument("--prompt-len", type=positive_int, default=118, help="row length of the prefill-rate probe")
    ap.add_argument("--seconds", type=float, default=4.0, help="time per prefill-rate probe")
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument("--plain-cache", action="store_true", help="grow the KV cache by concatenation (no SlackLayer)")
    ap.add_argument("--no-prepack", action="store_true", help="plain F.linear in decode steps (run.cpu_prepack=false)")
    ap.add_argument("--temperature", type=float, default=0.0, help="> 0: the profiled steps sample (default greedy)")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus mass when sampling")
    ap.add_argument("--nucleus-sort", action="store_true", help="cut the nucleus by a full sort (the engine before)")
    ap.add_argument("--allow-contended", action="store_true", help="measure even when other processes hold the cores")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.plain_cache:
        engine_mod.use_slack = lambda cache: cache
    if args.nucleus_sort:
        sampling.NUCLEUS_WIDTHS = ()
    bb = Backbone(*load_model(args.model), args.model)
    bb.cpu_prepack = not args.no_prepack
    task = get_task("gsm8k")
    exs = task.load("test")[: args.questions]
    method = build_method("cot", {}, bb)
    method.eval()
    watch = preflight(args.allow_contended)
    print(f"{args.model}, {args.threads} thread(s)")
    print("prefill rate (real positions/s, no padding):")
    for b in (1, 4, 8, 16, 32):
        print(f"  {b:2d} rows x {args.prompt_len}: {prefill_rate(bb, b, args.prompt_len, args.seconds):.0f}", flush=True)
    lengths = [len(method.prompt_ids(ex, task)) for ex in exs]
    width, mean = max(lengths), sum(lengths) / len(lengths)
    print(f"{len(exs)} GSM8K cot prompts: mean {mean:.1f} tokens, widest {width}: one padded batch computes "
          f"{1 - mean / width:.0%} padding")
    eng = method.engine
    gen = GenerationConfig(temperature=args.temperature, top_p=args.top_p)
    rand = RowRandom([row_seed(0, ex.id, 0) for ex in exs])
    with torch.no_grad():
        state = method.start_state(exs, task)
        for _ in range(16):
            state = eng.step_tokens(state, next_tokens(state.logits, gen, rand))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                state = eng.step_tokens(state, next_tokens(state.logits, gen, rand))
    cache = "concatenated (--plain-cache)" if args.plain_cache else "SlackLayer"
    linear = "plain F.linear (--no-prepack)" if args.no_prepack else "oneDNN-packed weights"
    tokens = "greedy" if gen.greedy else f"sampled at temperature {gen.temperature}, top-p {gen.top_p}" + (
        " (nucleus by a full sort)" if args.nucleus_sort else "")
    print(f"decode steps at batch {len(exs)}, context ~{state.attention_mask.shape[1]}, KV cache {cache}, "
          f"linear layers {linear}, tokens {tokens}:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    print(verdict(watch))


if __name__ == "__main__":
    run_script(main)
