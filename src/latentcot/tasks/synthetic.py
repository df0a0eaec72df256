"""Synthetic reasoning tasks generated locally: the shared machinery (splits, targets, answer extraction).

Synthetic tasks are how continuous-thought training (Coconut, arXiv 2412.06769; CODI, arXiv 2502.21074) is shown
to work with tiny models trained from scratch on a CPU. Every synthetic task:

- is generated on the fly, any size, deterministic given its Config (same settings -> same examples);
- is written in a closed vocabulary of whitespace-separated words, one word = one token, listed by
  `vocabulary()` so that `word_level_tokenizer(task.vocabulary())` covers every question, rationale and target;
- has the splits "train", "valid" and "test", drawn from disjoint seeds *and* from disjoint parts of the problem
  space: a stable hash of the question assigns each possible problem to exactly one split (80/10/10), so no test
  problem is ever a train problem, whatever the sizes. Duplicates *within* a split are possible when the problem
  space is small;
- is prefix-stable: `num_test=100` gives the first 100 examples of `num_test=500`;
- uses the question itself as the prompt (no instruction, no chat template) and "STEP STEP ... #### ANSWER" as
  the SFT target, each step's tokens space separated.

The tasks live in `synthetic_pointer.py` (pointer_chase, pointer_chase2), `synthetic_arith.py` (arith_chain,
multiplication) and `synthetic_prosqa.py` (prosqa_synth).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from latentcot.errors import DataError
from latentcot.tasks.base import Example, Extracted, Task, TaskConfig

ANSWER_MARK = "####"
SPLITS = ("train", "valid", "test")
# Each problem belongs to one split by a stable hash of its question: buckets [0, 2) test, [2, 4) valid, rest train.
_BUCKETS = 20
_SHARE = {"test": 2 / _BUCKETS, "valid": 2 / _BUCKETS, "train": 16 / _BUCKETS}
# Candidates are drawn in fixed-size batches so that a smaller split is a prefix of a larger one.
_BATCH = 1024
_SPECIAL = re.compile(r"^<\|.*\|>$")

Candidate = tuple[str, tuple[str, ...], str, dict[str, Any]]  # (question, steps, answer, meta)


def split_of(question: str) -> str:
    """The split that owns a problem, from a stable hash of its question text."""
    h = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=8).digest(), "little") % _BUCKETS
    return "test" if h < 2 else "valid" if h < 4 else "train"


@dataclass
class SyntheticConfig(TaskConfig):
    """Settings every synthetic task has.

    Attributes:
        seed: generator seed; each split draws from its own stream derived from it.
        num_train: examples in the "train" split.
        num_valid: examples in the "valid" split.
        num_test: examples in the "test" split.
    """

    seed: int = 0
    num_train: int = 10000
    num_valid: int = 500
    num_test: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        from latentcot.config import check

        for name in ("num_train", "num_valid", "num_test"):
            n = getattr(self, name)
            check(n >= 0, f"task.{name}", f"must be >= 0, got {n}")


class SyntheticTask(Task):
    """A task generated from a seed. Subclasses set `salt`, implement `_sample`, `_answer_like` and `vocabulary`.

    `salt` separates the random streams of task families; two tasks that share it (pointer_chase and
    pointer_chase2) generate the same problems from the same seed.
    """

    Config: type[SyntheticConfig] = SyntheticConfig
    cfg: SyntheticConfig
    splits = SPLITS
    default_split = "test"
    train_split = "train"
    answer_phrase = ANSWER_MARK
    instruction = ""
    salt: int = 0

    # -- generation ---------------------------------------------------------------------------------------------
    def _sample(self, rng: np.random.Generator, count: int) -> list[Candidate]:
        """About `count` random problems (question, steps, answer, meta), drawn only from `rng`.

        A generator that rejects some draws may return fewer (or more); the result must depend on `rng` and the
        config alone.
        """
        raise NotImplementedError

    def vocabulary(self) -> list[str]:
        """Every word any question, rationale, answer or target of this task (with its settings) can contain."""
        raise NotImplementedError

    def load(self, split: str | None = None) -> list[Example]:
        """The examples of `split`, generated deterministically from the config."""
        split = split or self.default_split
        if split not in SPLITS:
            raise DataError(f"task {self.name!r} has no split {split!r} (splits: {', '.join(SPLITS)})")
        need = getattr(self.cfg, f"num_{split}")
        rng = np.random.default_rng([self.cfg.seed, SPLITS.index(split), self.salt])
        out: list[Example] = []
        drawn = 0
        limit = max(200_000, int(50 * need / _SHARE[split]))
        while len(out) < need:
            for question, steps, answer, meta in self._sample(rng, _BATCH):
                if split_of(question) != split:
                    continue
                out.append(
                    Example(
                        id=f"{self.name}-{split}-{len(out)}", question=question, answer=answer,
                        rationale=" ".join(steps), steps=steps, meta=meta,
                    )
                )
                if len(out) == need:
                    break
            drawn += _BATCH
            if drawn >= limit and len(out) < need:
                raise DataError(
                    f"task {self.name!r}: only {len(out)} of {need} {split} problems after {drawn} draws; "
                    "the problem space is too small for these settings (raise num_nodes / k / digits)"
                )
        return out

    # -- prompting and targets ----------------------------------------------------------------------------------
    def prompt(self, ex: Example) -> str:
        """The question itself: synthetic tasks have no instruction and no chat template."""
        return ex.question

    def target(self, ex: Example, with_rationale: bool = True) -> str:
        """"STEP STEP ... #### ANSWER" (or "#### ANSWER" without the rationale)."""
        tail = f"{self.answer_phrase} {ex.answer}"
        if with_rationale and ex.rationale:
            return f"{ex.rationale} {tail}"
        return tail

    # -- extraction and checking --------------------------------------------------------------------------------
    def _answer_like(self, token: str) -> bool:
        """Whether `token` could be an answer (flexible extraction takes the last such token)."""
        raise NotImplementedError

    @staticmethod
    def _words(text: str) -> list[str]:
        return [w for w in text.split() if not _SPECIAL.match(w)]

    def extract(self, text: str) -> Extracted:
        """strict: the token after the last "####"; flexible: the last answer-like token."""
        words = self._words(text)
        strict = None
        if ANSWER_MARK in words:
            i = len(words) - 1 - words[::-1].index(ANSWER_MARK)
            strict = words[i + 1] if i + 1 < len(words) else None
        flexible = next((w for w in reversed(words) if self._answer_like(w)), None)
        return Extracted(strict=strict, flexible=flexible)

    def is_equivalent(self, pred: str | None, gold: str) -> bool:
        return pred is not None and " ".join(pred.split()) == " ".join(gold.split())
