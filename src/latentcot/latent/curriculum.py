"""The stage curriculum of Coconut (Hao et al., arXiv 2412.06769) and its controls (`pause`; `codi` uses the
rationale cut): which stage each optimizer step trains, how many continuous thoughts a stage uses, and the
rationale with its first k steps removed.

As the official code: stage k <= max_stage removes the first k rationale steps and uses k x c thoughts; after
max_stage comes a final stage that removes every remaining step and keeps max_stage x c thoughts, so on data with
more steps than stages (GSM8K: c=2, 3 stages) the model is finally trained to answer with no text rationale.

The settings that build a `Curriculum` are `CurriculumConfig` in `latentcot.methods.latent` (a method config).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass

from latentcot.decoding.sampling import row_seed
from latentcot.errors import ConfigError
from latentcot.tasks.base import Example


@dataclass(frozen=True)
class Curriculum:
    """Which stage each optimizer step trains, and how many thoughts each stage uses."""

    thoughts_per_step: int
    max_stage: int
    start_stage: int = 0
    stage_steps: int = 0
    mix_prob: float = 0.0
    final_stage: bool = True

    @classmethod
    def from_config(cls, cfg) -> Curriculum:
        """From a `CurriculumConfig` (any object with the same fields)."""
        return cls(cfg.thoughts_per_step, cfg.max_stage, cfg.start_stage, cfg.stage_steps, cfg.mix_prob,
                   getattr(cfg, "final_stage", True))

    @property
    def last_stage(self) -> int:
        """The last stage of the schedule: max_stage + 1 (the final stage) or max_stage without it."""
        return self.max_stage + 1 if self.final_stage else self.max_stage

    def is_final(self, stage: int) -> bool:
        """Whether `stage` is the final stage: every remaining rationale step removed, max_stage x c thoughts (the
        official code's stages beyond `max_latent_stage`)."""
        return self.final_stage and stage > self.max_stage

    def stage_at(self, step: int, total: int) -> int:
        """The stage of optimizer step `step` (0-based) of a `total`-step run (stages start_stage..last_stage)."""
        if self.stage_steps > 0:
            return min(self.start_stage + step // self.stage_steps, self.last_stage)
        n = self.last_stage - self.start_stage + 1
        return self.start_stage + min(step * n // max(1, total), n - 1)

    def stage_window(self, step: int, total: int) -> tuple[int, int]:
        """(first step, number of steps) of the stage that optimizer step `step` trains."""
        i = self.stage_at(step, total) - self.start_stage
        if self.stage_steps > 0:
            first = i * self.stage_steps
            last = total if self.start_stage + i == self.last_stage else min(total, first + self.stage_steps)
        else:  # step s is in stage i iff s * n // total == i, i.e. ceil(i * total / n) <= s < ceil((i+1) * total / n)
            n = self.last_stage - self.start_stage + 1
            first, last = -(-i * total // n), -(-(i + 1) * total // n)
        return first, max(1, last - first)

    def stage_changes(self, step: int, total: int) -> bool:
        return step > 0 and self.stage_at(step, total) != self.stage_at(step - 1, total)

    def sample_stage(self, step: int, total: int, key: str) -> int:
        """The stage one example trains at: the current one, or with prob. mix_prob a uniformly drawn earlier one.

        The draw depends only on (step, example id), so a resumed run draws exactly what an uninterrupted one does.
        """
        stage = self.stage_at(step, total)
        if self.mix_prob <= 0 or stage == 0:
            return stage
        rng = random.Random(row_seed(step, key, 0))
        return rng.randrange(stage) if rng.random() < self.mix_prob else stage

    def thoughts(self, stage: int) -> int:
        """Continuous thoughts at `stage` (the final stage keeps max_stage x c)."""
        return min(stage, self.max_stage) * self.thoughts_per_step

    def table(self, total: int, steps: Sequence[str] = ()) -> list[dict]:
        """One row per stage: its optimizer steps, thoughts, and which rationale steps of `steps` remain as text
        (a rationale with fewer steps than the stage: none, with the stage's thoughts, as `pad_latent_to_max`)."""
        rows: dict[int, dict] = {}
        for s in range(total):
            k = self.stage_at(s, total)
            row = rows.setdefault(k, {"stage": k, "first_step": s, "last_step": s, "thoughts": self.thoughts(k),
                                      "remaining": [] if self.is_final(k) else list(steps[k:]),
                                      "final": self.is_final(k)})
            row["last_step"] = s
        return [rows[k] for k in sorted(rows)]


def split_rationale(ex: Example, k: int) -> tuple[str, str]:
    """(text of the first k steps, text of the rest) of the example's rationale, cut where step k ends.

    Cutting the original rationale keeps its separators (newlines, spaces) intact; steps are located in order.
    """
    steps = list(ex.steps)
    text = ex.rationale if ex.rationale is not None else " ".join(steps)
    pos = 0
    for s in steps[:k]:
        i = text.find(s, pos)
        if i < 0:  # steps were normalised by the loader: fall back to joining them
            return " ".join(steps[:k]), " ".join(steps[k:])
        pos = i + len(s)
    return text[:pos].strip(), text[pos:].strip()


def without_first_steps(ex: Example, k: int, field: str, strict: bool) -> Example:
    """The example with its first k rationale steps removed (ConfigError when it has fewer and `strict`)."""
    if k > len(ex.steps):
        if strict:
            raise ConfigError(
                f"{field}: stage {k} removes {k} rationale steps but example {ex.id} has {len(ex.steps)}: lower "
                f"{field}, or set pad_latent_to_max=true to remove all steps of short rationales (keeping the stage's "
                "thoughts, as the official code)"
            )
        k = len(ex.steps)
    if k == 0:
        return ex
    _, rest = split_rationale(ex, k)
    return dataclasses.replace(ex, rationale=rest or None, steps=tuple(ex.steps[k:]))
