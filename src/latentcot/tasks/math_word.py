"""Math word problems with numeric answers: gsm8k, asdiv, svamp, multiarith, addsub, singleeq, gsm_hard.

Gold answers are canonical number strings ("72", "0.5"); predictions compare numerically (relative tolerance
1e-6), after `$`, commas and `%` are dropped. Rationales are the datasets' own (GSM8K's text with the `<<...>>`
calculator annotations removed, the equation for the others); the steps of GSM8K are its lines.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from latentcot.errors import DataError
from latentcot.tasks.answers import (
    answer_phrase,
    first_number,
    flexible_number,
    format_number,
    normalize_text,
    parse_number,
    same_number,
    strict_number,
)
from latentcot.tasks.base import TASKS, Example, Extracted
from latentcot.tasks.datafiles import FileTask, Row, read_json, read_jsonl

_ANNOTATION = re.compile(r"<<[^<>]*>>")


def split_gsm8k_answer(answer: str) -> tuple[str, str]:
    """GSM8K `answer` field -> (rationale text, final answer); raises ValueError without `####`."""
    if "####" not in answer:
        raise ValueError("no '####' final answer")
    body, final = answer.rsplit("####", 1)
    final = final.strip().replace(",", "")
    if not final:
        raise ValueError("empty final answer after '####'")
    return body.strip(), final


@TASKS.register("gsm8k")
class Gsm8k(FileTask):
    """GSM8K (Cobbe et al., 2021): grade-school math, 7473 train / 1319 test problems."""

    name = "gsm8k"
    folder = "gsm8k"
    origin = "openai/grade-school-math: grade_school_math/data/"
    splits = ("train", "test", "test_socratic")
    default_split = "test"
    train_split = "train"
    files = {"train": "train.jsonl", "test": "test.jsonl", "test_socratic": "test_socratic.jsonl"}
    counts = {"train": 7473, "test": 1319, "test_socratic": 1319}

    def rows(self, split: str, path: Path):
        return read_jsonl(path)

    def make(self, row: Row, split: str) -> Example:
        body, final = split_gsm8k_answer(row.data["answer"])
        rationale = _ANNOTATION.sub("", body)
        steps = tuple(s.strip() for s in rationale.split("\n") if s.strip())
        return Example(
            id=f"{split}-{row.index}",
            question=row.data["question"].strip(),
            answer=format_number(final),
            rationale=rationale,
            steps=steps,
            meta={"raw_answer": row.data["answer"]},
        )


def asdiv_answer(answer: str) -> str:
    """ASDiv's "9 (apples)" -> "9"; a non-numeric answer ("3:30 p.m.", "Yes") is kept as text."""
    text = re.sub(r"\s*\([^()]*\)\s*$", "", answer.strip()).strip()
    if not text:
        raise ValueError("empty Answer")
    return format_number(text) if parse_number(text) is not None else text


