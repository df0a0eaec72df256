"""Cost of a soft step against a hard step on the same model, batch and number of steps.

SPEC section 6 target: a soft-token input costs at most 1.15x a hard-token step (top-k gather, not a dense
p @ E). All modes step the same KV-cached engine from the same left-padded prompts; only how the next input is
made differs:

- hard:          argmax token -> embedding (greedy decoding);
- soft gather:   softmax(logits / 0.6), top-k with top-p / min-p, sum_k p_k E[k] through the embedding module;
- soft method:   `soft_thinking`'s own `think_inputs` (the above plus the entropy Cold Stop reads);
- soft gumbel:   the method with randomness=gumbel (per-row random streams);
- soft dense:    the same weights as a dense (B, V) @ (V, d) product, for comparison;
- hard (again):  the hard step a second time, as a control: its ratio to the hard step shows the bench's resolution.
- hard sampled:  (only with `--modes`) a sampled hard token at the soft input's thinking settings (temperature 0.6,
                 top-p 0.95, min-p 0.001, per-row random streams) -> embedding: the hard step a stochastic decoder
                 makes, the counterpart of the Gumbel input (the SPEC target is against the greedy hard step).

Each mode's row also splits its step into the inputs (making the next input from the logits; on a CPU the ops run
as they are called, so the split is exact) and the forward (the rest of the engine step).

The modes take turns step by step, each stepping its own state, in an order shuffled anew every round (seeded), and
their states are prefilled in that order. A fixed order biased the ratios by up to 0.02: two copies of one mode
measured 1.15x and 1.13x against the hard step depending on their places in the turn (2026-11-30). Which other modes
share the turn matters too (each leaves its code and data in the caches the next one finds): the Gumbel input
measured 1.172-1.177x among the six modes and 1.187x / 1.191x with only the hard steps beside it (`--modes`, closer
to a decode loop that makes one kind of input; 2026-11-30).

    .venv/bin/python bench/soft_step.py                                   # tiny-llama, batch 8, ~1 minute
    .venv/bin/python bench/soft_step.py --model smollm2-135m-instruct --batch 8 --steps 32
    .venv/bin/python bench/soft_step.py --stages      # + where a Gumbel soft input's time goes, op group by group
    .venv/bin/python bench/soft_step.py --generate    # + whole generations: cot against soft_thinking
    .venv/bin/python bench/soft_step.py --modes "soft gumbel" "hard (again)"   # one soft input beside the hard one
    .venv/bin/python bench/soft_step.py --modes "soft gumbel" "hard sampled" "hard (again)"   # + a sampled hard step

`--generate` times whole generations the way `latentcot eval` runs them (the method's `generate`, with the
thinking controller's per-row bookkeeping): `cot` with hard tokens against `soft_thinking` plain and Gumbel, the
same questions and number of steps (EOS ignored, Cold Stop off), as seconds per decode step (from runs of --steps
and twice as many steps: the prefill is left out).

`--stages` times the Gumbel soft input's parts (the calls `soft_thinking.think_inputs` makes, in its order) three
ways: inside the decode loop (each right after a forward, as in generation), alone in a tight loop over the logits
the loop made, and alone on one logits tensor over and over, and the hard input likewise. The last is what this bench
showed before 2026-12-02: it understates the data-dependent kernels (`torch.topk`'s selection runs 3-4x faster on
data the branch predictor has learned), so the middle column is the cost of the parts themselves and the first one
adds what the forward in between costs them.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch
from machine import preflight, verdict

from latentcot.cli.common import positive_int, run_script
from latentcot.decoding.engine import DecodeState, Engine
from latentcot.decoding.sampling import GenerationConfig, RowRandom, next_tokens, row_seed
from latentcot.methods import build_method
from latentcot.methods.base import generate_batched
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.models.soft import (
    dense_mixture,
    embedding_scale,
    entropy,
    gumbel_perturb,
    mix_embeddings,
    token_probs,
    top_k_filtered,
)
from latentcot.models.splice import splice, tokens
from latentcot.tasks import get_task

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did she sell?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. How much more money does Betty need?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
]

Step = Callable[[DecodeState], torch.Tensor]  # state -> next inputs (B, d)


def modes(bb: Backbone, k: int, batch: int) -> dict[str, Step]:
    gen = GenerationConfig()
    vanilla = build_method("soft_thinking", {"soft_top_k": k}, bb)
    gumbel = build_method("soft_thinking", {"soft_top_k": k, "randomness": "gumbel"}, bb)
    rand = RowRandom([row_seed(0, str(i), 0) for i in range(batch)], bb.device)
    sampled = GenerationConfig(temperature=0.6, top_p=0.95, min_p=0.001)
    hard_rand = RowRandom([row_seed(1, str(i), 0) for i in range(batch)], bb.device)
    scale = embedding_scale(bb.model.get_input_embeddings())

    def gather(state: DecodeState) -> torch.Tensor:
        w, ids = top_k_filtered(token_probs(state.logits, 0.6), k, 0.95, 0.001)  # (B, k)
        return mix_embeddings(w, ids, bb.embed)

    def dense(state: DecodeState) -> torch.Tensor:
        w, ids = top_k_filtered(token_probs(state.logits, 0.6), k, 0.95, 0.001)
        probs = torch.zeros_like(state.logits).scatter(1, ids, w)  # (B, V)
        return dense_mixture(probs, bb.embedding_matrix, scale)

    return {
        "hard": lambda s: bb.embed(s.logits.argmax(-1)),
        "soft gather": gather,
        "soft method": lambda s: vanilla.think_inputs(s.logits, rand, gen).embeds,
        "soft gumbel": lambda s: gumbel.think_inputs(s.logits, rand, gen).embeds,
        "soft dense": dense,
        "hard (again)": lambda s: bb.embed(s.logits.argmax(-1)),
        "hard sampled": lambda s: bb.embed(next_tokens(s.logits, sampled, hard_rand)),
    }


OPTIONAL = ("hard sampled",)  # timed only when --modes names them


def time_modes(
    bb: Backbone,
    texts: list[str],
    steps: int,
    table: dict[str, Step],
    order: list[str] | None = None,
    inputs: dict[str, float] | None = None,
) -> dict[str, float]:
    """Seconds per mode for `steps` KV-cached steps (prefill not timed), the modes interleaved step by step
    (each mode steps its own state; the order rotates), so a change in the machine's speed hits every mode alike.
    `order`: the modes' places in the turn and the order their states are prefilled (default: the table's).
    `inputs`: where to add the part of each mode's seconds spent making its next inputs (the rest is the forward)."""
    eng = Engine(bb)
    rows = [[tokens(bb.encode(t))] for t in texts]
    batch = splice(rows, bb.embed, bb.tokenizer.pad_token_id or 0)
    names = list(order or table)
    states = {name: eng.prefill(batch) for name in names}
    spent = dict.fromkeys(names, 0.0)
    with torch.inference_mode():  # where a generation makes its soft inputs: inside the engine's inference-mode loop
        for i in range(steps):
            for j in range(len(names)):
                name = names[(i + j) % len(names)]
                t0 = time.perf_counter()
                x = table[name](states[name])
                t1 = time.perf_counter()
                states[name] = eng.step(states[name], x)
                spent[name] += time.perf_counter() - t0
                if inputs is not None:
                    inputs[name] = inputs.get(name, 0.0) + t1 - t0
    return spent


