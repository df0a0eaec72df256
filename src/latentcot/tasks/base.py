"""The task interface: examples, prompts, answer extraction and checking, and the task registry."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentcot.errors import DataError
from latentcot.registry import Registry


@dataclass(frozen=True)
class Example:
    """One benchmark problem.

    Attributes:
        id: stable identifier within the task (used for resume and per-question seeding).
        question: the text shown to the model (options included for multiple choice).
        answer: the gold final answer as a canonical string ("72", "B", "yes", "\\frac{1}{2}").
        rationale: the reference chain of thought, for training (None when the data has none).
        steps: the rationale split into reasoning steps (for curricula that replace steps by latents).
        meta: anything else the loader keeps (options, source fields).
    """

    id: str
    question: str
    answer: str
    rationale: str | None = None
    steps: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Extracted:
    """What a task's extractors read from one model output."""

    strict: str | None
    flexible: str | None


SOURCES = ("auto", "local", "hub")


@dataclass
class TaskConfig:
    """Settings every task has; a task with more subclasses this and sets `Task.Config`.

    Attributes:
        data_dir: where the benchmark files are (default: $LATENTCOT_DATA, then ./data, then ../shared/data).
        source: "local" reads the files of the data directory; "hub" reads the HF Hub through `datasets`; "auto"
            (default) reads the local files when they are there, else the HF Hub.
        skip_bad_rows: skip (and count) malformed rows instead of stopping with an error naming the line.
    """

    data_dir: str | None = None
    source: str = "auto"
    skip_bad_rows: bool = False

    def __post_init__(self) -> None:
        from latentcot.config import check

        check(self.source in SOURCES, "task.source", f"must be one of {', '.join(SOURCES)}, got {self.source!r}")


class Task:
    """A benchmark family: loading, prompting, extraction, checking.

    Subclasses set `name`, `splits` and implement `load`, `extract` and `is_equivalent`.
    `answer_phrase` is what the prompt asks the model to end with, and what SFT targets end with.
    A task with settings of its own sets `Config` to a subclass of TaskConfig.
    """

    Config: type[TaskConfig] = TaskConfig
    name: str = ""
    splits: tuple[str, ...] = ("test",)
    default_split: str = "test"
    train_split: str | None = None
    answer_phrase: str = "The answer is"
    instruction: str = (
        "Solve the problem step by step. End your response with 'The answer is N', where N is the final answer."
    )

    def __init__(self, cfg: TaskConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else self.Config()

    def load(self, split: str | None = None) -> list[Example]:
        """All examples of `split` (default: `default_split`), in file order, from `self.cfg`'s source."""
        raise NotImplementedError

    def prompt(self, ex: Example) -> str:
        """The user message for zero-shot CoT (the method wraps it in the chat template)."""
        return f"{self.instruction}\n\nQuestion: {ex.question}"

    def target(self, ex: Example, with_rationale: bool = True) -> str:
        """Supervised target text: rationale (optional) then the answer sentence."""
        tail = f"{self.answer_phrase} {ex.answer}."
        if with_rationale and ex.rationale:
            return f"{ex.rationale.strip()}\n{tail}"
        return tail

    def extract(self, text: str) -> Extracted:
        raise NotImplementedError

    def is_equivalent(self, pred: str | None, gold: str) -> bool:
        raise NotImplementedError

    def score(self, ex: Example, text: str) -> dict[str, Any]:
        """Extracted answers and correctness flags of one output."""
        got = self.extract(text)
        return {
            "pred_strict": got.strict,
            "pred_flexible": got.flexible,
            "correct_strict": got.strict is not None and self.is_equivalent(got.strict, ex.answer),
            "correct_flexible": got.flexible is not None and self.is_equivalent(got.flexible, ex.answer),
        }


TASKS: Registry[type[Task]] = Registry("task")

DATA_ENV = "LATENTCOT_DATA"


class MissingDataError(DataError):
    """The benchmark files are not where they were looked for (task.source=auto then tries the HF Hub)."""


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The benchmark data directory: explicit argument, then $LATENTCOT_DATA, then ../shared/data or ./data.

    Raises DataError naming where it looked when none exists.
    """
    candidates: list[Path] = []
    if data_dir:
        candidates.append(Path(data_dir))
    elif os.environ.get(DATA_ENV):
        candidates.append(Path(os.environ[DATA_ENV]))
    else:
        candidates += [Path.cwd() / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    raise MissingDataError(
        f"no benchmark data directory found (looked in {', '.join(str(c) for c in candidates)}): "
        f"pass --data-dir DIR or set {DATA_ENV}"
    )
