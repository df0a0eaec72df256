"""Closed-answer benchmarks: aqua, date_understanding, commonsenseqa (option letters) and strategyqa (yes/no).

Multiple-choice questions list their options as "(A) ..." lines and ask for "The answer is (X)"; the gold answer
is the letter. Extraction never reads the English article "a"/"A" as an option (see `answers.strict_choice`).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from latentcot.tasks.answers import flexible_choice, flexible_yes_no, strict_choice, strict_yes_no
from latentcot.tasks.base import TASKS, Example, Extracted
from latentcot.tasks.datafiles import FileTask, Row, read_json, read_jsonl

LETTERS = "ABCDEFGHIJ"


def with_options(question: str, options: list[str]) -> str:
    """The question followed by its options, one "(A) text" per line."""
    lines = [f"({LETTERS[i]}) {opt.strip()}" for i, opt in enumerate(options)]
    return question.strip() + "\nOptions:\n" + "\n".join(lines)


class ChoiceTask(FileTask):
    """A multiple-choice task: Example.meta["options"] holds the option texts; the answer is a letter.

    `n_options` is the most options a question has (extraction accepts letters up to that one).
    """

    n_options = 5
    instruction = (
        "Answer the multiple-choice question step by step. End your response with 'The answer is (X)', "
        "where X is the letter of the correct option."
    )

    @property
    def letters(self) -> str:
        return LETTERS[: self.n_options]

    def target(self, ex: Example, with_rationale: bool = True) -> str:
        tail = f"{self.answer_phrase} ({ex.answer})."
        return f"{ex.rationale.strip()}\n{tail}" if with_rationale and ex.rationale else tail

    def extract(self, text: str) -> Extracted:
        return Extracted(strict=strict_choice(text, self.letters), flexible=flexible_choice(text, self.letters))

    def is_equivalent(self, pred: str | None, gold: str) -> bool:
        return pred is not None and pred.strip().strip("()").upper() == gold.strip().upper()

    def choice_example(self, id_: str, question: str, options: list[str], answer: str, **kw) -> Example:
        if not 2 <= len(options) <= self.n_options:
            raise ValueError(f"{len(options)} options, expected 2 to {self.n_options}")
        if len(answer) != 1 or answer not in LETTERS[: len(options)]:
            raise ValueError(f"answer {answer!r} is not one of {LETTERS[: len(options)]}")
        return Example(
            id=id_,
            question=with_options(question, options),
            answer=answer,
            meta={"options": options, "stem": question.strip(), **kw.pop("meta", {})},
            **kw,
        )


_AQUA_OPTION = re.compile(r"^\s*([A-E])\s*\)\s*(.*)$", re.S)


@TASKS.register("aqua")
class Aqua(ChoiceTask):
    """AQuA-RAT (Ling et al., 2017): algebra word problems with 5 options; dev/test 254 each here."""

    name = "aqua"
    folder = "aqua"
    origin = "google-deepmind/AQuA"
    splits = ("dev", "test")
    files = {"dev": "dev.json", "test": "test.json"}
    counts = {"dev": 254, "test": 254}

    def rows(self, split: str, path: Path):
        return read_jsonl(path)

    def make(self, row: Row, split: str) -> Example:
        d = row.data
        options = []
        for i, opt in enumerate(d["options"]):
            m = _AQUA_OPTION.match(opt)
            if not m or m.group(1) != LETTERS[i]:
                raise ValueError(f"option {opt!r} is not '{LETTERS[i]})...'")
            options.append(m.group(2))
        rationale = (d.get("rationale") or "").strip() or None
        steps = tuple(s.strip() for s in (rationale or "").split("\n") if s.strip())
        return self.choice_example(
            f"{split}-{row.index}", d["question"], options, d["correct"].strip(), rationale=rationale, steps=steps
        )


@TASKS.register("date_understanding")
class DateUnderstanding(ChoiceTask):
    """BIG-bench date_understanding: 369 date-arithmetic questions with 5 or 6 options (A-F)."""

    name = "date_understanding"
    folder = "date_understanding"
    origin = "kojima-takeshi188/zero_shot_cot: dataset/Bigbench_Date/ (BIG-bench)"
    n_options = 6
    files = {"test": "task.json"}
    counts = {"test": 369}

    def rows(self, split: str, path: Path):
        return read_json(path, key="examples")

    def make(self, row: Row, split: str) -> Example:
        scores = row.data["target_scores"]
        options = list(scores)
        correct = [o for o in options if scores[o] == 1]
        if len(correct) != 1:
            raise ValueError("target_scores must have exactly one option scored 1")
        # The file lists the correct option first in 364 of 369 questions: shown in that order, "always (A)" would
        # score 98.6%. Options are shuffled by a fixed per-question seed, so every run sees the same letters.
        random.Random(f"date_understanding-{row.index}").shuffle(options)
        return self.choice_example(f"{split}-{row.index}", row.data["input"], options, LETTERS[options.index(correct[0])])


@TASKS.register("commonsenseqa")
class CommonsenseQA(ChoiceTask):
    """CommonsenseQA (Talmor et al., 2019): 5-option questions, 9741 train / 1221 dev."""

    name = "commonsenseqa"
    folder = "commonsenseqa"
    origin = "kojima-takeshi188/zero_shot_cot: dataset/CommonsenseQA/"
    splits = ("train", "dev")
    default_split = "dev"
    train_split = "train"
    files = {"train": "train_rand_split.jsonl", "dev": "dev_rand_split.jsonl"}
    counts = {"train": 9741, "dev": 1221}

    def rows(self, split: str, path: Path):
        return read_jsonl(path)

    def make(self, row: Row, split: str) -> Example:
        d = row.data
        choices = sorted(d["question"]["choices"], key=lambda c: c["label"])
        if [c["label"] for c in choices] != list(self.letters):
            raise ValueError("choices must be labelled A-E")
        options = [c["text"] for c in choices]
        return self.choice_example(
            str(d.get("id", f"{split}-{row.index}")), d["question"]["stem"], options, d["answerKey"].strip()
        )


@TASKS.register("strategyqa")
class StrategyQA(FileTask):
    """StrategyQA (Geva et al., 2021) in its BIG-bench form: 2290 yes/no questions with a short explanation.

    There is no official split in this file: train/test is a fixed 80/20 split, shuffled with seed 0
    (`SPLIT_SEED`), so it never changes between runs or machines. Ids are the row numbers of the file.
    """

    name = "strategyqa"
    folder = "strategyqa"
    origin = "kojima-takeshi188/zero_shot_cot: dataset/StrategyQA/ (BIG-bench)"
    splits = ("train", "test")
    default_split = "test"
    train_split = "train"
    files = {"train": "task.json", "test": "task.json"}
    counts = {"train": 2290, "test": 2290}  # rows of the whole file, before the split
    SPLIT_SEED = 0
    instruction = "Answer the question step by step. End your response with 'The answer is yes' or 'The answer is no'."

    def rows(self, split: str, path: Path):
        return read_json(path, key="examples")

    def make(self, row: Row, split: str) -> Example:
        d = row.data
        scores = d["target_scores"]
        if {k.lower() for k in scores} != {"yes", "no"}:
            raise ValueError("target_scores must be {Yes, No}")
        answer = next(k for k, v in scores.items() if v == 1).lower()
        target = d.get("target") or ""
        target = target[0] if isinstance(target, list) else target
        rationale = re.sub(r"^(yes|no)[.,]?\s*", "", target.strip(), flags=re.I) or None
        steps = tuple(s for s in re.split(r"(?<=\.)\s+", rationale or "") if s)
        return Example(id=str(row.index), question=d["input"].strip(), answer=answer, rationale=rationale, steps=steps)

    def build(self, rows, split, source, expected=None, make=None):  # type: ignore[override]
        rows = list(rows)
        examples = super().build(rows, split, source, expected, make)
        order = list(range(len(rows)))  # split by row number, so skipped bad rows never shift it
        random.Random(self.SPLIT_SEED).shuffle(order)
        n_test = round(0.2 * len(order))
        keep = set(order[:n_test] if split == "test" else order[n_test:])
        return [ex for ex in examples if int(ex.id) in keep]

    def extract(self, text: str) -> Extracted:
        return Extracted(strict=strict_yes_no(text), flexible=flexible_yes_no(text))

    def is_equivalent(self, pred: str | None, gold: str) -> bool:
        return pred is not None and pred.strip().lower() == gold.strip().lower()
