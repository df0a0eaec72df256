"""`rloo`: RL over hard, soft and fuzzy chains of thought with RLOO (Butt et al., "Soft Tokens, Hard Truths",
arXiv 2509.19170).

Each optimizer step takes `prompts_per_step` prompts x `group_size` samples. The rows are rolled out batched and
KV-cached through the engine in `rollout_mode`: `hard` (sampled tokens), `soft` (h_t = p_{t-1} E + sigma eps over
the whole vocabulary, p at tau = `soft_tau` 0.5) or `fuzzy` (tau = `fuzzy_tau` 1e-4), sigma = `noise_scale`
(0.33) x the RMS norm of the embedding rows. The CoT ends at the `think_end` marker (the task's answer trigger)
or after `max_cot_tokens`; the answer is sampled hard tokens. The rollout records what it fed
(`training/rollout.py`); one teacher-forced forward over the record gives log pi(traj) with gradients: Gaussian
log-densities of the soft inputs plus log-probs of the sampled tokens. Rewards come from the task's own scorer
(100 / 10 / 0), advantages are leave-one-out, loss = -mean A log pi (+ `kl_coef` x KL to the start policy).
With `antithetic` (not in the paper), soft / fuzzy samples come in mirrored pairs (noise eps and -eps) and each
sample's baseline leaves its pair out.

The shared training loop drives it: a loop micro-batch is `micro_batch // group_size` prompts (whole groups), and
`prompts_per_step x group_size / micro_batch` micro-batches make a step (`train_config`). Rollout randomness comes
from per-row streams seeded by (run seed, step, question, sample), so a resumed run repeats exactly.
`generate` (evaluation) thinks in `token_mode` (default: the rollout mode), greedy or sampled by `temperature`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from latentcot.config import check
from latentcot.decoding.controllers import ThoughtInputs
from latentcot.decoding.sampling import GenerationConfig, RowRandom, next_tokens, row_seed
from latentcot.errors import ConfigError
from latentcot.methods.base import LossOutput, register
from latentcot.methods.sft import apply_lora, check_lora
from latentcot.methods.soft_tokens import MODES, SoftTokens, SoftTokensConfig
from latentcot.models.backbone import Backbone
from latentcot.models.soft import add_gaussian_noise, dense_mixture, entropy, noise_sigma, token_probs
from latentcot.objectives.rloo import (
    REWARD_MATCHES,
    all_equal_share,
    kl_k3,
    policy_loss,
    rewards_from_scores,
    rloo_advantages,
)
from latentcot.tasks.base import Example, Extracted, Task
from latentcot.training.distributed import launched_world_size
from latentcot.training.rollout import replay, rollout

log = logging.getLogger(__name__)


@dataclass
class RLOOConfig(SoftTokensConfig):
    """Attributes (besides soft_tokens' soft_tau, fuzzy_tau, noise_scale, think_end):
    rollout_mode: hard | soft | fuzzy, how training rollouts think.
    token_mode: how `generate` (evaluation) thinks ("" = rollout_mode).
    group_size: samples per prompt G (>= 2: leave-one-out needs two).
    prompts_per_step: prompts P per optimizer step.
    micro_batch: rollout rows per forward (a multiple of group_size dividing P x G; 0 = P x G).
    max_cot_tokens: CoT budget in steps (0 = max_think_steps).
    max_answer_tokens: answer budget of a rollout (hard tokens after the marker).
    rollout_temperature: temperature of sampled hard tokens (hard CoT and answers) in rollouts.
    reward_correct / reward_format / reward_wrong: reward when correct / answered but wrong / no answer.
    reward_match: which of the task scorer's extractions decides (strict: "The answer is N"; flexible: the task's
        looser one, e.g. the last number), as `accuracy_strict` / `accuracy_flexible` in evaluation.
    normalize_advantages: divide advantages by their batch standard deviation.
    antithetic: soft / fuzzy rollouts in mirrored pairs (samples 2k and 2k+1 of a group get noise eps and -eps at
        every CoT step both are still thinking; needs an even group_size >= 4), with each sample's baseline the mean
        reward of the group outside its pair (leave-one-pair-out, unbiased). A variance reduction for the Gaussian
        score, not a setting of the paper.
    kl_coef: weight of the KL penalty to the frozen start policy (0 = off).
    lora_r, lora_alpha, lora_dropout, lora_targets: LoRA through PEFT (lora_r 0 = full fine-tune).
    freeze_embeddings: full fine-tuning with the input embedding matrix E frozen (and the LM head with it when the
        model ties them). The estimator is unchanged; only E gets no update. A diagnostic, not a setting of the
        paper: in fuzzy mode E's gradient is the Gaussian term's A * eps / sigma on the fed rows (p is one-hot).
        A run saved with it has no E in its weights (it comes from the model / init_from again).
    init_from: full-model weights (a run directory or .safetensors, e.g. a cot_sft run) to start from.
    """

    token_mode: str = ""
    rollout_mode: str = "soft"
    group_size: int = 8
    prompts_per_step: int = 4
    micro_batch: int = 0
    max_cot_tokens: int = 0
    max_answer_tokens: int = 16
    rollout_temperature: float = 1.0
    reward_correct: float = 100.0
    reward_format: float = 10.0
    reward_wrong: float = 0.0
    reward_match: str = "strict"
    normalize_advantages: bool = False
    antithetic: bool = False
    kl_coef: float = 0.0
    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["all-linear"])
    freeze_embeddings: bool = False
    init_from: str | None = None

    def __post_init__(self) -> None:
        check(self.rollout_mode in MODES, "rollout_mode", f"must be one of {', '.join(MODES)}, got {self.rollout_mode!r}")
        if not self.token_mode:
            self.token_mode = self.rollout_mode
        if self.max_cot_tokens:
            self.max_think_steps = self.max_cot_tokens
        super().__post_init__()
        check(self.group_size >= 2, "group_size", f"must be >= 2 (leave-one-out needs two samples), got {self.group_size}")
        check(self.prompts_per_step >= 1, "prompts_per_step", f"must be >= 1, got {self.prompts_per_step}")
        rows = self.prompts_per_step * self.group_size
        mb = self.micro_batch or rows
        check(mb > 0 and rows % mb == 0 and mb % self.group_size == 0, "micro_batch",
              f"must divide prompts_per_step x group_size = {rows} and be a multiple of group_size = {self.group_size}, "
              f"got {self.micro_batch}")
        check(self.max_cot_tokens >= 0, "max_cot_tokens", f"must be >= 0, got {self.max_cot_tokens}")
        check(self.max_answer_tokens >= 1, "max_answer_tokens", f"must be >= 1, got {self.max_answer_tokens}")
        check(self.rollout_temperature > 0, "rollout_temperature", f"must be > 0 (rollouts sample), got {self.rollout_temperature}")
        if self.rollout_mode != "hard":
            check(self.noise_scale > 0, "noise_scale", f"sigma must be > 0 in {self.rollout_mode} mode (the Gaussian "
                  f"density needs noise), got noise_scale={self.noise_scale}")
            check(self.soft_top_k == 0, "soft_top_k", "must be 0 for RL rollouts (the log-density is over the whole vocabulary)")
        if self.antithetic:
            check(self.rollout_mode != "hard", "antithetic", "mirrors the Gaussian noise of soft / fuzzy rollouts; "
                  "hard rollouts have none")
            check(self.group_size >= 4 and self.group_size % 2 == 0, "antithetic",
                  f"needs an even group_size >= 4 (pairs, and another pair for the baseline), got {self.group_size}")
        check(self.reward_match in REWARD_MATCHES, "reward_match",
              f"must be one of {', '.join(REWARD_MATCHES)}, got {self.reward_match!r}")
        for name in ("reward_correct", "reward_format", "reward_wrong", "kl_coef"):
            v = getattr(self, name)
            check(math.isfinite(v), name, f"must be a finite number, got {v}")
        check(self.kl_coef >= 0, "kl_coef", f"must be >= 0, got {self.kl_coef}")
        check(self.lora_r >= 0, "lora_r", f"must be >= 0 (0 = full fine-tune), got {self.lora_r}")
        check_lora(self.lora_alpha, self.lora_dropout, self.lora_targets)
        check(not (self.freeze_embeddings and self.lora_r > 0), "freeze_embeddings",
              "is for full fine-tuning (lora_r=0); LoRA already leaves the embeddings frozen")


@register("rloo")
class RLOO(SoftTokens):
    """RLOO policy-gradient training of hard / soft / fuzzy CoT; evaluation as `soft_tokens`."""

    Config = RLOOConfig
    trains = True
    starts_as_model = True

    def __init__(self, cfg: RLOOConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        if cfg.init_from:
            _load_full(backbone, cfg.init_from)
            module = backbone.model.get_input_embeddings()
            self.sigma = noise_sigma(module.weight, cfg.noise_scale, self.embed_scale)
        self._ref: list[Backbone] = []  # a list: the frozen copy is no submodule (never saved)
        if cfg.lora_r > 0:
            apply_lora(backbone, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        else:
            if cfg.kl_coef > 0:
                frozen = copy.deepcopy(backbone.model).requires_grad_(False).eval()
                self._ref.append(Backbone(frozen, backbone.tokenizer, backbone.name))
            backbone.model.requires_grad_(True)
            if cfg.freeze_embeddings:
                backbone.model.get_input_embeddings().weight.requires_grad_(False)
        self.seed = torch.initial_seed()  # the run's seed (train_run seeds torch before building the method)
        self.step = 0
        self.mode = cfg.token_mode
        self.hard_thinking = self.mode == "hard"

    @classmethod
    def smoke_settings(cls, model: str) -> dict[str, Any]:
        return {"max_think_steps": 6, "group_size": 3, "prompts_per_step": 2, "max_answer_tokens": 4}

    @classmethod
    def smoke_task(cls, model: str) -> Task:
        """A task on which a random tiny model's rewards vary within a group (so a smoke step has a gradient)."""
        return _ParityTask()

    @property
    def tau(self) -> float:
        return self.cfg.soft_tau if self.mode == "soft" else self.cfg.fuzzy_tau

    def _use(self, mode: str) -> None:
        self.mode, self.hard_thinking = mode, mode == "hard"

    def think_inputs(self, logits: torch.Tensor, rand: RowRandom | None, gen: GenerationConfig) -> ThoughtInputs:
        if self.mode == "hard":
            ids = next_tokens(logits, gen, rand)[:, None]  # (n, 1)
            return ThoughtInputs(None, ids, torch.ones_like(ids, dtype=torch.float32), entropy(token_probs(logits, 1.0)))
        probs = token_probs(logits, self.tau)  # (n, V)
        h = dense_mixture(probs, self.backbone.embedding_matrix, self.embed_scale)  # (n, d)
        w, ids = probs.topk(min(2, probs.shape[-1]), dim=-1)  # (n, 2): the visible trace
        if not gen.greedy and self.sigma > 0:
            h = add_gaussian_noise(h, self.sigma, rand)
        return ThoughtInputs(h, ids, w, entropy(probs))

    def generate(self, examples: Sequence[Example], task: Task, gen: GenerationConfig, rand: RowRandom | None):
        self._use(self.cfg.token_mode)
        return super().generate(examples, task, gen, rand)

    # --- training ----------------------------------------------------------------------------------------------
    def train_config(self, cfg: Any) -> Any:
        """The loop's batching for whole groups: micro-batch = micro_batch // G prompts, P x G // micro_batch of them."""
        c: RLOOConfig = self.cfg
        rows = c.prompts_per_step * c.group_size
        mb = c.micro_batch or rows
        world = launched_world_size()
        if cfg.global_batch_size not in (0, c.prompts_per_step * world):
            raise ConfigError(
                f"global_batch_size: rloo takes prompts_per_step={c.prompts_per_step} prompts per step on each of "
                f"{world} process(es), so a step holds {c.prompts_per_step * world}, not {cfg.global_batch_size}: "
                f"set prompts_per_step (and group_size, micro_batch) instead and leave global_batch_size at 0")
        new = dataclasses.replace(cfg, train_batch_size=mb // c.group_size, grad_accum=rows // mb)
        if (cfg.train_batch_size, cfg.grad_accum) != (new.train_batch_size, new.grad_accum):
            log.info("rloo: train_batch_size=%d grad_accum=%d (from prompts_per_step, group_size, micro_batch)",
                     new.train_batch_size, new.grad_accum)
        return new

    def begin_step(self, step: int, total_steps: int) -> bool:
        self.step = step
        return False

    def rollout_generation(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.cfg.max_answer_tokens, temperature=self.cfg.rollout_temperature)

    def rollout_rows(self, examples: Sequence[Example], task: Task, keep_means: bool = False):
        """G rows per example rolled out in `rollout_mode` (eval mode, no gradients): (rows, outputs, records)."""
        c: RLOOConfig = self.cfg
        rows = [ex for ex in examples for _ in range(c.group_size)]
        seeds = [row_seed(self.seed, f"{self.step}|{ex.id}", g) for ex in examples for g in range(c.group_size)]
        was = self.training
        self.eval()
        self._use(c.rollout_mode)
        try:
            rand = RowRandom(seeds, self.backbone.device)
            if c.antithetic:
                rand.mirror([(i, i + 1) for i in range(0, len(rows), 2)])
            outs, records = rollout(self, rows, task, self.rollout_generation(), rand, keep_means)
        finally:
            self._use(c.token_mode)
            self.train(was)
        return rows, outs, records

    def replay(self, records, reference: bool = False, keep_means: bool = False):
        """log pi of recorded rollouts (with gradients), or under the frozen start policy when `reference`."""
        c: RLOOConfig = self.cfg
        tau = c.soft_tau if c.rollout_mode == "soft" else c.fuzzy_tau
        args = (self.embed_scale, records, c.rollout_mode, tau, self.sigma, c.rollout_temperature, keep_means)
        if not reference:
            return replay(self.backbone, *args)
        with torch.no_grad():
            if self._ref:
                return replay(self._ref[0], *args)
            with self.backbone.model.disable_adapter():  # LoRA: the base model is the start policy
                return replay(self.backbone, *args)

    def scored_rollouts(self, examples: Sequence[Example], task: Task):
        """`rollout_rows` scored by the task: (records, rewards (N,), logs of the rollouts: reward, reward_std,
        all_equal_groups, accuracy, cot_len, entropy). What a training step logs about its rollouts, and what
        `recipes/rloo_paired_base.py` computes when it replays a run's steps under other weights."""
        c: RLOOConfig = self.cfg
        rows, outs, records = self.rollout_rows(examples, task)
        scores = [task.score(ex, o.text) for ex, o in zip(rows, outs)]
        rewards = rewards_from_scores(scores, c.reward_correct, c.reward_format, c.reward_wrong, c.reward_match)
        ents = [e for r in records for e in r.entropies]
        logs = {
            "reward": float(rewards.mean()),
            "reward_std": float(rewards.std(unbiased=False)),
            "all_equal_groups": all_equal_share(rewards.view(len(examples), c.group_size)),
            "accuracy": 100.0 * sum(bool(s[f"correct_{c.reward_match}"]) for s in scores) / len(scores),
            "cot_len": sum(r.cot_steps for r in records) / len(records),
            "entropy": sum(ents) / max(1, len(ents)),
        }
        return records, rewards, logs

    def loss(self, examples: Sequence[Example], task: Task) -> LossOutput:
        c: RLOOConfig = self.cfg
        t0 = time.perf_counter()
        records, rewards, rollout_logs = self.scored_rollouts(examples, task)
        t1 = time.perf_counter()
        grouped = rewards.view(len(examples), c.group_size)  # (P', G)
        adv = rloo_advantages(grouped, c.normalize_advantages, pairs=c.antithetic).flatten().to(self.backbone.device)  # (N,)
        rep = self.replay(records)
        loss = policy_loss(rep.logp, adv)
        logs: dict[str, float] = {}
        if c.kl_coef > 0:
            ref = self.replay(records, reference=True)
            per_row = torch.zeros_like(rep.logp).index_add(0, rep.choice_row, kl_k3(rep.choice_logp, ref.choice_logp))
            kl = per_row.mean()
            loss = loss + c.kl_coef * kl
            logs["kl"] = float(kl.detach())
        logs.update({
            "loss": float(loss.detach()),
            **rollout_logs,
            "logp": float(rep.logp.detach().mean()),
            "rollout_s": t1 - t0,
            "step_s": time.perf_counter() - t0,
        })
        return LossOutput(loss, logs, weight=float(len(records)))

    def finish_training(self, out_dir: Path) -> None:
        """Draws reward and accuracy over steps (rollout and held-out) from train_log.jsonl."""
        from latentcot.analysis.rl import plot_rl_log

        plot_rl_log(Path(out_dir) / "train_log.jsonl", Path(out_dir) / "reward_accuracy.png", f"rloo {self.cfg.rollout_mode}")


class _ParityTask(Task):
    """Smoke task: the answer is the parity of the sum of the output's character codes, right when even. Random
    tiny models get mixed rewards within a group, so a smoke step has a gradient (leave-one-out needs them)."""

    name = "rloo_parity"
    splits = ("train",)
    default_split = train_split = "train"

    def load(self, split: str | None = None) -> list[Example]:
        return [Example("p0", "Say a letter.", "even"), Example("p1", "Say a letter or a digit, please.", "even")]

    def extract(self, text: str) -> Extracted:
        s = text.strip()
        got = ("even" if sum(map(ord, s)) % 2 == 0 else "odd") if s else None
        return Extracted(got, got)

    def is_equivalent(self, pred: str | None, gold: str) -> bool:
        return pred == gold


def _load_full(backbone: Backbone, path: str) -> None:
    """Loads a full fine-tune's weights (e.g. cot_sft's `backbone.model.*`) into the backbone's model."""
    from latentcot.errors import CheckpointError
    from latentcot.training.checkpoint import load_weights

    prefix = "backbone.model."
    state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in load_weights(path).items()}
    result = backbone.model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"init_from={path} does not fit {backbone.name}: unexpected {result.unexpected_keys[:3]}")
    params = {n for n, _ in backbone.model.named_parameters()}
    missing = [k for k in result.missing_keys if k in params]
    if missing:
        raise CheckpointError(f"init_from={path} does not cover {backbone.name}: missing {missing[:3]}")