def gumbel_stages(bb: Backbone, k: int, batch: int, clock: dict[str, float]) -> Step:
    """The Gumbel soft input made by the calls `think_inputs` makes (soft_thinking defaults), each part timed into
    `clock` (microseconds summed)."""
    gumbel = build_method("soft_thinking", {"soft_top_k": k, "randomness": "gumbel"}, bb)
    c = gumbel.cfg
    rand = RowRandom([row_seed(0, str(i), 0) for i in range(batch)], bb.device)

    def step(state: DecodeState) -> torch.Tensor:
        t = [time.perf_counter()]
        probs = token_probs(state.logits, c.think_temperature)
        t.append(time.perf_counter())
        w, ids = top_k_filtered(probs, c.soft_top_k, c.think_top_p, c.think_min_p)
        t.append(time.perf_counter())
        w = gumbel_perturb(w, c.gumbel_tau, rand, reuse=True)  # as think_inputs calls it
        t.append(time.perf_counter())
        w, order = w.sort(-1, descending=True)
        ids = ids.gather(-1, order)
        t.append(time.perf_counter())
        embeds = mix_embeddings(w, ids, bb.embed)
        t.append(time.perf_counter())
        entropy(probs)
        t.append(time.perf_counter())
        for name, a, b in zip(STAGES, t, t[1:]):
            clock[name] = clock.get(name, 0.0) + (b - a) * 1e6
        return embeds

    return step


STAGES = ["softmax(logits / T)", "top-k, top-p, min-p", "Gumbel noise + softmax", "sort + gather", "mixture",
          "entropy"]


