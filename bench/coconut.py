"""Benchmark: batched, KV-cached continuous-thought generation vs the official Coconut way (batch 1, a full
forward over the whole sequence at every latent and answer step), and decode steps per question of codi vs
cot_sft.

    .venv/bin/python bench/coconut.py [--questions 64] [--batch 32] [--demo-dir runs/demo] [--train] [--threads 1]

Both generators run the same Coconut model (the demo's 4-layer d=128 GPT-2 over pointer_chase's words; trained
weights from --demo-dir when that run exists) on the same questions with greedy decoding; the bench checks that
they produce the same tokens. Decode steps of codi vs cot_sft come from the demo's trained runs when present, and
are always also given for a model that writes the gold text (CoT: rationale + answer mark + answer + EOS; CODI:
N thoughts + <eot> + answer mark + answer + EOS). Default run: well under 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from machine import preflight, verdict

from latentcot.decoding.sampling import GenerationConfig
from latentcot.methods import build_method
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.tasks import get_task
from latentcot.training.checkpoint import load_weights


@torch.no_grad()
def cacheless_generate(method, ex, task, n: int, max_new_tokens: int) -> list[int]:
    """One question, no KV cache: every latent and token step re-runs the model over the whole sequence."""
    bb = method.backbone
    ids = torch.tensor(method.prompt_ids(ex, task) + [method.bot_id])
    seq = bb.embed(ids)  # (T, d)
    for _ in range(n):
        h = bb.model(inputs_embeds=seq[None], output_hidden_states=True).hidden_states[-1][0, -1]  # (d,)
        seq = torch.cat([seq, h[None]], dim=0)  # (T+1, d)
    seq = torch.cat([seq, bb.embed(torch.tensor([method.eot_id]))], dim=0)
    out: list[int] = []
    eos = set(bb.eos_ids)
    for _ in range(max_new_tokens):
        t = int(bb.model(inputs_embeds=seq[None]).logits[0, -1].argmax())
        if t in eos:
            break
        out.append(t)
        seq = torch.cat([seq, bb.embed(torch.tensor([t]))], dim=0)
    return out


def train_demo_coconut(demo_dir: Path) -> None:
    """Trains the demo's pointer_chase cot_sft and coconut arms (the demo's own settings and code) into demo_dir."""
    from latentcot.demo import DemoSettings, arms, run_arm

    s = DemoSettings()
    for arm in arms(s, "pointer_chase"):
        if arm.method in ("cot_sft", "coconut"):
            run_arm(s, "pointer_chase", arm, demo_dir, progress=False)


def throughput(args: argparse.Namespace) -> dict:
    task = get_task("pointer_chase", k=args.thoughts, num_test=args.questions)
    exs = task.load("test")[: args.questions]
    torch.manual_seed(0)
    m = build_method("coconut", {"max_stage": args.thoughts}, Backbone(*load_model("scratch-gpt2:pointer_chase")))
    trained = Path(args.demo_dir) / "pointer_chase" / "coconut"
    if (trained / "trainable.safetensors").is_file() and args.thoughts == 4:
        m.load_trainable_state_dict(load_weights(trained), str(trained))
    m.eval()
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens)
    m.generate(exs[: args.batch], task, gen, None)  # warm-up
    sub = exs[: args.baseline_questions]
    t_batched = t_single = float("inf")
    for _ in range(args.repeats):  # best of: a shared machine only ever slows a run down
        t0 = time.perf_counter()
        batched = []
        for i in range(0, len(exs), args.batch):
            batched += m.generate(exs[i : i + args.batch], task, gen, None)
        t_batched = min(t_batched, time.perf_counter() - t0)
        t0 = time.perf_counter()
        single = [cacheless_generate(m, ex, task, args.thoughts, args.max_new_tokens) for ex in sub]
        t_single = min(t_single, time.perf_counter() - t0)
    agree = sum(o.token_ids == s for o, s in zip(batched, single)) / len(single)
    qps_b, qps_s = len(exs) / t_batched, len(sub) / t_single
    return {"questions": len(exs), "baseline_questions": len(sub), "thoughts": args.thoughts,
            "batched_qps": qps_b, "cacheless_batch1_qps": qps_s, "speedup": qps_b / qps_s, "same_tokens": agree,
            "trained_weights": (trained / "trainable.safetensors").is_file() and args.thoughts == 4}


def decode_steps(args: argparse.Namespace) -> list[dict]:
    rows = []
    for task_name in ("pointer_chase", "pointer_chase2"):
        task = get_task(task_name, k=4, num_test=100)
        exs = task.load("test")
        cot = sum(len(task.target(ex).split()) + 1 for ex in exs) / len(exs)  # rationale, ####, answer, EOS
        codi = 4 + 1 + 1 + 1 + 1  # N thoughts, <eot>, ####, answer, EOS
        row = {"task": task_name, "gold_cot_sft": cot, "gold_codi": codi}
        for method in ("cot_sft", "codi"):
            p = Path(args.demo_dir) / task_name / method / "metrics.json"
            if p.is_file():
                m = json.loads(p.read_text())
                row[f"demo_{method}"] = m["decode_steps"]["mean"]
                row[f"demo_{method}_acc"] = m["accuracy_strict"]["mean"]
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--baseline-questions", type=int, default=32, help="questions timed for the slow baseline")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--thoughts", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2, help="timings are the best of this many runs")
    p.add_argument("--demo-dir", default="runs/demo")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train", action="store_true",
                   help="train the demo's cot_sft and coconut pointer_chase arms into --demo-dir when they are missing")
    p.add_argument("--allow-contended", action="store_true", help="measure even when other processes hold the cores")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    trained = Path(args.demo_dir) / "pointer_chase" / "coconut" / "trainable.safetensors"
    if args.train and not trained.is_file():
        print(f"training the demo's pointer_chase cot_sft and coconut arms into {args.demo_dir} (the demo's settings)")
        train_demo_coconut(Path(args.demo_dir))
    watch = preflight(args.allow_contended)
    t = throughput(args)
    print(f"Coconut generation, {t['thoughts']} thoughts + <eot> + up to {args.max_new_tokens} answer tokens "
          f"({'trained demo weights' if t['trained_weights'] else 'untrained weights'}):")
    print("| generator | questions | questions/s |")
    print("|---|---:|---:|")
    print(f"| Engine, batch {args.batch}, KV cache | {t['questions']} | {t['batched_qps']:.1f} |")
    print(f"| batch 1, no cache (official) | {t['baseline_questions']} | {t['cacheless_batch1_qps']:.1f} |")
    print(f"speedup {t['speedup']:.1f}x (target >= 20x); identical tokens on {100 * t['same_tokens']:.0f}% of questions")
    print()
    print("Decode steps per question, codi vs cot_sft (k=4):")
    print("| task | cot_sft (gold text) | codi (N=4) | cot_sft (demo) | codi (demo) |")
    print("|---|---:|---:|---:|---:|")
    for r in decode_steps(args):
        demo = [f"{r[k]:.1f} ({r[k + '_acc']:.0f}%)" if k in r else "-" for k in ("demo_cot_sft", "demo_codi")]
        print(f"| {r['task']} | {r['gold_cot_sft']:.1f} | {r['gold_codi']:.1f} | {demo[0]} | {demo[1]} |")
    print(f"weights: {trained if t['trained_weights'] else 'untrained (run with --train or `latentcot demo` first)'}; "
          f"{torch.get_num_threads()} thread(s)")
    print(verdict(watch))


if __name__ == "__main__":
    main()
