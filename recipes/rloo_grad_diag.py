"""Why soft/fuzzy RLOO is harder than hard RLOO: split the policy gradient into its Gaussian (CoT step) part and its
token (answer / hard CoT) part and measure how consistent each part is across independent rollout batches.

For each rollout mode, from the same start model (a finished `cot_sft` run), B independent batches of P x G rollouts
(different rollout seeds) each give the two gradients g_gauss = grad of -mean A log N(h~ | pE, sigma^2) summed over CoT
steps, and g_token = grad of -mean A log p(token) summed over sampled tokens. Reported per part: the mean norm, and the
mean pairwise cosine between batches (close to 0 = the part is noise at this batch size; a gradient estimate that
points the same way in independent batches carries signal). Also the share of the Gaussian gradient's squared norm
that lands on the embedding matrix, and the mean entropy of p over CoT steps.

    python recipes/rloo_grad_diag.py --sft runs/rloo-pc/sft --out runs/rloo-pc/grad_diag.md
    python recipes/rloo_grad_diag.py --smollm2 --modes soft hard --prompts 4 --group-size 4 --out runs/rloo-smollm2/grad_diag.md

With --smollm2 the start model is the plain smollm2-135m-instruct in `rloo_smollm2.py`'s setting (easy word problems,
one-shot prompt, rollouts at temperature 0.5, 48 CoT tokens) instead of a pointer-chasing cot_sft run.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import resource
from pathlib import Path

import torch
from rloo_common import run_main


def grads(method, loss) -> torch.Tensor:
    params = [p for p in method.parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gs, params)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sft", help="finished cot_sft run (the RL start model, pointer chasing)")
    p.add_argument("--smollm2", action="store_true", help="smollm2-135m-instruct in rloo_smollm2.py's setting instead")
    p.add_argument("--out", required=True, help="markdown table to write")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--modes", nargs="+", default=["hard", "soft", "fuzzy"])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    a = p.parse_args()
    if not a.smollm2 and not a.sft:
        p.error("give --sft RUN (pointer chasing) or --smollm2")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # made now, not after minutes of rollouts
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    from latentcot.objectives.rloo import rloo_advantages
    from latentcot.pipeline import build, resolve, select_examples
    from latentcot.training.rollout import GAUSS

    lines = ["| rollout mode | part | mean grad norm | mean pairwise cosine between batches | embedding share of squared norm |",
             "|---|---|---|---|---|"]
    for mode in a.modes:
        if a.smollm2:
            from rloo_smollm2 import rollout_setting

            task_values = rollout_setting()
        else:
            task_values = {"task": "pointer_chase", "k": a.k, "num_train": 4000, "model": "scratch-gpt2:pointer_chase",
                           "init_from": a.sft, "think_end": "####", "max_cot_tokens": a.k + 2, "max_answer_tokens": 2}
        values = {**task_values, "device": "cpu", "method": "rloo", "rollout_mode": mode, "group_size": a.group_size,
                  "prompts_per_step": a.prompts, "progress": False, **dict(x.split("=", 1) for x in a.set)}
        res = resolve(values)
        # As `latentcot train`: the rloo method seeds its rollouts from torch's seed, which torch otherwise draws
        # anew in every process (no two runs of this script would see the same rollouts). `--set run.seed=N` sets it.
        torch.manual_seed(res.run.seeds[0])
        method, task = build(res)
        method.train()
        emb = method.backbone.model.get_input_embeddings().weight
        params = [q for q in method.parameters() if q.requires_grad]
        emb_slice = None
        off = 0
        for q in params:
            if q is emb:
                emb_slice = slice(off, off + q.numel())
            off += q.numel()
        train = select_examples(task, "train", 0, 0)
        parts: dict[str, list[torch.Tensor]] = {"gauss": [], "token": []}
        ents: list[float] = []
        rollout_logs: list[dict[str, float]] = []
        for b in range(a.batches):
            method.step = 10_000 + b  # rollout seeds differ per batch
            ex = train[b * a.prompts:(b + 1) * a.prompts]
            records, rewards, logs = method.scored_rollouts(ex, task)  # what a training step logs, too
            rollout_logs.append(logs)
            adv = rloo_advantages(rewards.view(len(ex), a.group_size), pairs=method.cfg.antithetic).flatten()
            ents += [e for r in records for e in r.entropies]
            rep = method.replay(records)
            kinds = [kind for r in records for _, kind, _ in r.choices]
            gauss = torch.tensor([k == GAUSS for k in kinds])
            assert len(kinds) == rep.choice_logp.numel()
            a_choice = adv[rep.choice_row]
            n = len(records)
            for name, mask in (("gauss", gauss), ("token", ~gauss)):
                if mask.any():
                    parts[name].append(grads(method, -(a_choice[mask] * rep.choice_logp[mask]).sum() / n))
        for name, gs in parts.items():
            if not gs:
                continue
            norms = [float(g.norm()) for g in gs]
            cos = [float(torch.nn.functional.cosine_similarity(x, y, dim=0)) for x, y in itertools.combinations(gs, 2)]
            share = sum(float(g[emb_slice].pow(2).sum() / g.pow(2).sum().clamp_min(1e-30)) for g in gs) / len(gs)
            lines.append(f"| {mode} | {name} | {sum(norms) / len(norms):.3g} | {sum(cos) / max(1, len(cos)):.3f} | {share:.2f} |")
        lines.append(f"| {mode} | (mean entropy of p over CoT steps {sum(ents) / max(1, len(ents)):.3f}) | | | |")
        reward, equal = (sum(g[key] for g in rollout_logs) / len(rollout_logs) for key in ("reward", "all_equal_groups"))
        lines.append(f"| {mode} | (mean reward {reward:.1f}, groups with all rewards equal {equal:.2f}) | | | |")
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    lines.append(f"\n{a.batches} batches of {a.prompts} x {a.group_size} rollouts per mode; process CPU {cpu.ru_utime + cpu.ru_stime:.0f} s")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    run_main(main)