def stages(bb: Backbone, texts: list[str], k: int, batch: int, steps: int, rounds: int) -> None:
    """Per-part microseconds of a Gumbel soft input (and of the hard input) inside the decode loop and alone: in a
    tight loop over the logits the decode loop made (a new tensor each step, as in the loop), and in a tight loop on
    one logits tensor over and over (the branch predictor then learns the data-dependent kernels: `torch.topk`,
    `sort`)."""
    inloop: dict[str, float] = {}
    hard_clock = {"hard": 0.0}
    seen: list[torch.Tensor] = []  # the logits each in-loop Gumbel step read

    def hard(state: DecodeState) -> torch.Tensor:
        t0 = time.perf_counter()
        out = bb.embed(state.logits.argmax(-1))
        hard_clock["hard"] += (time.perf_counter() - t0) * 1e6
        return out

    timed = gumbel_stages(bb, k, batch, inloop)

    def gumbel(state: DecodeState) -> torch.Tensor:
        out = timed(state)
        seen.append(state.logits.clone())  # after the timed parts, so they still run right after the forward
        return out

    table = {"hard": hard, "gumbel": gumbel}
    time_modes(bb, texts, 2, table)  # warm-up
    inloop.clear()
    seen.clear()
    hard_clock["hard"] = 0.0
    for r in range(rounds):
        time_modes(bb, texts, steps, table, ["hard", "gumbel"][:: 1 if r % 2 else -1])
    n = rounds * steps
    hard_inloop = hard_clock["hard"] / n
    alone: dict[str, dict[str, float]] = {}
    hard_alone: dict[str, float] = {}
    for name, states in (("fresh", [_Logits(x) for x in seen]), ("one", [_Logits(seen[0])] * n)):
        clock: dict[str, float] = {}
        step_alone = gumbel_stages(bb, k, batch, clock)
        hard_clock["hard"] = 0.0
        with torch.inference_mode():
            for state in states[:2]:  # warm-up
                step_alone(state)
                hard(state)
            clock.clear()
            hard_clock["hard"] = 0.0
            for state in states:
                step_alone(state)
                hard(state)
        alone[name], hard_alone[name] = clock, hard_clock["hard"]
    print(f"\nwhere a Gumbel soft input's time goes (us per step, mean of {n} steps): inside the decode loop, right "
          "after each forward; alone in a tight loop over the logits the loop made (a new tensor each step); alone "
          "in a tight loop on one logits tensor (the data-dependent kernels, top-k and sort, then run on learned "
          "branches)")
    print(f"{'part':<24} {'in the loop':>11} {'alone':>7} {'one logits':>10}")
    for name in STAGES:
        print(f"{name:<24} {inloop[name] / n:>11.1f} {alone['fresh'][name] / n:>7.1f} {alone['one'][name] / n:>10.1f}")
    total = [sum(c.values()) / n for c in (inloop, alone["fresh"], alone["one"])]
    print(f"{'total':<24} {total[0]:>11.1f} {total[1]:>7.1f} {total[2]:>10.1f}")
    print(f"{'hard input (argmax, E)':<24} {hard_inloop:>11.1f} {hard_alone['fresh'] / n:>7.1f} "
          f"{hard_alone['one'] / n:>10.1f}")


class _Logits:
    """What a soft input reads of a decode state: its logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


def generations(bb: Backbone, k: int, batch: int, steps: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per decode step of whole generations (one list per arm, one entry per round, arms in an order
    shuffled every round): `cot` greedy with hard tokens, and `soft_thinking` (plain and Gumbel) thinking, then its
    marker and one answer token. EOS is ignored and Cold Stop is off, so every row of an arm runs the same number
    of steps (unless its top-1 tokens spell the end marker, which a random tiny model does not). Each arm runs
    `steps` and `2 * steps` long; the difference of the two times over the difference of their steps (the longest
    row's decode steps) leaves out the prefill and the per-call costs."""
    task = get_task("gsm8k")
    exs = task.load("test")[:batch]

    def arms(n: int) -> dict[str, tuple]:
        soft = {"soft_top_k": k, "max_think_steps": n, "cold_stop_steps": 0}
        answer = GenerationConfig(max_new_tokens=1, ignore_eos=True)
        return {
            "hard (cot)": (build_method("cot", {}, bb), GenerationConfig(max_new_tokens=n, ignore_eos=True)),
            "soft thinking": (build_method("soft_thinking", soft, bb), answer),
            "soft gumbel": (build_method("soft_thinking", {**soft, "randomness": "gumbel"}, bb), answer),
        }

    def timed(method, gen) -> tuple[float, int]:
        rand = RowRandom([row_seed(0, str(i), 0) for i in range(batch)], bb.device)
        t0 = time.perf_counter()
        outs = generate_batched(method, exs, task, gen, rand)
        return time.perf_counter() - t0, max(o.decode_steps for o in outs)

    short, long = arms(steps), arms(2 * steps)
    runs: dict[str, list[float]] = {name: [] for name in short}
    shuffler = random.Random(1)
    for r in range(rounds + 1):  # round 0 warms up
        order = list(short)
        shuffler.shuffle(order)
        for name in order:
            (t1, s1), (t2, s2) = timed(*short[name]), timed(*long[name])
            if r:
                runs[name].append((t2 - t1) / (s2 - s1))
    return runs


