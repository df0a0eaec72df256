"""Derived training sets: gsm8k_aug (equation-only CoT) and asdiv_aug (ASDiv with resampled numbers).

gsm8k_aug follows iCoT/Coconut/CODI's GSM8k-Aug format `question||<<eq>> <<eq>> #### N`. Its valid and test
splits are the iCoT files. The 385k-row GPT-4-augmented train split is not available offline, so `train` is
DERIVED from gsm8k/train.jsonl: the CoT of each problem is the sequence of its `<<...>>` calculator annotations,
in order, kept verbatim (`<<48/2=24>> <<48+24=72>>`), and the answer is its `#### N`. That gives 7473 rows (the
original problems, not the augmented 385k); problems with no annotation keep an empty CoT (their count is logged).

asdiv_aug follows the SoftCoT paper's ASDiv-Aug: each ASDiv problem copied `copies` (5) times with its numbers
replaced by random values and the answer recomputed from the problem's Formula. Method, per problem:
1. The Formula must be plain arithmetic `expr = result` (numbers, + - * / and parentheses). It is evaluated
   exactly with fractions by a small recursive-descent parser (no eval()); it must reproduce its own result and
   the numeric Answer.
   Unit notes in the formula ("6 (penny)*1 (cent/penny)") are dropped first.
2. Every number of `expr` that also appears in the text (Body + Question; digits, or a number word from "two"
   to "twenty") is resampled and written as digits: an integer with the same number of digits (decimals keep
   their decimal places). Numbers not in the text ("half" -> /2, "one") are constants and stay.
3. The new result must keep the original's kind: an integer when the original is one (else at most 2
   decimals), and positive (non-negative) when the original is. Up to 200 draws per copy.
A problem failing 1 or 2 (word numbers, units or remainders in the formula, ...) or 3 is kept ONCE, unchanged,
and counted (`AsdivAug.last_stats`). Draws come from `random.Random(f"{seed}:{problem ID}")`, so the set is
deterministic by seed. All copies of a problem fall in the same split: a seeded 80/20 train/test split by problem.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from latentcot.tasks.answers import format_number, parse_number
from latentcot.tasks.base import TASKS, Example, TaskConfig
from latentcot.tasks.datafiles import FileTask, Row, read_jsonl, read_lines
from latentcot.tasks.math_word import Gsm8k, asdiv_example, asdiv_rows, split_gsm8k_answer

log = logging.getLogger(__name__)

_EQ = re.compile(r"<<([^<>]*)>>")


def equation_steps(gsm8k_answer: str) -> tuple[str, ...]:
    """GSM8K's `<<...>>` calculator annotations, in order, as iCoT-style steps ("<<48/2=24>>")."""
    return tuple(f"<<{eq.strip()}>>" for eq in _EQ.findall(gsm8k_answer) if eq.strip())


@TASKS.register("gsm8k_aug")
class Gsm8kAug(FileTask):
    """GSM8k-Aug (Deng et al., 2023, iCoT): equation-only CoT. `train` is derived (module docstring)."""

    name = "gsm8k_aug"
    folder = "gsm8k-aug"
    origin = "da03/Internalize_CoT_Step_by_Step: data/gsm8k/"
    splits = ("train", "valid", "test")
    default_split = "test"
    train_split = "train"
    files = {"valid": "valid.txt", "test": "test.txt"}
    counts = {"train": 7473, "valid": 500, "test": 1319}

    def load_local(self, split: str) -> list[Example]:
        if split != "train":
            return super().load_local(split)
        gsm = Gsm8k(self.cfg)
        path = gsm.data_path("train.jsonl") / "train.jsonl"
        examples = self.build(read_jsonl(path), split, str(path), self.counts["train"], make=self._from_gsm8k)
        n_empty = sum(not ex.steps for ex in examples)
        if n_empty:
            log.info(
                "gsm8k_aug/train: %d of %d problems have no <<...>> annotation (empty CoT)", n_empty, len(examples)
            )
        return examples

    def rows(self, split: str, path: Path):
        return read_lines(path)

    def make(self, row: Row, split: str) -> Example:
        question, rest = row.data.split("||", 1)
        cot, answer = split_gsm8k_answer(rest)
        steps = tuple(f"<<{eq.strip()}>>" for eq in _EQ.findall(cot))
        return self._example(f"{split}-{row.index}", question, steps, answer)

    def _from_gsm8k(self, row: Row, split: str) -> Example:
        _, answer = split_gsm8k_answer(row.data["answer"])
        return self._example(f"{split}-{row.index}", row.data["question"], equation_steps(row.data["answer"]), answer)

    @staticmethod
    def _example(id_: str, question: str, steps: tuple[str, ...], answer: str) -> Example:
        if not question.strip():
            raise ValueError("empty question")
        return Example(
            id=id_, question=question.strip(), answer=format_number(answer), rationale=" ".join(steps), steps=steps
        )


