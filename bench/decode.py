"""Decode engine vs HF `generate()`: time per decode step on the same model, batch and number of steps.

SPEC section 6 target: the engine's step costs at most 1.25x HF generate's. Both sides decode greedily, with
EOS ignored so every row takes exactly `--steps` steps, from the same left-padded prompts. A third column times the
engine with HF's own forward in place of its lean model call (`models/fastpath.py`, `Engine.fast = False`), so the
lean call's share of the engine's speed is measured in the same run.

    .venv/bin/python bench/decode.py                       # tiny-llama, batch 1/8/32
    .venv/bin/python bench/decode.py --model smollm2-135m-instruct --batch-sizes 1,8 --steps 32
    python bench/decode.py --device cuda --dtype bfloat16 --shape 1024,16,16   # a random ~250M Llama built here
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import preflight, verdict

from latentcot.cli.common import positive_int, positive_ints, run_script
from latentcot.decoding.engine import Engine
from latentcot.decoding.sampling import GenerationConfig
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.models.splice import splice, tokens

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did she sell?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. How much more money does Betty need?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
]


def prompts(bb: Backbone, n: int) -> list[str]:
    return [bb.chat_prompt(QUESTIONS[i % len(QUESTIONS)] + " " * (i % 3)) for i in range(n)]


def time_engine(bb: Backbone, texts: list[str], steps: int, fast: bool = True) -> float:
    eng = Engine(bb)
    eng.fast = fast
    rows = [[tokens(bb.encode(t))] for t in texts]
    cfg = GenerationConfig(max_new_tokens=steps, ignore_eos=True)
    _sync()
    t0 = time.perf_counter()
    out = eng.generate(eng.prefill(splice(rows, bb.embed, bb.tokenizer.pad_token_id)), cfg)
    _sync()
    dt = time.perf_counter() - t0
    assert all(len(o.token_ids) == steps for o in out)
    return dt


def time_hf(bb: Backbone, texts: list[str], steps: int) -> float:
    enc = bb.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(bb.device)
    _sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = bb.model.generate(
            **enc, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=bb.tokenizer.pad_token_id
        )
    _sync()
    dt = time.perf_counter() - t0
    assert out.shape[1] - enc["input_ids"].shape[1] == steps
    return dt


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def load(args: argparse.Namespace) -> Backbone:
    """The model: an alias, or with --shape d,layers,heads a random Llama with tiny-llama's tokenizer (no files)."""
    if args.shape:
        from latentcot.models.tiny import build_tiny, tiny_model

        d, layers, heads = args.shape
        _, tok = tiny_model("tiny-llama")
        model = build_tiny("llama", len(tok), d=d, layers=layers, heads=heads)
        name = f"random llama d={d} layers={layers} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params)"
    else:
        model, tok = load_model(args.model)
        name = args.model
    model = model.to(device=args.device, dtype=getattr(torch, args.dtype))
    return Backbone(model, tok, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--batch-sizes", default="1,8,32", type=positive_ints)
    ap.add_argument("--steps", type=positive_int, default=64)
    ap.add_argument("--repeats", type=positive_int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--shape", type=positive_ints,
                    help="d,layers,heads: a random Llama of that shape instead of --model")
    ap.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads")
    ap.add_argument("--allow-contended", action="store_true", help="measure even when other processes hold the cores")
    args = ap.parse_args()
    if args.shape and len(args.shape) != 3:
        ap.error(f"argument --shape: expected three numbers d,layers,heads, got {len(args.shape)}")
    torch.set_num_threads(args.threads)
    bb = load(args)
    watch = preflight(args.allow_contended)
    print(f"model {bb.name} on {torch.cuda.get_device_name() if bb.device.type == 'cuda' else 'cpu'} in {args.dtype}, {args.steps} decode steps, greedy, median of {args.repeats} runs (prefill included on both sides)")
    print(f"{'batch':>5} {'engine ms/step':>15} {'HF ms/step':>11} {'ratio':>6} {'engine, HF forward':>19} "
          f"{'lean gain':>9}")
    for bs in args.batch_sizes:
        texts = prompts(bb, bs)
        time_engine(bb, texts, 4), time_engine(bb, texts, 4, fast=False), time_hf(bb, texts, 4)  # warm-up
        eng, slow, hf = [], [], []
        for _ in range(args.repeats):  # interleaved so every side sees the same machine load
            eng.append(time_engine(bb, texts, args.steps))
            slow.append(time_engine(bb, texts, args.steps, fast=False))
            hf.append(time_hf(bb, texts, args.steps))
        e, s, h = (statistics.median(x) / args.steps * 1e3 for x in (eng, slow, hf))
        print(f"{bs:>5} {e:>15.2f} {h:>11.2f} {e / h:>5.2f}x {s:>19.2f} {s / e:>8.2f}x")
    print(f"{torch.get_num_threads()} thread(s); {verdict(watch)}")


if __name__ == "__main__":
    run_script(main)
