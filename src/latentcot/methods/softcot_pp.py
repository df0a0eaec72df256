"""`softcot_pp`: SoftCoT++ (Xu et al., "SoftCoT++: Test-Time Scaling with Soft Chain-of-Thought Reasoning",
arXiv 2505.11484), built on `softcot`.

SoftCoT's thoughts are a fixed function of the question, so every decoded chain starts from the same soft
thoughts. SoftCoT++ gives the frozen assistant K different starts: chain k fills its N placeholder positions
with the embedding row of its own token (the official code uses K = 10 reserved or rare tokens of the
assistant's vocabulary), so one question yields K soft-thought sets, each projected and spliced into the frozen
backbone as in SoftCoT. Training adds an InfoNCE term that pulls each set towards a dropout(0.5) copy of itself
and away from the other sets' copies (temperature 0.05), which keeps the K sets apart. At evaluation the K
chains of every question are decoded in one batch and their answers combined by majority vote; per-chain
pass@K and sc@K go to metrics.json under "chains".

Differences from the official code (read, not run): the contrastive term is formed per question at any batch
size (the official loop reassigns the hidden states it indexes and is right only at batch size 1); the chain
tokens are frozen rows (officially a parameter, but the assistant runs under no_grad, so it never changes);
the K chains' LM losses are averaged, not summed, so `contrastive_weight` = 1/K^2 reproduces the official
balance (the InfoNCE mean divided by K against a sum of K LM losses; Adam is invariant to the common scale).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from latentcot.config import check
from latentcot.decoding.engine import RowOutput
from latentcot.decoding.sampling import GenerationConfig, RowRandom, row_seed
from latentcot.errors import ModelError
from latentcot.eval.metrics import compute_metrics, majority_vote
from latentcot.methods.base import LossOutput, distinct_questions, register
from latentcot.methods.softcot import SoftCoT, SoftCoTConfig
from latentcot.models.backbone import Backbone
from latentcot.objectives.contrastive import dropout_copy, info_nce
from latentcot.tasks.base import Example, Task

log = logging.getLogger(__name__)


@dataclass
class SoftCoTPPConfig(SoftCoTConfig):
    """SoftCoT's settings, plus:

    Attributes:
        num_chains: K, soft-thought sets (and decoded chains) per question; >= 2 for a majority vote
            (official: 10).
        chain_token_ids: the K assistant token ids whose embedding rows start the chains (official: Llama-3
            ids 128011..128020, reserved special tokens; Qwen ids 150001..150010). Empty: the K last ids of the
            assistant's base vocabulary (rare tokens, as the official Qwen choice).
        contrastive_weight: weight of the InfoNCE term against the mean LM loss over chains (0 = off, the
            paper's "w/o contrastive" ablation; 1/K^2 = the official balance, 0.01 at K = 10).
        contrastive_temperature: InfoNCE softmax temperature (official: 0.05, cosines x 20).
        contrastive_dropout: dropout probability of the teacher copy (official: 0.5).
    """

    num_chains: int = 10
    chain_token_ids: list[int] = field(default_factory=list)
    contrastive_weight: float = 0.01
    contrastive_temperature: float = 0.05
    contrastive_dropout: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.num_chains >= 2, "num_chains",
              f"must be >= 2 (the chains' answers are combined by majority vote), got {self.num_chains}; use method softcot for one chain")
        check(self.contrastive_weight >= 0, "contrastive_weight", f"must be >= 0 (0 = off), got {self.contrastive_weight}")
        check(self.contrastive_temperature > 0, "contrastive_temperature", f"must be > 0, got {self.contrastive_temperature}")
        check(0 <= self.contrastive_dropout < 1, "contrastive_dropout", f"must be in [0, 1), got {self.contrastive_dropout}")
        if self.chain_token_ids:
            check(len(self.chain_token_ids) == self.num_chains, "chain_token_ids",
                  f"needs one id per chain: {len(self.chain_token_ids)} ids for num_chains={self.num_chains}")
            check(len(set(self.chain_token_ids)) == len(self.chain_token_ids), "chain_token_ids", "ids must be distinct")


def chain_random(rand: RowRandom | None, k: int) -> RowRandom | None:
    """K random streams per row, row-major (row b's chains are rows b*K .. b*K+K-1), each seeded from one draw of
    row b's own stream: sampled chains depend only on the row's seed, never on the batch."""
    if rand is None:
        return None
    seeds = []
    for g in rand.generators:
        base = int(torch.randint(0, 2**62, (), generator=g))
        seeds.extend(row_seed(base, "softcot_pp-chain", c) for c in range(k))
    return RowRandom(seeds, rand.device)


@register("softcot_pp")
class SoftCoTPP(SoftCoT):
    """SoftCoT with K soft-thought sets per question, a contrastive term, and majority vote over K chains."""

    plain_prompts = True  # generation = plain (spliced) prompts through self.generator

    Config = SoftCoTPPConfig
    trains = True

    def __init__(self, cfg: SoftCoTPPConfig, backbone: Backbone, assistant: Backbone | None = None) -> None:
        super().__init__(cfg, backbone, assistant)
        self.chain_ids = self.pick_chain_tokens()

    def pick_chain_tokens(self) -> list[int]:
        """The K chain-start token ids, checked to exist and to have K distinct embedding rows."""
        cfg, a = self.cfg, self.assistant
        rows = a.model.get_input_embeddings().weight
        base = int(getattr(a.tokenizer, "vocab_size", 0) or rows.shape[0])
        ids = list(cfg.chain_token_ids) or list(range(base - cfg.num_chains, base))
        bad = [i for i in ids if not 0 <= i < rows.shape[0]]
        if bad:
            raise ModelError(f"chain_token_ids: id {bad[0]} is outside the vocabulary of assistant {a.name} "
                             f"({rows.shape[0]} rows); pick ids below {rows.shape[0]}")
        emb = rows[ids].detach().float()  # (K, d_a)
        if torch.cdist(emb, emb).add(torch.eye(len(ids), device=emb.device)).min() <= 0:
            raise ModelError(f"chain_token_ids {ids}: some share one embedding row in assistant {a.name}, so their "
                             "chains would be identical; set chain_token_ids to tokens with distinct rows")
        return ids

    @classmethod
    def smoke_settings(cls, model: str) -> dict[str, Any]:
        return {**super().smoke_settings(model), "num_chains": 2}

    # --- K thought sets per question ---------------------------------------------------------------------------
    def chain_thoughts(self, examples: Sequence[Example], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One assistant forward over B x K rows (row b*K + k: question b started by chain token k).

        Returns:
            thoughts: (B*K, n, d) projected thoughts, row-major by question.
            prefill: (B*K,) assistant positions read per row.
        """
        k = self.cfg.num_chains
        rows = [ex for ex in examples for _ in range(k)]
        return self.soft_thoughts(rows, n, self.chain_ids * len(examples))

    # --- the interface -----------------------------------------------------------------------------------------
    def loss(self, examples: Sequence[Example], task: Task) -> LossOutput:
        k, cfg = self.cfg.num_chains, self.cfg
        thoughts, _ = self.chain_thoughts(examples, cfg.num_thoughts_train)  # (B*K, N_train, d)
        rows = [ex for ex in examples for _ in range(k)]
        out = self.sft_loss(self.backbone_rows(rows, task, thoughts, with_target=True))  # mean over chains' tokens
        out.logs["lm_loss"] = float(out.loss.detach())
        if cfg.contrastive_weight > 0:
            student = thoughts.reshape(len(examples), k, -1)  # (B, K, N_train*d)
            teacher = dropout_copy(student, cfg.contrastive_dropout, self.training)
            nce = info_nce(student, teacher, cfg.contrastive_temperature)
            out.loss = out.loss + cfg.contrastive_weight * nce
            out.logs["contrastive"] = float(nce.detach())
        out.logs["loss"] = float(out.loss.detach())
        out.logs["thought_norm"] = float(thoughts.detach().norm(dim=-1).mean())
        return out

    def generate(
        self, examples: Sequence[Example], task: Task, gen: GenerationConfig, rand: RowRandom | None
    ) -> list[RowOutput]:
        k = self.cfg.num_chains
        firsts, rows = distinct_questions(examples)  # samples of one question share its assistant pass
        thoughts, prefill = self.chain_thoughts(firsts, self.cfg.num_thoughts)  # (U*K, N, d)
        pick = torch.tensor([r * k + c for r in rows for c in range(k)], device=thoughts.device)  # (B*K,)
        chain_rows = [ex for ex in examples for _ in range(k)]
        outs = self.decode(chain_rows, task, thoughts[pick], prefill[pick], gen, chain_random(rand, k))
        return [self.vote(ex, task, outs[i * k : (i + 1) * k]) for i, ex in enumerate(examples)]

    def vote(self, ex: Example, task: Task, chains: Sequence[RowOutput]) -> RowOutput:
        """One row from its K chains: the first chain holding the majority answer.

        The vote runs over strict answers (over flexible ones when no chain has a strict answer), so the row's
        strict accuracy is the chains' self-consistency. Prefill and decode steps count all K chains; the output
        text and its tokens are the chosen chain's; every chain's answer is kept in `extra["chains"]`.
        """
        scored = [task.score(ex, c.text) for c in chains]
        key = "pred_strict" if any(s["pred_strict"] is not None for s in scored) else "pred_flexible"
        answers = [s[key] for s in scored]

        def same(a: str, b: str) -> bool:
            return task.is_equivalent(a, b)

        win = majority_vote(answers, same)
        chosen = next((i for i, a in enumerate(answers) if a is not None and (a == win or same(win, a))), 0)
        per_chain = [{"output": c.text, "generated_tokens": len(c.token_ids), "finish_reason": c.finish_reason,
                      "decode_steps": c.decode_steps, **s} for c, s in zip(chains, scored)]
        extra = {**chains[chosen].extra, "chains": per_chain, "chosen_chain": chosen, "vote_over": key,
                 "generated_tokens_all_chains": sum(len(c.token_ids) for c in chains)}
        return dataclasses.replace(
            chains[chosen],
            decode_steps=sum(c.decode_steps for c in chains),
            prefill_tokens=sum(c.prefill_tokens for c in chains),
            seconds=sum(c.seconds for c in chains),
            extra=extra,
        )

    def extra_metrics(self, records: Sequence[dict[str, Any]], task: Task) -> dict[str, Any]:
        """Per-chain metrics: every chain as one sample (pass@1 = mean chain accuracy, pass@K, sc@K)."""
        k = self.cfg.num_chains
        flat = []
        for r in records:
            for c, ch in enumerate((r.get("extra") or {}).get("chains") or []):
                flat.append({"id": r["id"], "seed": r["seed"], "sample": int(r["sample"]) * k + c, "gold": r["gold"],
                             "generated_tokens": ch["generated_tokens"], "decode_steps": ch["decode_steps"],
                             **{f: ch[f] for f in ("pred_strict", "pred_flexible", "correct_strict", "correct_flexible")}})
        if not flat:
            return {}
        per_q = len(flat) // max(len({(r["id"], r["seed"]) for r in flat}), 1)
        return {"chains": compute_metrics(flat, task.is_equivalent, sorted({1, k, per_q}))}
