"""Benchmark: batched, KV-cached continuous-thought generation vs the official Coconut way (batch 1, a full
forward over the whole sequence at every latent and answer step), and decode steps per question of codi vs
cot_sft.

    .venv/bin/python bench/coconut.py [--demo-dir runs/demo] [--task pointer_chase2] [--batch N] [--train]

What a user runs: the demo's coconut arm (`latentcot demo`, default task pointer_chase2 with `cur nxt` steps) as
its evaluation ran it. When DEMO_DIR/TASK/coconut holds a finished run, the bench rebuilds method, model, task and
generation settings from that run's own config.yaml (the file `latentcot eval` wrote) and loads its trained
weights; otherwise it uses the demo's settings (DemoSettings) with untrained weights, or trains the arm first with
--train (the demo's own code: cot_sft then coconut, ~15 minutes of CPU on pointer_chase2). A --demo-dir that does
not exist is an error (a mistyped folder would otherwise measure untrained weights), unless --train makes it. The
batch size is the run's own (the demo evaluates 100 questions per batch) unless --batch is given. Both generators
decode greedily to EOS or the run's max_new_tokens, and the bench checks that they produce the same tokens.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from machine import preflight, verdict

from latentcot.cli.common import nonnegative_int, positive_int, run_script
from latentcot.decoding.sampling import GenerationConfig
from latentcot.tasks import get_task
from latentcot.training.checkpoint import load_weights


@torch.no_grad()
def cacheless_generate(method, ex, task, n: int, max_new_tokens: int) -> list[int]:
    """One question, no KV cache: every latent and token step re-runs the model over the whole sequence.

    Position ids are explicit: consecutive, except that each thought advances them by the method's
    `thought_stride` when it has one (1, the paper's, gives the model's own default positions). Each thought goes
    through the method's `to_input` (as it is, or rescaled with `thought_norm=embedding`)."""
    bb = method.backbone
    stride = int(getattr(method.cfg, "thought_stride", 1))
    ids = torch.tensor(method.prompt_ids(ex, task) + [method.bot_id])
    seq = bb.embed(ids)  # (T, d)
    pos = list(range(len(ids)))

    def run(**kw):
        return bb.model(inputs_embeds=seq[None], position_ids=torch.tensor([pos]), **kw)

    for _ in range(n):
        h = run(output_hidden_states=True).hidden_states[-1][0, -1]  # (d,)
        h = method.to_input(h[None])  # (1, d): the method's own thought transform (thought_norm)
        seq = torch.cat([seq, h], dim=0)  # (T+1, d)
        pos.append(pos[-1] + stride)
    seq = torch.cat([seq, bb.embed(torch.tensor([method.eot_id]))], dim=0)
    pos.append(pos[-1] + 1)
    out: list[int] = []
    eos = set(bb.eos_ids)
    for _ in range(max_new_tokens):
        t = int(run().logits[0, -1].argmax())
        if t in eos:
            break
        out.append(t)
        seq = torch.cat([seq, bb.embed(torch.tensor([t]))], dim=0)
        pos.append(pos[-1] + 1)
    return out


def train_demo_coconut(demo_dir: Path, task: str) -> None:
    """Trains the demo's cot_sft and coconut arms of `task` (the demo's own settings and code) into demo_dir."""
    from latentcot.demo import DemoSettings, arms, run_arm

    s = DemoSettings()
    for arm in arms(s, task):
        if arm.method in ("cot_sft", "coconut"):
            run_arm(s, task, arm, demo_dir, progress=False)


def demo_coconut(demo_dir: Path, task: str):
    """(method, task, generation settings, batch size, weights dir or None) of the demo's coconut arm on `task`.

    A finished run is rebuilt from its own config.yaml and trained weights; otherwise from the demo's settings."""
    from latentcot.config import to_dict
    from latentcot.demo import DemoSettings, arms
    from latentcot.pipeline import build, resolve

    run = demo_dir / task / "coconut"
    if (run / "config.yaml").is_file() and (run / "trainable.safetensors").is_file():
        res = resolve({}, config_file=str(run / "config.yaml"))
        res.run.device = "cpu"
        weights: Path | None = run
    else:
        s = DemoSettings()
        arm = next(a for a in arms(s, task) if a.method == "coconut")
        res = resolve({"method": "coconut", "model": s.model(task), "task": task, "k": s.k, "num_nodes": s.num_nodes,
                       "num_test": s.eval_questions, "batch_size": 100, "max_new_tokens": 4 * s.k + 8, "device": "cpu",
                       **s.task_settings.get(task, {}), **arm.settings})
        weights = None
    torch.manual_seed(0)  # untrained weights: the same ones every run
    method, tk = build(res)
    if weights is not None:
        method.load_trainable_state_dict(load_weights(weights), str(weights))
    method.eval()
    gen = GenerationConfig(**to_dict(res.generation))
    return method, tk, gen, res.run.batch_size, weights


