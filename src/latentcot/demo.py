"""The demo: tiny models trained from scratch on synthetic pointer chasing, comparing hard CoT, no CoT and
continuous thoughts on one engine, in minutes on a laptop CPU.

For each task (pointer_chase: one token per CoT step; pointer_chase2: two tokens per step, so a continuous
thought replacing a step would compress the reasoning; the README's demo study shows it does not learn to
yet) it trains, through the shared training loop:

- `no_cot_sft` and `cot_sft` from scratch (4-layer GPT-2, d=128, the task's word-level tokenizer);
- `coconut` and its `pause` control from the `cot_sft` model, stages 1..k of the curriculum (the paper starts
  Coconut from its stage-0 CoT model too);
- `codi` from the `cot_sft` model with k continuous thoughts;
- `soft_thinking` (training-free, on the `cot_sft` model) when that method is registered;

then evaluates each on the test split through the shared runner and writes `report.md`, `results.json` and
`accuracy_vs_steps.png` into the output directory. Every run lives in `<out>/<task>/<method>/` and is resumed
or reused when the demo is run again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from latentcot import atomic
from latentcot.errors import CheckpointError

log = logging.getLogger(__name__)

# The throwaway prototype's optimizer (SPEC section 3): AdamW, weight decay 0.01, betas (0.9, 0.98), warmup + cosine.
PROTOTYPE_OPTIM = {"weight_decay": 0.01, "adam_beta2": 0.98, "warmup_steps": 30, "schedule": "cosine"}


@dataclass
class DemoSettings:
    """What the demo trains and evaluates (`full()` and `quick()` are the presets).

    Attributes:
        tasks: synthetic tasks to run (the full demo: pointer_chase2, where a continuous thought replaces a 2-token
            step; `--tasks pointer_chase,pointer_chase2` adds the 1-token task).
        k: hops per problem (= CoT steps = curriculum stages).
        num_nodes: size of the permutation.
        arch, d, layers: the from-scratch model (`scratch-ARCH[-dD][-lL]:TASK`).
        batch: training batch size.
        lr: peak learning rate (AdamW) of no_cot_sft and cot_sft.
        stage_lr: peak learning rate of the curriculum arms (coconut, pause); None = lr.
        codi_lr: codi's learning rate. At 1e-3 its 2-hop training diverged (gradient norms above 100 from
            step ~150, 0% accuracy at step 600); at 3e-4 it reached 100% by step 200.
        optim: training settings given to every arm (TrainConfig fields): the prototype's AdamW weight decay 0.01,
            betas (0.9, 0.98), 30 warmup steps, then a cosine decay.
        stage_schedule: the curriculum arms restart warmup + cosine at every stage (their optimizer is reset there).
        start_stage: first curriculum stage of coconut and pause: 1 (from the cot_sft model, as the paper's GSM8K
            run) or 0 (a stage of the full CoT with the `<bot>`/`<eot>` markers, new to the cot_sft model, before
            any thought, as the official stage 0). The defaults here are the paper's; `latent` sets the demo's own
            per task.
        max_stage: last curriculum stage of coconut and pause (None = k: every step a thought). Below k, the
            steps after it stay text (no final stage) and evaluation thinks max_stage thoughts.
        thought_norm: coconut's `thought_norm`: "none" as the paper, or "embedding" (each thought fed back at the
            mean norm of the token-embedding rows; in these from-scratch models the last hidden state is ~19x
            longer).
        thought_stride: coconut's `thought_stride` (not in the paper): 1 as the paper, or s (each thought advances
            the position ids by s; 2 on `cur nxt` steps puts thought j on the position of step j's first token, so
            the text after `<eot>` keeps the position ids it had in the full CoT). The pause arm has no such setting.
        latent: per task, start_stage / thought_norm / thought_stride overriding the three fields above. The
            full demo's pointer_chase2: stage 0 first, thoughts at the embedding norm, two positions per thought:
            with these, Coconut learned every stage on all 3 seeds of the demo study (99.0-100% with 4 thoughts for
            the 8 CoT tokens); stage 0 and the rescale without the stride worked on 1 seed of 3, the stride without
            them was not tried. Tasks not listed keep the fields above.
        methods: the arms compared on each task.
        sft_steps: optimizer steps of no_cot_sft and cot_sft, per task. With `cur nxt` steps and the settings above
            CoT-SFT's loss is below 0.01 by step 100 and it answers 100% of the test questions after 300 steps.
        stage_steps: optimizer steps per curriculum stage, per task (coconut, pause): 150 on pointer_chase2 (5
            stages, 0-4, so 750 steps), enough with the `latent` settings (every stage's loss at ~0.002 on 3 seeds)
            and within the demo's 10 minutes on 2 cores.
        codi_steps: optimizer steps of codi, per task.
        eval_questions: test questions per method.
        task_settings: extra settings per task (also given to the model alias, whose vocabulary depends on them).
            pointer_chase2 writes each step as `cur nxt` (the node the step starts from, then the node it
            reaches), the prototype's format. With `n7 ;` CoT-SFT needed 1200 steps at constant lr 1e-3, its loss
            was still 0.84 at step 500 of 600 with the settings above, and Coconut sat on a loss plateau (0.54);
            with `d0 d7` CoT-SFT reached 7% in 300 steps.
        num_train: training problems generated per task.
        seed: data order and initialisation seed.
    """

    tasks: tuple[str, ...] = ("pointer_chase2",)
    k: int = 4
    num_nodes: int = 12
    arch: str = "gpt2"
    d: int = 128
    layers: int = 4
    batch: int = 64
    lr: float = 2e-3
    codi_lr: float = 3e-4
    stage_lr: float | None = 1e-3
    optim: dict[str, Any] = field(default_factory=lambda: dict(PROTOTYPE_OPTIM))
    stage_schedule: bool = True
    start_stage: int = 1
    max_stage: int | None = None
    thought_norm: str = "none"
    thought_stride: int = 1
    latent: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "pointer_chase2": {"start_stage": 0, "thought_norm": "embedding", "thought_stride": 2},
    })
    methods: dict[str, tuple[str, ...]] = field(default_factory=lambda: {
        "pointer_chase": ("no_cot_sft", "cot_sft", "coconut", "pause", "codi", "soft_thinking"),
        "pointer_chase2": ("no_cot_sft", "cot_sft", "coconut", "pause", "codi", "soft_thinking"),
    })
    sft_steps: dict[str, int] = field(default_factory=lambda: {"pointer_chase": 300, "pointer_chase2": 300})
    stage_steps: dict[str, int] = field(default_factory=lambda: {"pointer_chase": 150, "pointer_chase2": 150})
    codi_steps: dict[str, int] = field(default_factory=lambda: {"pointer_chase": 300, "pointer_chase2": 300})
    eval_questions: int = 500
    num_train: int = 10000
    task_settings: dict[str, dict[str, str]] = field(default_factory=lambda: {"pointer_chase2": {"step_format": "pair"}})
    seed: int = 0

    @classmethod
    def full(cls) -> DemoSettings:
        return cls()

    @classmethod
    def quick(cls) -> DemoSettings:
        """About 1-2 minutes on 2 cores: 2-hop problems, short runs, 100 test questions."""
        return cls(tasks=("pointer_chase",), k=2, sft_steps={"pointer_chase": 250}, stage_steps={"pointer_chase": 100},
                   codi_steps={"pointer_chase": 200}, eval_questions=100, num_train=4000, lr=1e-3, stage_lr=None,
                   optim={}, stage_schedule=False)

    def model(self, task: str) -> str:
        size = (f"-d{self.d}" if self.d != 128 else "") + (f"-l{self.layers}" if self.layers != 4 else "")
        opts = "".join(f",{k}={v}" for k, v in self.task_settings.get(task, {}).items())
        return f"scratch-{self.arch}{size}:{task}{opts}"


@dataclass
class Arm:
    """One method of the comparison: its settings, its training steps (0 = training-free), where it starts."""

    method: str
    settings: dict[str, Any]
    steps: int
    init_from: str | None = None
    lr: float | None = None


def arms(s: DemoSettings, task: str) -> list[Arm]:
    from latentcot.methods import METHODS, _register_all

    _register_all()
    stage = s.stage_steps.get(task, max(s.stage_steps.values()))
    sft = s.sft_steps.get(task, max(s.sft_steps.values()))
    last = s.max_stage or s.k
    lat = {"start_stage": s.start_stage, "thought_norm": s.thought_norm, "thought_stride": s.thought_stride,
           **s.latent.get(task, {})}  # this task's curriculum and thought settings
    curriculum = {"max_stage": last, "start_stage": lat["start_stage"], "thoughts_per_step": 1, "stage_steps": stage,
                  **({"stage_schedule": True} if s.stage_schedule else {}),
                  **({"final_stage": False} if last < s.k else {})}  # the steps after max_stage stay text
    stages = last + 1 - lat["start_stage"]
    out = [
        Arm("no_cot_sft", {}, sft),
        Arm("cot_sft", {}, sft),
        Arm("coconut", {**curriculum, **({"thought_norm": lat["thought_norm"]} if lat["thought_norm"] != "none" else {}),
                        **({"thought_stride": lat["thought_stride"]} if lat["thought_stride"] != 1 else {})},
            stage * stages, "cot_sft", s.stage_lr),
        Arm("pause", curriculum, stage * stages, "cot_sft", s.stage_lr),
        Arm("codi", {"num_thoughts": s.k}, s.codi_steps.get(task, max(s.codi_steps.values())), "cot_sft", s.codi_lr),
    ]
    if "soft_thinking" in METHODS:
        # thinking ends where the cot_sft model writes the answer mark; 2 tokens per step at most
        out.append(Arm("soft_thinking", {"think_end": "####", "max_think_steps": 2 * s.k + 2}, 0, "cot_sft"))
    wanted = s.methods.get(task)
    return [a for a in out if wanted is None or a.method in wanted]


def init_from(method, path: Path) -> None:
    """Loads another run's weights into the parts of `method` they cover (e.g. cot_sft's backbone into codi)."""
    from latentcot.training.checkpoint import load_weights

    state = load_weights(path)
    try:
        result = method.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch: the run was made with another model
        first = str(e).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{path} does not fit method {method.name!r} ({first}): delete that run to retrain it") from None
    if result.unexpected_keys:
        raise CheckpointError(f"{path} does not fit method {method.name!r}: unexpected {result.unexpected_keys[:3]}")
    params = {n for n, _ in method.named_parameters()}  # tied weights (lm_head = wte) appear once
    uncovered = [k for k in result.missing_keys if k.startswith("backbone.") and k in params]
    if uncovered:
        raise CheckpointError(f"{path} does not cover the backbone of {method.name!r}: missing {uncovered[:3]}")


def arm_key(s: DemoSettings, task_name: str, arm: Arm, out: Path) -> dict[str, Any]:
    """What an arm's results depend on: "train" (its settings, the model and data, the training key of the run it
    starts from) and "eval" (what only its evaluation depends on)."""
    train: dict[str, Any] = {
        "model": s.model(task_name), "k": s.k, "num_nodes": s.num_nodes, "num_train": s.num_train, "seed": s.seed,
        "settings": arm.settings, "steps": arm.steps, "lr": arm_lr(s, arm) if arm.steps else None,
        "batch": s.batch if arm.steps else None, "optim": s.optim if arm.steps else None,
    }
    if arm.init_from:
        parent = out / task_name / arm.init_from / KEY_FILE
        train["init_from"] = json.loads(parent.read_text())["train"] if parent.is_file() else arm.init_from
    return {"train": train, "eval": {"eval_questions": s.eval_questions}}


def arm_lr(s: DemoSettings, arm: Arm) -> float:
    return s.lr if arm.lr is None else arm.lr


KEY_FILE = "demo_arm.json"
EVAL_FILES = ("config.yaml", "samples.jsonl", "metrics.json")  # what `evaluate_run` writes into a run directory


def fresh_run(run_dir: Path, key: dict[str, Any], label: str) -> None:
    """Keeps what `run_dir` holds for reuse or resume only where it was made with the same `key`: other training
    settings delete the directory (it is the demo's own output), other evaluation settings delete only the
    evaluation's files, so a changed setting never reuses stale weights or samples."""
    path = run_dir / KEY_FILE
    old = json.loads(path.read_text()) if path.is_file() else None
    if run_dir.is_dir() and (old is None or old.get("train") != key["train"]):
        log.info("%s: trained with other settings; running it again", label)
        atomic.remove_tree(run_dir)
    elif old is not None and old.get("eval") != key["eval"]:
        log.info("%s: evaluated with other settings; evaluating it again", label)
        for name in EVAL_FILES:
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(key, indent=1, sort_keys=True))


