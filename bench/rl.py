"""RL rollouts and the log-probability recompute (Butt et al., arXiv 2509.19170): speed and memory.

1. Rollout throughput (trajectories/s) of `rloo`'s batched, KV-cached rollouts in soft and fuzzy mode against
   hard mode at the same batch (prompts x group size) and the same number of steps: the end marker is one the
   model never writes, so every row thinks for exactly --cot steps and then answers --answer tokens. SPEC
   section 6 target: soft >= 0.8x hard. Modes are interleaved over --repeats rounds; medians are reported.
2. Peak memory of one training step (forward + backward) of the teacher-forced recompute (soft records: prompt
   + --cot noisy vectors with a Gaussian term each + answer tokens) against a plain SFT step (cot_sft's loss) on
   token rows of the same shape, each in a fresh process (peak RSS growth over the process's state before the
   step: model loaded, batch built).

    .venv/bin/python bench/rl.py                                        # tiny-llama, 4 x 8 rows, ~1 minute
    .venv/bin/python bench/rl.py --model smollm2-135m-instruct --cot 32 --answer 8 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import time

import torch
from machine import preflight, verdict

from latentcot.cli.common import positive_int, run_script
from latentcot.decoding.sampling import GenerationConfig
from latentcot.methods import build_method
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.tasks.base import Example, Extracted, Task

MARKER = "Zebra-Quokka"  # written by no model within the budget: every row runs the full CoT


class _Sums(Task):
    name = "bench_sums"
    splits = ("test",)

    def load(self, split=None):
        return [Example(f"q{i}", f"What is {i + 3} plus {2 * i + 5}? Think step by step.", str(3 * i + 8))
                for i in range(64)]

    def extract(self, text):
        return Extracted(None, None)

    def is_equivalent(self, pred, gold):
        return False


def _method(model: str, mode: str, a) -> object:
    m, tok = load_model(model)
    settings = {"rollout_mode": mode, "think_end": MARKER, "max_cot_tokens": a.cot, "max_answer_tokens": a.answer,
                "group_size": a.group, "prompts_per_step": a.prompts, "rollout_temperature": 1.0}
    if a.lora:
        settings["lora_r"] = 8
    method = build_method("rloo", settings, Backbone(m, tok, model))
    # EOS never ends a row (nor a CoT whose top-1 token is EOS): every mode runs the same number of steps
    method.rollout_generation = lambda: GenerationConfig(max_new_tokens=a.answer, temperature=1.0, ignore_eos=True)
    return method


def throughput(a) -> dict:
    task = _Sums()
    examples = task.load()[: a.prompts]
    methods = {mode: _method(a.model, mode, a) for mode in ("hard", "soft", "fuzzy")}
    times: dict[str, list[float]] = {mode: [] for mode in methods}
    steps: dict[str, float] = {}
    for r in range(a.repeats + 1):
        for mode, m in methods.items():
            m.step = r
            t0 = time.perf_counter()
            rows, outs, recs = m.rollout_rows(examples, task)
            dt = time.perf_counter() - t0
            if r:  # the first round warms up
                times[mode].append(dt)
            steps[mode] = statistics.fmean(len(x.fed) for x in recs)
    rows = len(examples) * a.group
    out = {mode: {"trajectories_per_s": rows / statistics.median(t), "seconds": statistics.median(t),
                  "inputs_per_row": steps[mode]} for mode, t in times.items()}
    for mode in ("soft", "fuzzy"):
        out[mode]["vs_hard"] = out[mode]["trajectories_per_s"] / out["hard"]["trajectories_per_s"]
    return out


def _peak_step(kind: str, a, queue) -> None:
    """In a fresh process: the RSS growth of one forward + backward of `kind` (recompute or sft)."""
    torch.set_num_threads(1)
    from latentcot.models.splice import tokens
    from latentcot.training.rollout import GAUSS, TOKEN, RolloutRecord

    m = _method(a.model, "soft", a)
    bb = m.backbone
    g = torch.Generator().manual_seed(0)
    V, d = bb.vocab_size, bb.hidden_size
    B = a.prompts * a.group
    prompt = torch.randint(0, V, (B, a.prompt_len), generator=g).tolist()
    answer = torch.randint(0, V, (B, a.answer), generator=g).tolist()
    if kind == "recompute":
        recs = []
        for b in range(B):
            fed = [v for v in torch.randn(a.cot, d, generator=g) * 0.05] + answer[b]
            choices = [(i, GAUSS, -1) for i in range(a.cot)] + [(a.cot + j, TOKEN, t) for j, t in enumerate(answer[b])]
            recs.append(RolloutRecord(prompt[b], fed, choices))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        m.replay(recs).logp.mean().backward()
    else:
        sft = torch.randint(0, V, (B, a.cot), generator=g).tolist()
        rows = [[tokens(prompt[b]), tokens(sft[b] + answer[b], labels=True)] for b in range(B)]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        m.sft_loss(rows).loss.backward()
    secs = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"peak_growth_mib": (after - before) / 1024, "seconds": secs})


def memory(a) -> dict:
    ctx = mp.get_context("spawn")
    out = {}
    for kind in ("recompute", "sft"):
        q = ctx.Queue()
        p = ctx.Process(target=_peak_step, args=(kind, a, q))
        p.start()
        out[kind] = q.get()
        p.join()
    out["recompute_vs_sft"] = out["recompute"]["peak_growth_mib"] / max(out["sft"]["peak_growth_mib"], 1e-9)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--prompts", type=positive_int, default=4)
    p.add_argument("--group", type=positive_int, default=8)
    p.add_argument("--cot", type=positive_int, default=32, help="CoT steps per row")
    p.add_argument("--answer", type=positive_int, default=8, help="answer tokens per row")
    p.add_argument("--prompt-len", type=positive_int, default=48, help="prompt tokens in the memory rows")
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--lora", action="store_true", help="LoRA r=8 (else full fine-tuning)")
    p.add_argument("--allow-contended", action="store_true", help="measure even when other processes hold the cores")
    a = p.parse_args()
    torch.set_num_threads(1)
    load_model(a.model)  # a bad --model is one line before the machine check, as in every bench
    watch = preflight(a.allow_contended)
    load = os.getloadavg()
    res = {"model": a.model, "batch": a.prompts * a.group, "cot": a.cot, "answer": a.answer,
           "loadavg_1min_before": load[0], "throughput": throughput(a), "memory": memory(a),
           "loadavg_1min_after": os.getloadavg()[0]}
    t = res["throughput"]
    for mode in ("hard", "soft", "fuzzy"):
        ratio = f" ({t[mode]['vs_hard']:.2f}x hard)" if mode != "hard" else ""
        print(f"{mode:5s} rollouts: {t[mode]['trajectories_per_s']:.2f} trajectories/s{ratio}, "
              f"{t[mode]['inputs_per_row']:.0f} inputs/row")
    mem = res["memory"]
    print(f"peak memory growth of one step: recompute {mem['recompute']['peak_growth_mib']:.1f} MiB, "
          f"SFT {mem['sft']['peak_growth_mib']:.1f} MiB ({mem['recompute_vs_sft']:.2f}x)")
    print(f"load average (1 min) {res['loadavg_1min_before']:.1f} before, {res['loadavg_1min_after']:.1f} after")
    print(verdict(watch))
    print(json.dumps(res))


if __name__ == "__main__":
    run_script(main)
