"""MATH-500 (competition math, LaTeX answers) and ProsQA (logical reasoning over made-up concepts).

math500 asks for `\\boxed{...}`; the strict extractor reads the last box, the flexible one falls back to the
answer phrase and then to the last number. Equivalence is math-verify's symbolic check, bounded in time
(`latentcot.tasks.symbolic`).

ProsQA (Hao et al., 2024, Coconut) asks "Is Tom a lempus or scrompus?"; the gold answer is the concept
("lempus"), the full answer sentence ("Tom is a lempus.") is kept in meta, and the steps are the proof's facts.
"""

from __future__ import annotations

import re
from pathlib import Path

from latentcot.tasks.answers import MAX_CHARS, answer_phrase, last_boxed, last_number, normalize_text
from latentcot.tasks.base import TASKS, Example, Extracted
from latentcot.tasks.datafiles import FileTask, Row, read_json
from latentcot.tasks.symbolic import MAX_ANSWER_CHARS, math_equal


@TASKS.register("math500")
class Math500(FileTask):
    """MATH-500 (Lightman et al., 2023, the PRM800K test subset of MATH): 500 problems, LaTeX answers."""

    name = "math500"
    folder = "math500"
    origin = "eric-ai-lab/Soft-Thinking: datasets/math500.json"
    files = {"test": "math500.json"}
    counts = {"test": 500}
    answer_phrase = "The final answer is"
    instruction = "Solve the problem step by step. Put your final answer within \\boxed{}."

    def rows(self, split: str, path: Path):
        return read_json(path)

    def make(self, row: Row, split: str) -> Example:
        d = row.data
        question = next(m["value"] for m in d["prompt"] if m.get("from") in ("user", "human"))
        answer = str(d["final_answer"]).strip()
        if not question.strip() or not answer:
            raise ValueError("empty question or final_answer")
        solution = (d.get("solution") or "").strip() or None
        return Example(
            id=str(d.get("unique_id") or f"{split}-{row.index}"),
            question=question.strip(),
            answer=answer,
            rationale=solution,
            meta={k: d[k] for k in ("subject", "level") if k in d},
        )

    def target(self, ex: Example, with_rationale: bool = True) -> str:
        tail = f"{self.answer_phrase} $\\boxed{{{ex.answer}}}$."
        return f"{ex.rationale.strip()}\n{tail}" if with_rationale and ex.rationale else tail

    def extract(self, text: str) -> Extracted:
        boxed = last_boxed(text)
        strict = boxed[1][:MAX_ANSWER_CHARS] if boxed and boxed[1] else None
        flexible = strict
        if flexible is None and (phrase := answer_phrase(text)):
            flexible = phrase[1].strip().rstrip(".").strip(" *$")[:MAX_ANSWER_CHARS] or None
        return Extracted(strict=strict, flexible=flexible or last_number(text))

    def is_equivalent(self, pred: str | None, gold: str) -> bool:
        return math_equal(pred, gold)


_IS_A = re.compile(r"(?i)\bis\s+an?\s+([a-z]+)")
_LAST_WORD = re.compile(r"([A-Za-z]+)[^A-Za-z]*$")


@TASKS.register("prosqa")
class ProsQA(FileTask):
    """ProsQA (Coconut): 2-way questions answered by a chain of "Every X is a Y" facts; train 17,886 / valid 300 /
    test 500. The train file is not in the shared data: copy the official data/prosqa_train.json to
    prosqa/train.json to train on it (recipes/coconut_gpt2_prosqa.yaml)."""

    name = "prosqa"
    folder = "prosqa"
    origin = "facebookresearch/coconut: data/prosqa_{train,valid,test}.json, saved as {train,valid,test}.json"
    splits = ("train", "valid", "test")
    train_split = "train"
    files = {"train": "train.json", "valid": "valid.json", "test": "test.json"}
    counts = {"train": 17886, "valid": 300, "test": 500}
    instruction = (
        "Answer the question by reasoning step by step over the facts. End your response with "
        "'The answer is X', where X is the concept the entity is."
    )

    def rows(self, split: str, path: Path):
        return read_json(path)

    def make(self, row: Row, split: str) -> Example:
        d = row.data
        m = _IS_A.search(d["answer"])
        if not m or not d["question"].strip():
            raise ValueError(f"answer {d['answer']!r} is not 'NAME is a CONCEPT.'")
        steps = tuple(str(s).strip() for s in d.get("steps") or [])
        return Example(
            id=f"{split}-{row.index}",
            question=d["question"].strip(),
            answer=m.group(1).lower(),
            rationale=" ".join(steps) or None,
            steps=steps,
            meta={"answer_sentence": d["answer"]},
        )

    def extract(self, text: str) -> Extracted:
        text = text[-MAX_CHARS:]
        strict = None
        phrase = answer_phrase(text)
        marker = text.rfind("###")
        tail = phrase[1] if phrase else None
        if marker >= 0 and (phrase is None or marker > phrase[0]):
            tail = text[marker + 3 :].split("\n", 1)[0]
        if tail:
            m = _IS_A.search(tail) or _LAST_WORD.search(tail)
            strict = m.group(1).lower() if m else None
        flexible = strict
        if flexible is None:
            found = list(_IS_A.finditer(text))
            flexible = found[-1].group(1).lower() if found else None
        return Extracted(strict=strict, flexible=flexible)

    def is_equivalent(self, pred: str | None, gold: str) -> bool:
        return pred is not None and normalize_text(pred) == normalize_text(gold)