def arm_values(s: DemoSettings, task_name: str, arm: Arm, out: Path, progress: bool) -> dict[str, Any]:
    """The settings one arm's run resolves (`pipeline.resolve`)."""
    values = {
        "method": arm.method, "model": s.model(task_name), "task": task_name, "out": str(out / task_name / arm.method),
        "k": s.k, "num_nodes": s.num_nodes, "num_train": s.num_train, "num_test": s.eval_questions,
        "limit": s.eval_questions, "batch_size": 100, "max_new_tokens": 4 * s.k + 8, "progress": progress,
        "run.seed": s.seed, "device": "cpu", **s.task_settings.get(task_name, {}), **arm.settings,
    }
    if arm.steps:
        values.update({"max_steps": arm.steps, "train_batch_size": s.batch, "lr": arm_lr(s, arm), "log_every": 5,
                       "save_every": 200, **s.optim})
    return values


def check_arms(s: DemoSettings, task_name: str, chosen: list[Arm], out: Path) -> None:
    """Checks every chosen arm's settings before the first one trains (`pipeline.check_runs`, naming the arm)."""
    from latentcot.pipeline import check_runs

    check_runs({f"{task_name}/{arm.method}": arm_values(s, task_name, arm, out, progress=False) for arm in chosen})


def run_arm(s: DemoSettings, task_name: str, arm: Arm, out: Path, progress: bool) -> dict[str, Any]:
    """Trains (or reuses) and evaluates one arm; returns its row of the results table."""
    from latentcot.pipeline import build, evaluate_run, resolve, train_run
    from latentcot.training.checkpoint import load_weights

    run_dir = out / task_name / arm.method
    res = resolve(arm_values(s, task_name, arm, out, progress))
    fresh_run(run_dir, arm_key(s, task_name, arm, out), f"{task_name}/{arm.method}")
    torch.manual_seed(s.seed)
    method, task = build(res)
    summary_path = run_dir / "train_summary.json"
    summary: dict[str, Any] = {}
    if arm.steps and summary_path.is_file() and json.loads(summary_path.read_text()).get("steps") == arm.steps:
        summary = json.loads(summary_path.read_text())
        method.load_trainable_state_dict(load_weights(run_dir), str(run_dir))
        log.info("%s/%s: reusing the finished training run", task_name, arm.method)
    elif arm.steps:
        if arm.init_from and not (run_dir / "checkpoint").is_dir():
            init_from(method, out / task_name / arm.init_from)
        log.info("%s/%s: training %d steps", task_name, arm.method, arm.steps)
        summary = train_run(res, method, task)
    elif arm.init_from:
        init_from(method, out / task_name / arm.init_from)
    metrics = evaluate_run(res, method, task)
    return {
        "task": task_name, "method": arm.method,
        "accuracy": metrics["accuracy_strict"]["mean"],
        "decode_steps": metrics["decode_steps"]["mean"],
        "latent_steps": metrics["latent_steps_mean"] + metrics["soft_steps_mean"],
        "questions_per_second": metrics["questions_per_second"]["mean"],
        "train_steps": summary.get("steps", 0),
        "train_seconds": summary.get("seconds", 0.0),
        "init_from": arm.init_from,
    }


