"""`word_arith`: generated one- and two-step arithmetic word problems in plain English, for RL on small real
models (a task whose questions a 135M instruct model solves part of the time, so that sampled rewards vary).

    Mia has 7 apples. She buys 5 more apples. Then she gives 3 apples to a friend. How many apples does Mia have now?
    rationale: "7 + 5 = 12. 12 - 3 = 9."  answer: "9"

One step is an addition or a subtraction of numbers up to `max_value` (results stay non-negative); `max_steps`
(1 or 2) bounds the steps per problem (each problem draws 1..max_steps). Splits are disjoint by a stable hash of
the question (as the synthetic tasks), deterministic given `seed`. Answers are extracted and compared as for the
math word benchmarks ("The answer is N" strict, the last number flexible).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentcot.config import check
from latentcot.tasks.answers import flexible_number, same_number, strict_number
from latentcot.tasks.base import TASKS, Example, Extracted, Task, TaskConfig
from latentcot.tasks.synthetic import split_of

NAMES = [("Mia", "She"), ("Tom", "He"), ("Ava", "She"), ("Leo", "He"), ("Zoe", "She"), ("Sam", "He"), ("Ivy", "She"),
         ("Max", "He")]
ITEMS = ["apples", "books", "marbles", "stickers", "pencils", "cookies", "coins", "cards"]


@dataclass
class WordArithConfig(TaskConfig):
    """Attributes:
    seed: generator seed.
    num_train / num_valid / num_test: problems per split.
    max_value: largest number in a question.
    max_steps: 1 or 2 operations per problem.
    """

    seed: int = 0
    num_train: int = 2000
    num_valid: int = 200
    num_test: int = 200
    max_value: int = 20
    max_steps: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.max_value >= 2, "task.max_value", f"must be >= 2, got {self.max_value}")
        check(self.max_steps in (1, 2), "task.max_steps", f"must be 1 or 2, got {self.max_steps}")
        for name in ("num_train", "num_valid", "num_test"):
            check(getattr(self, name) >= 0, f"task.{name}", "must be >= 0")


@TASKS.register("word_arith")
class WordArith(Task):
    """One- and two-step addition / subtraction word problems."""

    Config = WordArithConfig
    cfg: WordArithConfig
    name = "word_arith"
    splits = ("train", "valid", "test")
    default_split = "test"
    train_split = "train"

    def _problem(self, rng: np.random.Generator) -> tuple[str, str, str, tuple[str, ...]]:
        name, pron = NAMES[rng.integers(len(NAMES))]
        item = ITEMS[rng.integers(len(ITEMS))]
        hi = self.cfg.max_value
        total = int(rng.integers(1, hi + 1))
        text = [f"{name} has {total} {item}."]
        steps = []
        for i in range(int(rng.integers(1, self.cfg.max_steps + 1))):
            then = "Then " + pron.lower() if i else pron
            if total > 1 and rng.random() < 0.5:
                n = int(rng.integers(1, total))
                text.append(f"{then} gives {n} {item} to a friend.")
                steps.append(f"{total} - {n} = {total - n}.")
                total -= n
            else:
                n = int(rng.integers(1, hi + 1))
                text.append(f"{then} buys {n} more {item}.")
                steps.append(f"{total} + {n} = {total + n}.")
                total += n
        text.append(f"How many {item} does {name} have now?")
        return " ".join(text), str(total), " ".join(steps), tuple(steps)

    def load(self, split: str | None = None) -> list[Example]:
        split = split or self.default_split
        check(split in self.splits, "split", f"word_arith has splits {', '.join(self.splits)}, got {split!r}")
        want = {"train": self.cfg.num_train, "valid": self.cfg.num_valid, "test": self.cfg.num_test}[split]
        rng = np.random.default_rng([self.cfg.seed, self.splits.index(split)])
        out: list[Example] = []
        seen: set[str] = set()
        tries = 0
        while len(out) < want and tries < 200 * max(want, 1):
            tries += 1
            q, ans, rationale, steps = self._problem(rng)
            if split_of(q) != split or q in seen:
                continue
            seen.add(q)
            out.append(Example(f"{split}-{len(out)}", q, ans, rationale, steps))
        return out

    def extract(self, text: str) -> Extracted:
        return Extracted(strict_number(text), flexible_number(text))

    def is_equivalent(self, pred: str | None, gold: str) -> bool:
        return same_number(pred, gold)
