"""Rollouts for RL: batched, KV-cached generation that records what it fed, and the one teacher-forced forward
that replays the record to score the trajectory under the current (or a reference) policy.

A rollout row feeds a sequence of inputs after its prompt: hard tokens (ids) and soft/fuzzy vectors (the noisy
h~_t = p_{t-1} E + sigma eps of Butt et al., arXiv 2509.19170). Some of them are the policy's random choices:

- a soft/fuzzy CoT step: the vector h~_t itself, scored by its Gaussian log-density around p_{t-1}(theta) E;
- a sampled hard token (hard CoT tokens, answer tokens, the EOS that ends the answer): its log-probability.

Forced tokens (the end-of-thinking marker written after a budget stop) and the top-1 token that completes the
marker in soft/fuzzy mode (a deterministic function of p) are fed but are no choice. A choice is stored with the
number of inputs fed before it, which names the position whose logits it was drawn from; replaying the record
through one right-padded forward therefore gives the rollout's own distributions (tested to 1e-5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from latentcot.decoding.controllers import ANSWER, ThinkingController
from latentcot.decoding.sampling import GenerationConfig, RowRandom
from latentcot.models.soft import dense_mixture, token_probs
from latentcot.models.splice import Piece, splice, tokens, vectors
from latentcot.objectives.rloo import soft_step_log_density, token_log_probs
from latentcot.tasks.base import Example, Task

if TYPE_CHECKING:
    from latentcot.methods.thinking import ThinkingMethod
    from latentcot.models.backbone import Backbone

GAUSS, TOKEN = "gauss", "token"


@dataclass
class RolloutRecord:
    """What one rollout row fed and chose.

    Attributes:
        prompt_ids: the prompt's token ids.
        fed: inputs after the prompt, in order: a token id (int) or a (d,) vector (float32, detached).
        choices: (position, kind, token): `position` = inputs fed before the choice, so its distribution is the
            one after prompt + fed[:position]; kind GAUSS (the vector fed[position]) or TOKEN (`token`, which is
            fed[position] unless it ended the row).
        means: the rollout's noiseless means p_{t-1} E of its GAUSS choices (only when asked for; tests).
        entropies: entropy (nats) of p at each step the CoT decided (including the one that ended it).
        cot_steps: CoT steps fed (soft vectors, or hard CoT tokens), the marker excluded.
    """

    prompt_ids: list[int]
    fed: list[int | torch.Tensor] = field(default_factory=list)
    choices: list[tuple[int, str, int]] = field(default_factory=list)
    means: list[torch.Tensor] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    cot_steps: int = 0


class RecordingController(ThinkingController):
    """A ThinkingController that records, per row, every input it feeds and every random choice it makes.

    The thinking rows' top-1 ids and entropies come from the controller's one host read of the step (`top1s`,
    `ents`, for the rows `top1_rows`).
    """

    def __init__(self, method: ThinkingMethod, gen: GenerationConfig, rand: RowRandom, prompts: Sequence[list[int]],
                 keep_means: bool = False) -> None:
        super().__init__(method, gen, rand, len(prompts))
        self.records = [RolloutRecord(list(p)) for p in prompts]
        self.keep_means = keep_means
        self.eos_set = set(method.backbone.eos_ids)

    def inputs(self, state, active: Sequence[bool]) -> tuple[torch.Tensor, list[int]]:
        B = state.batch_size
        act = list(active)
        phase = list(self.phase)
        answered = list(self.answered)
        logits = state.logits.clone() if self.keep_means else None
        embeds, ids_l = super().inputs(state, active)
        hard = self.m.hard_thinking
        slot = {b: j for j, b in enumerate(self.top1_rows)}
        for b in range(B):
            if not act[b]:
                continue
            rec, pos, t = self.records[b], len(self.records[b].fed), ids_l[b]
            if b in slot:  # a CoT step was decided for this row
                j = slot[b]
                top1 = self.top1s[j]  # read from the device with the step's other numbers
                rec.entropies.append(self.ents[j])
                rec.cot_steps += int(t < 0)
                if hard:  # the sampled CoT token is a choice, fed unless it was EOS (then the marker is forced)
                    rec.choices.append((pos, TOKEN, top1))
                    rec.fed.append(t if t >= 0 else top1)
                    continue
                if t < 0:  # soft / fuzzy step: the noisy vector is the choice
                    rec.choices.append((pos, GAUSS, -1))
                    rec.fed.append(embeds[b].detach().float().clone())
                    if logits is not None:
                        mean = dense_mixture(token_probs(logits[b : b + 1], self.m.tau), self.m.backbone.embedding_matrix,
                                             self.m.embed_scale)
                        rec.means.append(mean[0].detach())
                    continue
                rec.fed.append(t)  # the marker-completing top-1 token or a forced marker token: no choice
                continue
            if phase[b] == ANSWER and self.answered[b] > answered[b]:
                rec.choices.append((pos, TOKEN, t))  # a sampled answer token (EOS included)
            if t >= 0 and t not in self.eos_set:
                rec.fed.append(t)
        return embeds, ids_l


def rollout(method: ThinkingMethod, examples: Sequence[Example], task: Task, gen: GenerationConfig, rand: RowRandom,
            keep_means: bool = False) -> tuple[list, list[RolloutRecord]]:
    """Rolls out one row per example (no gradients), KV-cached through the engine.

    Returns the RowOutputs (text = CoT trace + answer, as `generate` gives) and one RolloutRecord per row.
    """
    prompts = [method.prompt_ids(ex, task) for ex in examples]
    with torch.no_grad():
        state = method.engine.prefill(method.splice_rows([[tokens(p)] for p in prompts]))
        ctrl = RecordingController(method, gen, rand, prompts, keep_means)
        force = max(len(method.marker_ids), len(method.marker_sep_ids))
        answer_gen = dataclasses.replace(gen, max_new_tokens=gen.max_new_tokens + force)
        limit = method.cfg.max_think_steps + answer_gen.max_new_tokens + 2
        outs = method.engine.generate(state, answer_gen, rand, controller=ctrl, max_steps=limit)
        outs = [ctrl.finish(b, o, gen.stop) for b, o in enumerate(outs)]
    return outs, ctrl.records


@dataclass
class Replay:
    """Per-trajectory and per-choice log-probabilities of a replayed batch.

    Attributes:
        logp: (B,) sum over each row's choices (with gradients when computed with them).
        choice_logp: (M,) every choice's term, rows concatenated in order.
        choice_row: (M,) the row of each choice.
        means: (K,) list of the replayed noiseless means p_{t-1} E of the GAUSS choices, rows in order (d,) each.
    """

    logp: torch.Tensor
    choice_logp: torch.Tensor
    choice_row: torch.Tensor
    means: torch.Tensor | None = None


def _pieces(rec: RolloutRecord, device: torch.device) -> list[Piece]:
    """The row's pieces: the prompt, then runs of fed token ids and fed vectors."""
    out: list[Piece] = [tokens(rec.prompt_ids)]
    run: list = []
    for item in rec.fed + [None]:
        kind = None if item is None else isinstance(item, int)
        if run and (item is None or isinstance(run[0], int) != kind):
            out.append(tokens(run) if isinstance(run[0], int) else vectors(torch.stack(run).to(device)))  # (n, d)
            run = []
        if item is not None:
            run.append(item)
    return out