# ----------------------------------------------------------------------------- safe arithmetic

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?|\.\d+)|([-+*/()]))")


def tokenize(expr: str) -> list[str]:
    """Numbers and + - * / ( ); raises ValueError on anything else."""
    tokens, pos = [], 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"unexpected {expr[pos : pos + 10]!r}")
        tokens.append(m.group(1) or m.group(2))
        pos = m.end()
    return tokens


def evaluate(tokens: list[str], values: dict[int, Fraction] | None = None) -> Fraction:
    """Exact value of an arithmetic token list; `values` overrides the number at token index i."""
    values = values or {}
    pos = 0

    def atom() -> Fraction:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError("unexpected end")
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            v = expr()
            if pos >= len(tokens) or tokens[pos] != ")":
                raise ValueError("unbalanced parentheses")
            pos += 1
            return v
        if tok == "-":
            return -atom()
        if tok[0].isdigit() or tok[0] == ".":
            return values.get(pos - 1, Fraction(tok))
        raise ValueError(f"unexpected {tok!r}")

    def term() -> Fraction:
        nonlocal pos
        v = atom()
        while pos < len(tokens) and tokens[pos] in "*/":
            op = tokens[pos]
            pos += 1
            rhs = atom()
            if op == "/" and rhs == 0:
                raise ZeroDivisionError
            v = v * rhs if op == "*" else v / rhs
        return v

    def expr() -> Fraction:
        nonlocal pos
        v = term()
        while pos < len(tokens) and tokens[pos] in "+-":
            op = tokens[pos]
            pos += 1
            v = v + term() if op == "+" else v - term()
        return v

    result = expr()
    if pos != len(tokens):
        raise ValueError("trailing tokens")
    return result


# ----------------------------------------------------------------------------- ASDiv-Aug

_WORDS = "two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen \
eighteen nineteen twenty".split()
WORD_VALUES = {w: i + 2 for i, w in enumerate(_WORDS)}
_TEXT_NUM = re.compile(
    r"(?<![\w.])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?![\d])|(?i:\b(" + "|".join(_WORDS) + r")\b)"
)
_UNIT = re.compile(r"\(\s*[A-Za-z][A-Za-z/' ]*\)")


def _text_value(m: re.Match[str]) -> Fraction:
    return Fraction(m.group(1).replace(",", "")) if m.group(1) else Fraction(WORD_VALUES[m.group(2).lower()])


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else format_number(float(x))


def _sample_like(rng: random.Random, text: str) -> Fraction:
    decimals = len(text.split(".", 1)[1]) if "." in text else 0
    digits = len(text.split(".", 1)[0].lstrip("0")) or 1
    lo = 10 ** (digits - 1) if digits > 1 else 1
    whole = rng.randint(lo, 10**digits - 1)
    if decimals:
        return Fraction(whole * 10**decimals + rng.randint(0, 10**decimals - 1), 10**decimals)
    return Fraction(whole)