def asdiv_rows(path: Path) -> list[Row]:
    """ASDiv.xml problems as dicts with the XML's field names (ID, Body, Question, Answer, Formula, ...)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{path}: not valid XML at line {e.position[0]}; restore the original file") from None
    rows = []
    for i, p in enumerate(root.iter("Problem")):
        data = {child.tag: (child.text or "") for child in p}
        data.update({k: v for k, v in p.attrib.items()})
        rows.append(Row(data, f"row {i + 1} (Problem ID={p.get('ID')})", i))
    return rows


def asdiv_example(row: Row, split: str) -> Example:
    d = row.data
    body, question = d["Body"].strip(), d["Question"].strip()
    return Example(
        id=d["ID"],
        question=f"{body} {question}".strip(),
        answer=asdiv_answer(d["Answer"]),
        rationale=d["Formula"].strip() or None,
        steps=(d["Formula"].strip(),) if d["Formula"].strip() else (),
        meta={"solution_type": d.get("Solution-Type", ""), "grade": d.get("Grade"), "raw_answer": d["Answer"]},
    )


@TASKS.register("asdiv")
class Asdiv(FileTask):
    """ASDiv (Miao et al., 2020): 2305 diverse math word problems; a few answers are text ("3:30 p.m.")."""

    name = "asdiv"
    folder = "asdiv"
    origin = "chaochun/nlu-asdiv-dataset: dataset/ASDiv.xml"
    files = {"test": "ASDiv.xml"}
    counts = {"test": 2305}

    def rows(self, split: str, path: Path):
        return asdiv_rows(path)

    def make(self, row: Row, split: str) -> Example:
        return asdiv_example(row, split)

    def extract(self, text: str) -> Extracted:
        strict = strict_number(text)
        phrase = answer_phrase(text)
        if phrase and (strict is None or re.match(r"[\s*$]*\d{1,2}:\d{2}", phrase[1])):
            strict = phrase[1].strip(" *_$.")  # text and clock-time answers
        return Extracted(strict=strict, flexible=strict or flexible_number(text))

    def is_equivalent(self, pred: str | None, gold: str) -> bool:
        if pred is None:
            return False
        if parse_number(gold) is not None:
            return same_number(pred, gold) or same_number(first_number(pred), gold)
        p, g = normalize_text(pred), normalize_text(gold)
        return bool(p) and (p == g or p.startswith(g + " "))


@TASKS.register("svamp")
class Svamp(FileTask):
    """SVAMP (Patel et al., 2021): 1000 one-step problems with structural variations."""

    name = "svamp"
    folder = "svamp"
    origin = "kojima-takeshi188/zero_shot_cot: dataset/SVAMP/"
    files = {"test": "SVAMP.json"}
    counts = {"test": 1000}

    def rows(self, split: str, path: Path):
        return read_json(path)

    def make(self, row: Row, split: str) -> Example:
        d = row.data
        body = d["Body"].strip()
        if body and body[-1] not in ".?!":
            body += "."
        return Example(
            id=str(d.get("ID", row.index)),
            question=f"{body} {d['Question'].strip()}",
            answer=format_number(float(d["Answer"])),
            rationale=d.get("Equation", "").strip() or None,
            steps=(),
            meta={"type": d.get("Type", "")},
        )


class _MawpsTask(FileTask):
    """MultiArith, AddSub and SingleEq share the MAWPS format `{sQuestion, lSolutions, lEquations}`."""

    origin = "kojima-takeshi188/zero_shot_cot: dataset/"

    def rows(self, split: str, path: Path):
        return read_json(path)

    def make(self, row: Row, split: str) -> Example:
        d = row.data
        equations = [str(e).strip() for e in d.get("lEquations") or []]
        return Example(
            id=str(d.get("iIndex", row.index)),
            question=" ".join(d["sQuestion"].split()),
            answer=format_number(float(d["lSolutions"][0])),
            rationale="; ".join(equations) or None,
            steps=tuple(equations),
        )


@TASKS.register("multiarith")
class MultiArith(_MawpsTask):
    """MultiArith (Roy & Roth, 2015): 600 multi-step arithmetic problems."""

    name = "multiarith"
    folder = "multiarith"
    origin = "kojima-takeshi188/zero_shot_cot: dataset/MultiArith/"
    files = {"test": "MultiArith.json"}
    counts = {"test": 600}


@TASKS.register("addsub")
class AddSub(_MawpsTask):
    """AddSub (Hosseini et al., 2014): 395 addition/subtraction problems."""

    name = "addsub"
    folder = "addsub"
    origin = "kojima-takeshi188/zero_shot_cot: dataset/AddSub/"
    files = {"test": "AddSub.json"}
    counts = {"test": 395}


@TASKS.register("singleeq")
class SingleEq(_MawpsTask):
    """SingleEq (Koncel-Kedziorski et al., 2015): 508 single-equation problems."""

    name = "singleeq"
    folder = "singleeq"
    origin = "kojima-takeshi188/zero_shot_cot: dataset/SingleEq/"
    files = {"test": "questions.json"}
    counts = {"test": 508}


@TASKS.register("gsm_hard")
class GsmHard(FileTask):
    """GSM-Hard (Gao et al., 2023, PAL): GSM8K test problems with large numbers; gold from the PAL program."""

    name = "gsm_hard"
    folder = "gsm-hard"
    origin = "reasoning-machines/pal: datasets/"
    files = {"test": "gsmhardv2.jsonl"}
    counts = {"test": 1319}

    def rows(self, split: str, path: Path):
        return read_jsonl(path)

    def make(self, row: Row, split: str) -> Example:
        d = row.data
        return Example(
            id=f"{split}-{row.index}",
            question=d["input"].strip(),
            answer=format_number(float(d["target"])),
            meta={"code": d.get("code", "")},
        )