def replay(backbone: Backbone, embed_scale: float, records: Sequence[RolloutRecord], mode: str, tau: float,
           sigma: float, temperature: float, keep_means: bool = False) -> Replay:
    """Scores recorded trajectories by ONE teacher-forced, right-padded `Backbone.forward` (the policy, or a frozen
    reference) over prompt + fed inputs; differentiable when called with gradients enabled.

    Only the last layer's hidden states at the choice positions go through the LM head, so the recompute never
    holds (B, T, V) logits.

    Args:
        backbone: the model to score under.
        embed_scale: the embedding module's factor (see `models.soft.embedding_scale`).
        records: one per row.
        mode: hard | soft | fuzzy (GAUSS choices exist only in soft / fuzzy).
        tau, sigma: the soft/fuzzy temperature and noise scale of the rollout.
        temperature: the hard tokens' sampling temperature.
    """
    bb = backbone
    emb = bb.model.get_input_embeddings()
    dev = bb.device
    rows = [_pieces(r, dev) for r in records]
    batch = splice(rows, emb, bb.tokenizer.pad_token_id or 0, padding_side="right")  # (B, T, d), right padded
    out = bb.forward(batch.inputs_embeds, batch.attention_mask, batch.position_ids, want_hidden=True, logits_to_keep=1)
    hidden = out.hidden_states[-1]  # (B, T, d) after the final norm
    g_rows, g_pos, g_fed, t_rows, t_pos, t_ids, order = [], [], [], [], [], [], []
    for b, r in enumerate(records):
        start = len(r.prompt_ids) - 1  # the prompt's last position predicts the first choice
        for pos, kind, tok in r.choices:
            if kind == GAUSS:
                order.append((b, 0, len(g_rows)))
                g_rows.append(b)
                g_pos.append(start + pos)
                g_fed.append(r.fed[pos])
            else:
                order.append((b, 1, len(t_rows)))
                t_rows.append(b)
                t_pos.append(start + pos)
                t_ids.append(tok)
    head = bb.model.get_output_embeddings()
    terms = [torch.zeros(0, device=dev), torch.zeros(0, device=dev)]
    means = None
    if g_rows:
        logits = head(hidden[g_rows, g_pos])  # (Mg, V)
        fed = torch.stack(g_fed).to(dev)  # (Mg, d)
        terms[0] = soft_step_log_density(logits, fed, emb.weight, tau, sigma, embed_scale)
        if keep_means:
            means = dense_mixture(token_probs(logits, tau), emb.weight, embed_scale).detach()
    if t_rows:
        logits = head(hidden[t_rows, t_pos])  # (Mt, V)
        terms[1] = token_log_probs(logits, torch.tensor(t_ids, device=dev), temperature)
    if order:
        choice_logp = torch.stack([terms[k][i] for _, k, i in order])  # (M,)
    else:
        choice_logp = hidden.sum() * 0.0 + torch.zeros(0, device=dev)
    choice_row = torch.tensor([b for b, _, _ in order], dtype=torch.long, device=dev)
    logp = torch.zeros(len(records), device=dev).index_add(0, choice_row, choice_logp.float())  # (B,)
    if not order:
        logp = logp + hidden.sum() * 0.0  # keeps a graph so backward() works on an empty batch
    return Replay(logp, choice_logp, choice_row, means)