def report(runs: dict[str, list[float]], per: int = 1, inputs: dict[str, list[float]] | None = None) -> None:
    """Each arm's median time per step (ms) and the median and quartiles of its per-round ratio to the first arm;
    with `inputs` (seconds per round spent making the inputs), the medians of that part and of the rest apart."""
    base = next(iter(runs.values()))
    split = f" {'inputs us':>10} {'forward ms':>11}" if inputs else ""
    print(f"{'mode':<14} {'ms/step':>9} {'vs hard':>8} {'quartiles':>13}{split}")
    for name, times in runs.items():
        ratios = sorted(t / h for t, h in zip(times, base))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        if inputs:
            made = inputs[name]
            rest = statistics.median(t - m for t, m in zip(times, made))
            split = f" {statistics.median(made) / per * 1e6:>10.1f} {rest / per * 1e3:>11.3f}"
        print(f"{name:<14} {statistics.median(times) / per * 1e3:>9.3f} {statistics.median(ratios):>7.3f}x "
              f"{q[0]:>6.3f}-{q[2]:.3f}{split}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--batch", type=positive_int, default=8)
    ap.add_argument("--steps", type=positive_int, default=64)
    ap.add_argument("--top-k", type=positive_int, default=15)
    ap.add_argument("--repeats", type=positive_int, default=15)
    ap.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads")
    ap.add_argument("--allow-contended", action="store_true", help="measure even when other processes hold the cores")
    ap.add_argument("--stages", action="store_true", help="also time the Gumbel soft input's parts (see above)")
    ap.add_argument("--generate", action="store_true", help="also time whole generations, cot vs soft_thinking")
    ap.add_argument("--modes", nargs="+", metavar="MODE", help="time only these modes (with 'hard', the base); "
                    "e.g. --modes hard 'soft gumbel' 'hard (again)': a decode loop with one soft input, as in use")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    bb = Backbone(model, tok, args.model)
    texts = [bb.chat_prompt(QUESTIONS[i % len(QUESTIONS)] + " " * (i % 3)) for i in range(args.batch)]
    table = modes(bb, args.top_k, args.batch)
    if args.modes:
        unknown = [m for m in args.modes if m not in table]
        if unknown:
            ap.error(f"unknown mode(s) {unknown}; modes: {list(table)}")
        table = {name: table[name] for name in ["hard"] + [m for m in args.modes if m != "hard"]}
    else:
        table = {name: step for name, step in table.items() if name not in OPTIONAL}
    time_modes(bb, texts, 2, table)  # warm-up
    watch = preflight(args.allow_contended)
    runs: dict[str, list[float]] = {name: [] for name in table}
    made: dict[str, list[float]] = {name: [] for name in table}
    shuffler = random.Random(0)
    for _ in range(args.repeats):
        order = list(table)
        shuffler.shuffle(order)
        inputs: dict[str, float] = {}
        for name, t in time_modes(bb, texts, args.steps, table, order, inputs).items():
            runs[name].append(t)
            made[name].append(inputs[name])
    print(
        f"model {args.model} (V={bb.vocab_size}, d={bb.hidden_size}), batch {args.batch}, {args.steps} cached steps, "
        f"top-k {args.top_k}, {args.repeats} rounds (modes interleaved step by step, shuffled order), "
        f"{torch.get_num_threads()} threads"
    )
    print("vs hard: the median over rounds of (this mode's time / the hard step's time in the same round), with the")
    print("quartiles of that ratio; within a round the modes take turns step by step, so the machine's drift (which")
    print("moves single timings by +-20% on this machine) hits them alike; 'hard (again)' is the control;")
    print("inputs / forward: the step's time making the next inputs from the logits, and the rest (the engine step)")
    report(runs, args.steps, made)
    if args.generate:
        print(f"\nwhole generations (the methods' generate, as `latentcot eval` runs them), {args.steps} steps, "
              f"{args.repeats} rounds:")
        report(generations(bb, args.top_k, args.batch, args.steps, args.repeats))
    if args.stages:
        stages(bb, texts, args.top_k, args.batch, args.steps, max(3, args.repeats // 3))
    print(verdict(watch))


if __name__ == "__main__":
    run_script(main)
