"""SoftCoT evaluation throughput: batched and left-padded (latentcot) vs one question at a time (batch 1, as the
official SoftCoT code evaluates), same models, questions and greedy decoding.

    .venv/bin/python bench/softcot.py                          # tiny models, about 30-60 s on 2 CPU cores
    .venv/bin/python bench/softcot.py --model smollm2-135m-instruct --assistant smollm2-135m-instruct \\
        --questions 16 --batch-size 16 --max-new-tokens 32

Prints questions/s of each mode, their ratio, and whether the greedy outputs agree.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from machine import preflight, verdict

from latentcot.cli.common import positive_int, run_script
from latentcot.decoding.sampling import GenerationConfig
from latentcot.methods import build_method
from latentcot.methods.base import generate_batched
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.tasks.base import Example


def questions(n: int) -> tuple[list[Example], object]:
    """The first n GSM8K test questions when the data is found, else synthetic sums; and the task."""
    from latentcot.tasks import get_task

    here = Path(__file__).resolve().parents[1]
    data = os.environ.get("LATENTCOT_DATA") or str(here.parent / "shared" / "data")
    task = get_task("gsm8k", data_dir=data)
    try:
        return task.load("test")[:n], task
    except Exception:  # no data here: synthetic questions of GSM8K-like length
        qs = [Example(str(i), f"Tom has {i + 3} apples and buys {7 * i + 2} more, then gives away {i}. How many are left?", str(8 * i + 5)) for i in range(n)]
        return qs, task


def timed(method, examples, task, gen, batch_size: int) -> tuple[float, list[list[int]]]:
    t0 = time.perf_counter()
    ids: list[list[int]] = []
    for s in range(0, len(examples), batch_size):
        ids += [o.token_ids for o in generate_batched(method, examples[s : s + batch_size], task, gen, None)]
    return time.perf_counter() - t0, ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-gpt2", help="backbone alias")
    p.add_argument("--assistant", default="tiny-llama", help="assistant alias")
    p.add_argument("--questions", type=positive_int, default=32)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--max-new-tokens", type=positive_int, default=128)
    p.add_argument("--num-thoughts", type=positive_int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch CPU threads (tiny models gain nothing from more)")
    p.add_argument("--allow-contended", action="store_true", help="measure even when other processes hold the cores")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    torch.manual_seed(0)
    method = build_method("softcot", {"assistant": args.assistant, "num_thoughts": args.num_thoughts}, Backbone(model, tok, args.model))
    examples, task = questions(args.questions)
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens)
    timed(method, examples[:2], task, gen, 2)  # warm-up
    watch = preflight(args.allow_contended)
    t_batch, ids_batch = timed(method, examples, task, gen, args.batch_size)
    t_one, ids_one = timed(method, examples, task, gen, 1)
    n = len(examples)
    tokens = sum(len(i) for i in ids_batch)
    print(f"SoftCoT eval: backbone {args.model}, assistant {args.assistant}, {n} questions, N={args.num_thoughts}, "
          f"max_new_tokens={args.max_new_tokens} ({tokens / n:.1f} generated/question), {torch.get_num_threads()} threads, {args.device}")
    print(f"{'mode':<22}{'batch':>6}{'seconds':>10}{'questions/s':>13}")
    print(f"{'batched, left-padded':<22}{args.batch_size:>6}{t_batch:>10.2f}{n / t_batch:>13.2f}")
    print(f"{'one at a time':<22}{1:>6}{t_one:>10.2f}{n / t_one:>13.2f}")
    print(f"ratio (batched / one at a time): {t_one / t_batch:.1f}x")
    same = sum(a == b for a, b in zip(ids_batch, ids_one))
    print(f"greedy outputs identical: {same}/{n}")
    print(verdict(watch))


if __name__ == "__main__":
    run_script(main)