def throughput(args: argparse.Namespace) -> dict:
    m, task, gen, batch, weights = demo_coconut(Path(args.demo_dir), args.task)
    batch = args.batch or batch
    exs = task.load("test")[: args.questions]
    m.generate(exs[:batch], task, gen, None)  # warm-up
    sub = exs[: args.baseline_questions]
    thoughts = m.eval_thoughts
    t_batched = t_single = float("inf")
    for _ in range(args.repeats):  # best of: a shared machine only ever slows a run down
        t0 = time.perf_counter()
        batched = []
        for i in range(0, len(exs), batch):
            batched += m.generate(exs[i : i + batch], task, gen, None)
        t_batched = min(t_batched, time.perf_counter() - t0)
        t0 = time.perf_counter()
        single = [cacheless_generate(m, ex, task, thoughts, gen.max_new_tokens) for ex in sub]
        t_single = min(t_single, time.perf_counter() - t0)
    agree = sum(o.token_ids == s for o, s in zip(batched, single)) / len(single)
    correct = sum(task.score(ex, o.text)["correct_strict"] for o, ex in zip(batched, exs)) / len(exs)
    qps_b, qps_s = len(exs) / t_batched, len(sub) / t_single
    return {"questions": len(exs), "baseline_questions": len(sub), "thoughts": thoughts, "batch": batch,
            "batched_qps": qps_b, "cacheless_batch1_qps": qps_s, "speedup": qps_b / qps_s, "same_tokens": agree,
            "weights": weights, "model": m.backbone.name, "max_new_tokens": gen.max_new_tokens,
            "tokens": sum(len(o.token_ids) for o in batched) / len(batched), "correct": correct}


def decode_steps(args: argparse.Namespace) -> list[dict]:
    from latentcot.demo import DemoSettings

    rows = []
    for task_name in ("pointer_chase", "pointer_chase2"):
        task = get_task(task_name, k=4, num_test=100, **DemoSettings().task_settings.get(task_name, {}))
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
    p.add_argument("--questions", type=positive_int, default=200)
    p.add_argument("--baseline-questions", type=positive_int, default=32, help="questions timed for the slow baseline")
    p.add_argument("--batch", type=nonnegative_int, default=0,
                   help="batch size of the engine (0 = the run's own batch_size)")
    p.add_argument("--task", default="pointer_chase2", help="the demo task whose coconut arm is measured")
    p.add_argument("--repeats", type=positive_int, default=2, help="timings are the best of this many runs")
    p.add_argument("--demo-dir", help="the demo's output folder (default runs/demo; when named, it must exist unless "
                   "--train makes it)")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--train", action="store_true",
                   help="train the demo's cot_sft and coconut arms of --task into --demo-dir when they are missing")
    p.add_argument("--allow-contended", action="store_true", help="measure even when other processes hold the cores")
    args = p.parse_args()
    if args.demo_dir is not None and not args.train and not Path(args.demo_dir).is_dir():
        p.error(f"--demo-dir {args.demo_dir}: no such folder (run `latentcot demo --out {args.demo_dir}` first, or "
                "add --train)")
    args.demo_dir = args.demo_dir or "runs/demo"
    torch.set_num_threads(args.threads)
    trained = Path(args.demo_dir) / args.task / "coconut" / "trainable.safetensors"
    if args.train and not trained.is_file():
        print(f"training the demo's {args.task} cot_sft and coconut arms into {args.demo_dir} (the demo's settings)")
        train_demo_coconut(Path(args.demo_dir), args.task)
    watch = preflight(args.allow_contended)
    t = throughput(args)
    print(f"Coconut generation on {args.task} ({t['model']}): {t['thoughts']} thoughts + <eot> + up to "
          f"{t['max_new_tokens']} answer tokens, greedy, EOS on ({t['tokens']:.1f} tokens per question); "
          + (f"trained weights of {t['weights']} (strict accuracy {100 * t['correct']:.1f}% on these questions)"
             if t["weights"] else "UNTRAINED weights (run `latentcot demo` or pass --train first)"))
    print("| generator | questions | questions/s |")
    print("|---|---:|---:|")
    print(f"| Engine, batch {t['batch']}, KV cache | {t['questions']} | {t['batched_qps']:.1f} |")
    print(f"| batch 1, no cache (official) | {t['baseline_questions']} | {t['cacheless_batch1_qps']:.1f} |")
    print(f"speedup {t['speedup']:.1f}x (target >= 20x); identical tokens on {100 * t['same_tokens']:.0f}% of questions; "
          f"{torch.get_num_threads()} thread(s)")
    print()
    print("Decode steps per question, codi vs cot_sft (k=4):")
    print("| task | cot_sft (gold text) | codi (N=4) | cot_sft (demo) | codi (demo) |")
    print("|---|---:|---:|---:|---:|")
    for r in decode_steps(args):
        demo = [f"{r[k]:.1f} ({r[k + '_acc']:.0f}%)" if k in r else "-" for k in ("demo_cot_sft", "demo_codi")]
        print(f"| {r['task']} | {r['gold_cot_sft']:.1f} | {r['gold_codi']:.1f} | {demo[0]} | {demo[1]} |")
    print(verdict(watch))


if __name__ == "__main__":
    run_script(main)