def augment_problem(row: dict, copies: int, seed: int) -> list[dict] | None:
    """`copies` variants of one ASDiv problem (dicts like the input), or None when it cannot be recomputed."""
    formula = _UNIT.sub("", row["Formula"]).strip()  # "6 (penny)*1 (cent/penny)" -> "6 *1 "
    if formula.count("=") != 1:
        return None
    lhs, rhs = formula.split("=")
    rhs = re.sub(r"\s*(?:cents?|dollars?)$", "", rhs.strip())
    try:
        tokens, result = tokenize(lhs), Fraction(rhs)
        if evaluate(tokens) != result:
            return None
    except (ValueError, ZeroDivisionError):
        return None
    gold = parse_number(re.sub(r"\(.*", "", row["Answer"]))
    if gold is None or abs(gold - float(result)) > 1e-6 * max(1.0, abs(gold)):
        return None
    text = f"{row['Body'].strip()} {row['Question'].strip()}"
    in_text = {_text_value(m) for m in _TEXT_NUM.finditer(text)}
    slots = [i for i, t in enumerate(tokens) if t[0].isdigit() or t[0] == "."]
    free = sorted({Fraction(tokens[i]) for i in slots} & in_text)
    if not free:
        return None
    rng = random.Random(f"{seed}:{row['ID']}")
    out = []
    for k in range(copies):
        for _ in range(200):
            new = {v: _sample_like(rng, next(tokens[i] for i in slots if Fraction(tokens[i]) == v)) for v in free}
            values = {i: new[Fraction(tokens[i])] for i in slots if Fraction(tokens[i]) in new}
            try:
                res = evaluate(tokens, values)
            except ZeroDivisionError:
                continue
            integral_ok = res.denominator == 1 if result.denominator == 1 else (res * 100).denominator == 1
            sign_ok = res > 0 if result > 0 else (res >= 0 if result >= 0 else True)
            if integral_ok and sign_ok:
                break
        else:
            return None

        def swap(m: re.Match[str], new: dict[Fraction, Fraction] = new) -> str:
            v = _text_value(m)
            return _fmt(new[v]) if v in new else m.group(0)

        new_lhs = "".join(_fmt(values[i]) if i in values else t for i, t in enumerate(tokens))
        out.append(
            {
                **row,
                "ID": f"{row['ID']}-aug{k}",
                "Body": _TEXT_NUM.sub(swap, row["Body"]),
                "Question": _TEXT_NUM.sub(swap, row["Question"]),
                "Formula": f"{new_lhs}={_fmt(res)}",
                "Answer": _fmt(res),
            }
        )
    return out


@dataclass
class AsdivAugConfig(TaskConfig):
    """asdiv_aug settings: `seed` of the number draws and the split, `copies` per problem, `test_fraction`."""

    seed: int = 0
    copies: int = 5
    test_fraction: float = 0.2


@TASKS.register("asdiv_aug")
class AsdivAug(FileTask):
    """ASDiv-Aug (SoftCoT, Xu et al., 2025): ASDiv with resampled numbers (module docstring)."""

    Config = AsdivAugConfig
    name = "asdiv_aug"
    folder = "asdiv"
    origin = "chaochun/nlu-asdiv-dataset: dataset/ASDiv.xml"
    splits = ("train", "test")
    default_split = "test"
    train_split = "train"
    files = {"train": "ASDiv.xml", "test": "ASDiv.xml"}
    counts = {"train": 2305, "test": 2305}  # rows of the source file
    numeric_gold = False  # ASDiv's few non-numeric answers are kept once, unaugmented
    last_stats: dict[str, int] = {}

    def rows(self, split: str, path: Path):
        return asdiv_rows(path)

    def build(self, rows, split, source, expected=None, make=None):  # type: ignore[override]
        cfg: AsdivAugConfig = self.cfg  # type: ignore[assignment]
        rows = list(rows)
        problems = super().build(rows, split, source, expected, make=lambda r, s: self._keep_raw(r))
        order = list(range(len(rows)))  # split by row number, so skipped bad rows never shift it
        random.Random(cfg.seed).shuffle(order)
        n_test = round(len(order) * cfg.test_fraction)
        chosen = set(order[:n_test]) if split == "test" else set(order[n_test:])
        out: list[Example] = []
        n_aug = n_kept = 0
        for ex in problems:
            i, raw = ex.meta["index"], ex.meta["row"]
            if i not in chosen:
                continue
            variants = augment_problem(raw, cfg.copies, cfg.seed)
            n_aug += variants is not None
            n_kept += variants is None
            for j, v in enumerate(variants or [raw]):
                out.append(asdiv_example(Row(v, f"variant {j}", i), split))
        self.last_stats = {"problems": n_aug + n_kept, "augmented": n_aug, "kept_once": n_kept, "rows": len(out)}
        log.info("asdiv_aug/%s: %s", split, self.last_stats)
        return out

    @staticmethod
    def _keep_raw(row: Row) -> Example:
        ex = asdiv_example(row, "")  # validates the row
        return Example(id=ex.id, question=ex.question, answer=ex.answer, meta={"row": row.data, "index": row.index})
