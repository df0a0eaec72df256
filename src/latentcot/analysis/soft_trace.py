"""Diagnostics of one soft-thinking trace (Soft Thinking, arXiv 2505.15778; "LLMs are single-threaded
reasoners", arXiv 2508.03440).

Along the soft trace of one question (the `soft_thinking` method's inputs, vanilla unless it is configured
with randomness), each step t feeds, from the same KV cache, three alternatives in one batch of 3 rows:

(a) the soft input e_t, (b) the embedding of its top-1 token, (c) the embedding of its top-2 token,

and compares the next-step distributions: JS(a, b) ~ 0 is the finding that soft inputs act like greedy tokens;
JS(a, c) and JS(b, c) give the scale. The trace then continues with (a): rows 1 and 2 get row 0's cache back
(`reorder_cache`, as beam search does). Also recorded: the entropy of the model's next-token distribution at each
step, the logit lens over layers, and ROUGE-L between the trace's top-1 tokens and the greedy hard trace.
"""

from __future__ import annotations

from typing import Any

import torch

from latentcot.analysis.divergence import js_divergence
from latentcot.analysis.lens import logit_lens
from latentcot.analysis.similarity import rouge_l
from latentcot.decoding.sampling import GenerationConfig, RowRandom
from latentcot.methods.thinking import ThinkingMethod
from latentcot.models.soft import entropy
from latentcot.models.splice import splice, tokens, vectors


@torch.no_grad()
def diagnose(
    method: ThinkingMethod, prompt_ids: list[int], steps: int, rand: RowRandom, stop_at_eos: bool = True
) -> dict[str, Any]:
    """All diagnostics of one prompt's trace of up to `steps` soft steps.

    Args:
        method: a thinking method (its `think_inputs` makes the soft inputs).
        prompt_ids: the prompt's token ids.
        steps: soft steps to trace.
        rand: one row's random stream (used only when the method is stochastic).
        stop_at_eos: end both traces when their top-1 token is EOS (False: trace through it).
    Returns:
        a JSON-ready dict (see the keys below).
    """
    bb, eng = method.backbone, method.engine
    eos = set(bb.eos_ids) if stop_at_eos else set()
    gen = GenerationConfig(max_new_tokens=steps)

    # Greedy hard trace, with the entropy of each next-token distribution.
    state = eng.prefill(_batch(method, [tokens(prompt_ids)], 1))
    hard: list[int] = []
    hard_ent: list[float] = []
    for _ in range(steps):
        tok = int(state.logits[0].argmax())
        if tok in eos:
            break
        hard_ent.append(float(entropy(torch.softmax(state.logits[0].float(), -1))))
        hard.append(tok)
        state = eng.step_tokens(state, torch.tensor([tok], device=state.logits.device))

    state = eng.prefill(_batch(method, [tokens(prompt_ids)], 3))
    keep = torch.zeros(3, dtype=torch.long, device=state.logits.device)
    soft_inputs, top1s, top2s = [], [], []
    ent, js_top1, js_top2, js_12 = [], [], [], []
    for _ in range(steps):
        ent.append(float(entropy(torch.softmax(state.logits[0].float(), -1))))
        th = method.think_inputs(state.logits[:1], rand, gen)
        top1 = int(th.top_ids[0, 0])
        if top1 in eos:
            break
        # With one mixed token there is no second one in the mixture: take the model's runner-up instead.
        top2 = int(th.top_ids[0, 1]) if th.top_ids.shape[1] > 1 else int(state.logits[0].topk(2).indices[1])
        e = th.embeds if th.embeds is not None else bb.embed(th.top_ids[:, :1])[:, 0].float()  # (1, d)
        alts = torch.cat([e.float(), bb.embed(torch.tensor([top1, top2], device=e.device)).float()])  # (3, d)
        state = eng.step(state, alts)
        p = torch.softmax(state.logits.float(), -1)  # (3, V)
        js_top1.append(float(js_divergence(p[0], p[1])))
        js_top2.append(float(js_divergence(p[0], p[2])))
        js_12.append(float(js_divergence(p[1], p[2])))
        state.cache.reorder_cache(keep)  # rows 1, 2 continue from the soft path
        state.logits = state.logits[keep]
        soft_inputs.append(e[0])
        top1s.append(top1)
        top2s.append(top2)

    lens = _lens(method, prompt_ids, soft_inputs)
    return {
        "soft_top1": top1s,
        "soft_top2": top2s,
        "soft_text": bb.decode(top1s),
        "hard_ids": hard,
        "hard_text": bb.decode(hard),
        "entropy": ent[: len(top1s)] if top1s else ent,
        "hard_entropy": hard_ent,
        "js_soft_top1": js_top1,
        "js_soft_top2": js_top2,
        "js_top1_top2": js_12,
        "rouge_l": rouge_l(top1s, hard),
        "lens_prob": lens["prob"],
        "lens_agree": lens["agree"],
        "lens_top1": lens["top1"],
        "lens_norm": lens["norm"],
    }


def _batch(method: ThinkingMethod, row: list, copies: int):
    return method.splice_rows([row] * copies)


def _lens(method: ThinkingMethod, prompt_ids: list[int], soft_inputs: list[torch.Tensor]) -> dict[str, Any]:
    """Logit lens at the positions whose next-token distributions chose the soft inputs (one full forward)."""
    rows = [tokens(prompt_ids)] + ([vectors(torch.stack(soft_inputs))] if soft_inputs else [])  # (P + S, d)
    batch = splice([rows], method.backbone.embed, 0)
    start = len(prompt_ids) - 1
    positions = torch.arange(start, start + max(1, len(soft_inputs)), device=batch.inputs_embeds.device)  # (S,)
    return logit_lens(method.backbone.model, batch.inputs_embeds, positions)


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over questions and steps, and the per-layer lens means (layers x steps, NaN-padded)."""
    import numpy as np

    def flat(key: str) -> np.ndarray:
        return np.array([v for r in results for v in r[key]], dtype=float)

    def stats(key: str) -> dict[str, float | None]:
        x = flat(key)
        return {"mean": float(x.mean()) if x.size else None, "std": float(x.std()) if x.size else None}

    width = max((len(r["lens_prob"][0]) for r in results), default=0)
    layers = len(results[0]["lens_prob"]) if results else 0
    grid = np.full((len(results), layers, width), np.nan)
    agree = np.full_like(grid, np.nan)
    for i, r in enumerate(results):
        p = np.array(r["lens_prob"], dtype=float)  # (L+1, S)
        grid[i, :, : p.shape[1]] = p
        agree[i, :, : p.shape[1]] = np.array(r["lens_agree"], dtype=float)
    with np.errstate(all="ignore"):
        lens_prob = np.nanmean(grid, axis=0) if results else grid
        lens_agree = np.nanmean(agree, axis=(0, 2)) if results else np.zeros(0)
    return {
        "questions": len(results),
        "js_soft_top1": stats("js_soft_top1"),
        "js_soft_top2": stats("js_soft_top2"),
        "js_top1_top2": stats("js_top1_top2"),
        "entropy": stats("entropy"),
        "hard_entropy": stats("hard_entropy"),
        "rouge_l": {"mean": float(np.mean([r["rouge_l"] for r in results])) if results else None},
        "lens_prob_mean": _nan_to_none(lens_prob.tolist()),
        "lens_agree_by_layer": _nan_to_none(lens_agree.tolist()),
    }


def _nan_to_none(x: Any) -> Any:
    """JSON has no NaN: None in its place."""
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return None if isinstance(x, float) and x != x else x
