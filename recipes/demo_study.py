"""The demo study: which settings let Coconut compress 2-token steps into one continuous thought each?

Trains the demo's `cot_sft` on pointer_chase2 (4 hops), then `coconut` from it (stages 1..4, one thought per
step), with the settings given, and prints accuracy, decode steps, the loss at the end of each stage and the CPU
seconds. Each setting gets its own directory under --out, so the runs are reused when repeated.

    # the demo's former settings: `n7 ;` steps, constant lr 1e-3, AdamW defaults, 200 steps per stage
    python recipes/demo_study.py --format sep --sft-steps 1200 --stage-steps 200 --plain
    # the prototype's settings (SPEC section 3): `cur nxt` steps, lr 2e-3 / 1e-3, warmup + cosine per stage
    python recipes/demo_study.py --format pair --sft-steps 600 --stage-steps 300
    # stage 2 of `cur nxt` for 900 steps (stage 1: 300): does the plateau break?
    python recipes/demo_study.py --format pair --max-stage 2 --no-final-stage --coconut-steps 1200
    # `n7 n7` and `n7 p7` steps, where stage 1 already needs the thought: stages 1-2 of 300 steps from 300 SFT steps
    python recipes/demo_study.py --format dup --sft-steps 300 --max-stage 2 --no-final-stage --coconut-steps 600
    # thoughts rescaled to the embedding-row norm (coconut thought_norm=embedding): stages 1-2, then all 4 stages
    python recipes/demo_study.py --format pair --sft-steps 300 --thought-norm embedding --max-stage 2 --no-final-stage --coconut-steps 600
    python recipes/demo_study.py --format pair --sft-steps 300 --thought-norm embedding
    # the official stage 0 first (the full CoT with the new <bot>/<eot> markers), then stages 1-3 of 250 steps
    python recipes/demo_study.py --format pair --sft-steps 300 --thought-norm embedding --seed 1 --start-stage 0 --max-stage 3 --no-final-stage --stage-steps 250
    # the same with 2 position ids per thought (coconut thought_stride=2, not in the paper): the text after <eot>
    # keeps the positions it had in the full CoT, each thought sits where its step's first token was
    python recipes/demo_study.py --format pair --sft-steps 300 --thought-norm embedding --seed 0 --start-stage 0 --max-stage 3 --no-final-stage --stage-steps 250 --thought-stride 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from pathlib import Path

import torch

from latentcot.cli.common import nonnegative_int, positive_int, run_script
from latentcot.demo import DemoSettings, arms, check_arms, run_arm

PROTOTYPE_OPTIM = {"weight_decay": 0.01, "adam_beta2": 0.98, "schedule": "cosine"}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def norms(run: Path) -> str:
    """Mean norm of the token-embedding and position rows and the final layer norm's gain, from a run's weights:
    the scale a token input has against the scale of a fed-back last hidden state."""
    from safetensors.torch import load_file

    w = load_file(str(run / "trainable.safetensors"))
    get = {key.rsplit(".", 2)[-2]: v for key, v in w.items() if key.endswith(("wte.weight", "wpe.weight", "ln_f.weight"))}
    if len(get) < 3:
        return "norms: not a GPT-2 run"
    return (f"token-embedding rows' mean norm {get['wte'].norm(dim=-1).mean():.2f}, position rows' "
            f"{get['wpe'].norm(dim=-1).mean():.2f}, final layer norm's gain {get['ln_f'].norm():.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--format", default="pair", choices=["sep", "digits", "pair", "dup", "ptr"], help="pointer_chase2 step format")
    p.add_argument("--sft-steps", type=positive_int, default=600)
    p.add_argument("--sft-lr", type=float, default=2e-3)
    p.add_argument("--stage-steps", type=positive_int, default=300)
    p.add_argument("--stage-lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=nonnegative_int, default=30, help="warmup steps (of the run, or of each stage)")
    p.add_argument("--plain", action="store_true", help="the demo's former optimizer: constant lr, AdamW defaults, "
                   "no warmup, one schedule over the whole curriculum")
    p.add_argument("--max-stage", type=positive_int, default=4, help="curriculum stages (4 = one per hop)")
    p.add_argument("--start-stage", type=nonnegative_int, default=1, help="first curriculum stage trained (0 = the "
                   "full CoT with the <bot><eot> markers first, as the official stage 0)")
    p.add_argument("--no-final-stage", action="store_true", help="the last stage runs to the end of --coconut-steps")
    p.add_argument("--coconut-steps", type=positive_int,
                   help="coconut/pause steps in all (default stage steps x max stage)")
    p.add_argument("--thought-norm", default="none", choices=["none", "embedding"],
                   help="coconut's and codi's thought_norm (embedding: thoughts rescaled to the embedding-row norm)")
    p.add_argument("--thought-stride", type=positive_int, default=1, help="coconut's thought_stride (position ids per "
                   "thought; 2: thought j on the position of step j's first token; not in the paper)")
    p.add_argument("--methods", default="cot_sft,coconut", help="arms to run, in order (cot_sft first)")
    p.add_argument("--eval-questions", type=positive_int, default=500)
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--out", default="runs/demo-study")
    a = p.parse_args()
    torch.set_num_threads(1)
    optim = {} if a.plain else {**PROTOTYPE_OPTIM, "warmup_steps": a.warmup}
    s = dataclasses.replace(
        DemoSettings(), tasks=("pointer_chase2",), lr=a.sft_lr, stage_lr=a.stage_lr, optim=optim,
        stage_schedule=not a.plain, sft_steps={"pointer_chase2": a.sft_steps},
        stage_steps={"pointer_chase2": a.stage_steps}, eval_questions=a.eval_questions, seed=a.seed,
        task_settings={"pointer_chase2": {"step_format": a.format}}, start_stage=a.start_stage, thought_norm="none",
        thought_stride=a.thought_stride, latent={},
    )  # thought_norm is set below for codi as well as coconut
    tag = (f"{a.format}-sft{a.sft_steps}@{a.sft_lr:g}-stage{a.stage_steps}@{a.stage_lr:g}"
           f"-{'plain' if a.plain else f'proto-w{a.warmup}'}-s{a.seed}")
    if a.start_stage != 1:
        tag += f"-from{a.start_stage}"
    if a.max_stage != 4 or a.no_final_stage or a.coconut_steps:
        tag += f"-m{a.max_stage}{'-nofinal' if a.no_final_stage else ''}-c{a.coconut_steps or a.stage_steps * (a.max_stage + 1 - a.start_stage)}"
    if a.thought_norm != "none":
        tag += f"-tn{a.thought_norm}"
    if a.thought_stride != 1:
        tag += f"-ts{a.thought_stride}"
    out = Path(a.out) / tag
    by_name = {arm.method: arm for arm in arms(s, "pointer_chase2")}
    for name in ("coconut", "pause"):  # the curriculum arms: stages and total steps as asked
        arm = by_name[name]
        arm.settings = {**arm.settings, "max_stage": a.max_stage, **({"final_stage": False} if a.no_final_stage else {})}
        arm.steps = a.coconut_steps or a.stage_steps * (a.max_stage + 1 - a.start_stage)
    if a.thought_norm != "none":
        for name in ("coconut", "codi"):
            by_name[name].settings = {**by_name[name].settings, "thought_norm": a.thought_norm}
    chosen = a.methods.split(",")
    unknown = [name for name in chosen if name not in by_name]
    if unknown:
        p.error(f"--methods: unknown arm(s) {unknown}; arms: {list(by_name)}")
    check_arms(s, "pointer_chase2", [by_name[name] for name in chosen], out)  # before the first arm trains
    for name in chosen:
        c0, t0 = cpu_seconds(), time.time()
        row = run_arm(s, "pointer_chase2", by_name[name], out, progress=False)
        losses = []
        log = out / "pointer_chase2" / name / "train_log.jsonl"
        if log.is_file() and name != "cot_sft":
            rows = [json.loads(x) for x in log.read_text().splitlines()]
            ends = {int(r["stage"]): r["loss"] for r in rows if "stage" in r}
            losses = [f"stage {k}: {v:.3f}" for k, v in sorted(ends.items())]
        elif log.is_file():
            rows = [json.loads(x) for x in log.read_text().splitlines() if "loss" in x]
            losses = [f"step {r['step']}: {r['loss']:.3f}" for r in rows if r["step"] % 100 == 0]
            print(f"{tag} {name}: {norms(log.parent)}", flush=True)
        print(f"{tag} {name}: accuracy {row['accuracy']:.1f}%, decode steps {row['decode_steps']:.1f}, "
              f"{time.time() - t0:.0f} s wall, {cpu_seconds() - c0:.0f} s CPU; final losses {', '.join(losses)}",
              flush=True)


if __name__ == "__main__":
    run_script(main, resumable=True)