def _cost(arm: Arm) -> float:
    """Rough CPU cost of an arm, to start long jobs first (codi runs a teacher and a student pass)."""
    return arm.steps * (2.0 if arm.method == "codi" else 1.0)


def _worker_init() -> None:
    from latentcot.heap import keep_freed_memory

    torch.set_num_threads(1)  # tiny models: one process per core beats threads within one process
    keep_freed_memory()  # a spawned worker starts with glibc's defaults (latentcot.heap)


def _timed_arm(s: DemoSettings, task_name: str, arm: Arm, out: Path, progress: bool) -> dict[str, Any]:
    c0 = time.process_time()
    row = run_arm(s, task_name, arm, out, progress)
    row["cpu_seconds"] = time.process_time() - c0
    return row


def run_demo(
    s: DemoSettings,
    out: Path,
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Runs every arm of every task (reusing finished runs), writes the report, returns the table rows.

    Args:
        s: what to train and evaluate.
        out: the demo's directory (one run directory per task and method under it).
        progress: progress bars (with several workers: one per running arm, drawn by this process from the arms'
            logs).
        on_row: called with each finished arm's row (in completion order).
        workers: processes running arms at once (each with one torch thread); an arm that starts from another
            one's weights waits for it. Results do not depend on it.
    """
    from latentcot.tasks import task_class

    for name in s.tasks:
        task_class(name)  # an unknown task is refused before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plan = {(t, a.method): a for t in s.tasks for a in arms(s, t)}
    done: dict[tuple[str, str], dict[str, Any]] = {}

    def finish(key: tuple[str, str], row: dict[str, Any]) -> None:
        done[key] = row
        if on_row is not None:
            on_row(row)

    if workers <= 1:
        for (task_name, _), arm in plan.items():
            finish((task_name, arm.method), _timed_arm(s, task_name, arm, out, progress))
    else:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        parents = {a.init_from for a in plan.values()}
        pending = dict(plan)
        running: dict[Any, tuple[str, str]] = {}
        bars = ArmBars(s, out, plan, enabled=progress)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
            while pending or running:
                ready = [k for k, a in pending.items() if a.init_from is None or (k[0], a.init_from) in done]
                # Jobs others wait on first, then the longest: keeps both cores busy to the end.
                for key in sorted(ready, key=lambda k: (k[1] in parents, _cost(plan[k])), reverse=True):
                    if len(running) < workers:
                        running[pool.submit(_timed_arm, s, key[0], pending.pop(key), out, False)] = key
                        bars.start(key)
                # The workers draw no bars: this process follows their logs, so progress shows while they train.
                finished, _ = wait(list(running), timeout=2.0, return_when=FIRST_COMPLETED)
                bars.update()
                for f in finished:
                    key = running.pop(f)
                    bars.stop(key)
                    finish(key, f.result())
        bars.close()
    rows = [done[k] for k in plan]
    write_report(s, rows, out, time.perf_counter() - t0)
    return rows


class ArmBars:
    """Progress bars in the parent process for arms running in worker processes, one per running arm: training
    steps read from the arm's `train_log.jsonl`, then evaluated questions from its `samples.jsonl`."""

    def __init__(self, s: DemoSettings, out: Path, plan: dict[tuple[str, str], Arm], enabled: bool) -> None:
        self.s, self.out, self.plan, self.enabled = s, out, plan, enabled
        self.bars: dict[tuple[str, str], Any] = {}
        self.started: dict[tuple[str, str], float] = {}

    def start(self, key: tuple[str, str]) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        arm = self.plan[key]
        self.started[key] = time.time() - 1.0
        self.bars[key] = tqdm(total=arm.steps + self.s.eval_questions, desc=f"{key[0]}/{key[1]}", leave=False,
                              dynamic_ncols=True, unit="step")

    def _done(self, key: tuple[str, str]) -> int:
        run_dir = self.out / key[0] / key[1]
        steps = 0
        log_path = run_dir / "train_log.jsonl"
        samples = run_dir / "samples.jsonl"

        def fresh(path: Path) -> bool:  # a file left by an earlier run (about to be replaced or reused) is not progress
            return path.is_file() and path.stat().st_mtime >= self.started.get(key, 0.0)

        if fresh(log_path):
            for line in log_path.read_text().splitlines()[::-1]:
                try:
                    row = json.loads(line)
                except ValueError:  # a line being written
                    continue
                if "eval" not in row:
                    steps = int(row.get("step", 0))
                    break
        evaluated = samples.read_text().count("\n") if fresh(samples) else 0
        return min(steps, self.plan[key].steps) + min(evaluated, self.s.eval_questions)

    def update(self) -> None:
        for key, bar in self.bars.items():
            n = self._done(key)
            if n > bar.n:
                bar.update(n - bar.n)

    def stop(self, key: tuple[str, str]) -> None:
        bar = self.bars.pop(key, None)
        if bar is not None:
            bar.close()

    def close(self) -> None:
        for key in list(self.bars):
            self.stop(key)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the results."""
    head = ("| task | method | accuracy % | decode steps / question | latent steps | questions/s | train steps "
            "| wall s | CPU s |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['method']} | {r['accuracy']:.1f} | {r['decode_steps']:.1f} | {r['latent_steps']:.1f} "
            f"| {r['questions_per_second']:.0f} | {r['train_steps']} | {r['train_seconds']:.0f} "
            f"| {r.get('cpu_seconds', 0.0):.0f} |"
        )
    return "\n".join(lines)


def write_report(s: DemoSettings, rows: list[dict[str, Any]], out: Path, wall: float) -> None:
    """report.md (table + settings), results.json and accuracy_vs_steps.png in `out`."""
    atomic.write_json(out / "results.json", {"settings": asdict(s), "rows": rows, "wall_seconds": wall})
    plot = plot_accuracy_vs_steps(rows, out / "accuracy_vs_steps.png")
    text = [
        "# latentcot demo: continuous thoughts on synthetic pointer chasing",
        "",
        f"Tiny {s.arch.upper()} models ({s.layers} layers, d={s.d}) trained from scratch with each task's word-level "
        f"tokenizer; {s.k}-hop problems over {s.num_nodes} nodes; batch {s.batch}, lr {s.lr} (codi {s.codi_lr}); "
        f"{s.eval_questions} test questions, greedy. coconut/pause/codi start from the cot_sft model. "
        f"Wall time of this invocation: {wall:.0f} s (reused runs cost nothing).",
        "",
        format_table(rows),
        "",
        "Decode steps count every forward step after the prompt: latent thoughts, the `<eot>` marker, answer tokens, "
        "EOS. wall s = training wall time; CPU s = CPU time of this invocation for the arm (training and evaluation; "
        "about 0 when a finished run was reused).",
    ]
    if plot:
        text += ["", f"![accuracy vs decode steps]({plot.name})"]
    atomic.write_text(out / "report.md", "\n".join(text) + "\n")


def plot_accuracy_vs_steps(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy against decode steps per question, one panel per task; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot")
        return None
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        here = [r for r in rows if r["task"] == task]
        points = [(r["decode_steps"], r["accuracy"]) for r in here]
        xs = [x for x, _ in points]
        span = max(xs) - min(xs) if len(xs) > 1 else 1.0
        for r, (x, y), (lx, ly) in zip(here, points, label_positions(points, dx=max(span, 4.0) * 0.22, dy=7.0)):
            ax.scatter(x, y, s=40)
            moved = abs(lx - x) > 1e-9 or abs(ly - y) > 1e-9
            ax.annotate(r["method"], (x, y), xytext=(lx, ly), textcoords="data", fontsize=8, va="center",
                        arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"} if moved else None)
        ax.set_xlim(min(xs) - 1, max(xs) + max(span, 4.0) * 0.45)
        ax.set_title(task)
        ax.set_xlabel("decode steps per question")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-12, 112)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic.save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def label_positions(points: list[tuple[float, float]], dx: float, dy: float) -> list[tuple[float, float]]:
    """Where to write each point's label so that no two labels overlap: right of its point, moved down in steps of
    `dy` while another label within `dx` horizontally and `dy` vertically is already there.

    Args:
        points: (x, y) of each point, in data units.
        dx, dy: a label's width and height, in data units.
    Returns:
        (x, y) of each label, in the order of `points`.
    """
    order = sorted(range(len(points)), key=lambda i: (-points[i][1], points[i][0]))
    placed: list[tuple[float, float]] = []
    out: list[tuple[float, float]] = [(0.0, 0.0)] * len(points)
    for i in order:
        x, y = points[i][0] + dx * 0.08, points[i][1]
        while any(abs(x - px) < dx and abs(y - py) < dy for px, py in placed):
            y -= dy
        placed.append((x, y))
        out[i] = (x, y)
    return out
