"""Reading other systems' outputs for `latentcot score`: the line formats, options blocks and question matching keys.

Formats (`--format`):
- `jsonl` (plain): one JSON object per line: `id` and/or `question`, the output under `output` (or `response`,
  `completion`, `text`), optional gold answer `gold` / `answer` / `target`, optional options `choices` /
  `options`, optional `seed`, `sample` and cost fields.
- `lm-eval`: an lm-evaluation-harness `--log_samples` file (`samples_<task>_<date>.jsonl`): per line `doc_id`,
  `doc` (the dataset row), `target` (the gold, as a string), `arguments` (`{"gen_args_0": {"arg_0": prompt,
  "arg_1": generation kwargs}}`), `resps` (`[[text, ...]]`: one list of outputs per request, several when the
  task repeats) and `filtered_resps`, `filter`, `metrics`, hashes and metric values (ignored). The outputs scored
  are the raw `resps` (our extractors do the extraction); the question is the doc's `question` / `problem` /
  `input` field; options the doc's `choices` / `options`.
- `auto`: `lm-eval` when the file is named `samples_*.jsonl` or its first line has `doc_id` and `resps`, else
  `jsonl`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentcot.errors import DataError

FORMATS = ("auto", "jsonl", "lm-eval")
OUTPUT_FIELDS = ("output", "response", "completion", "text")
GOLD_FIELDS = ("gold", "answer", "target")
OPTION_FIELDS = ("choices", "options")
QUESTION_FIELDS_LM_EVAL = ("question", "problem", "input", "Question", "query")
LM_EVAL_FIELDS = ("doc_id", "doc", "target", "resps")
# Per-sample cost fields another system may report; copied when present.
COST_FIELDS = ("generated_tokens", "decode_steps", "latent_steps", "soft_steps", "prefill_tokens", "seconds")
LETTERS = "ABCDEFGHIJ"


@dataclass
class Line:
    """One input line, read but not yet matched or scored.

    Attributes:
        where: "file:line" for messages.
        qid: the line's own question id (None when it has none).
        question: the question text as the other system wrote it.
        outputs: the output texts (several for an lm-eval doc with repeats).
        gold: the line's own gold answer, raw (None when it has none).
        options: the option texts the line shows, in its own letter order (None when it shows none).
        seed, sample: as given (None: default).
        costs: cost fields to carry into the records.
    """

    where: str
    qid: str | None
    question: str | None
    outputs: list[str]
    gold: Any = None
    options: list[str] | None = None
    seed: int | None = None
    sample: int | None = None
    costs: dict[str, float] = field(default_factory=dict)


def read_objects(path: Path) -> list[tuple[int, dict[str, Any] | DataError]]:
    """(line number, object or the DataError naming file:line) for every non-blank line of a JSONL file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    rows: list[tuple[int, dict[str, Any] | DataError]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append((n, DataError(f"{path}:{n}: not valid JSON ({e.msg}): each line must be one JSON object")))
            continue
        if not isinstance(obj, dict):
            obj = DataError(f"{path}:{n}: expected a JSON object with an id or question and an output")
        rows.append((n, obj))
    if not rows:
        raise DataError(f"{path} holds no outputs: expected JSON lines with an id or question and an output")
    return rows


def detect_format(path: Path, rows: list[tuple[int, dict[str, Any] | DataError]]) -> str:
    if path.name.startswith("samples_"):
        return "lm-eval"
    first = next((obj for _, obj in rows if isinstance(obj, dict)), {})
    return "lm-eval" if "doc_id" in first and "resps" in first else "jsonl"


def parse_line(obj: dict[str, Any], fmt: str, where: str) -> Line:
    """One object of format `fmt` -> Line. Raises DataError naming `where` and the field."""
    return _lm_eval_line(obj, where) if fmt == "lm-eval" else _plain_line(obj, where)


def _plain_line(obj: dict[str, Any], where: str) -> Line:
    qid = None if obj.get("id") is None else str(obj["id"])
    question = obj.get("question")
    if question is not None and not isinstance(question, str):
        raise DataError(f"{where}: field 'question' must be a string, got {type(question).__name__}")
    gold = next((obj[k] for k in GOLD_FIELDS if obj.get(k) is not None), None)
    key = next((k for k in OPTION_FIELDS if obj.get(k) is not None), None)
    options = read_options(obj[key], f"{where}: field {key!r}") if key else None
    if options is None and question is not None:
        options = split_options(question)[1]
    if qid is None and question is None and gold is None:
        raise DataError(f"{where}: no 'id' or 'question' field to match the line to a question, and no gold answer")
    return Line(
        where=where,
        qid=qid,
        question=question,
        outputs=[_output_text(obj, where)],
        gold=gold,
        options=options,
        seed=_int_field(obj, "seed", where),
        sample=_int_field(obj, "sample", where),
        costs={k: obj[k] for k in COST_FIELDS if isinstance(obj.get(k), int | float) and not isinstance(obj[k], bool)},
    )


def _lm_eval_line(obj: dict[str, Any], where: str) -> Line:
    missing = [k for k in LM_EVAL_FIELDS if k not in obj]
    if missing or not isinstance(obj.get("doc"), dict) or not isinstance(obj.get("resps"), list):
        what = f"no field {', '.join(missing)}" if missing else "'doc' is not an object or 'resps' not a list"
        raise DataError(
            f"{where}: not an lm-eval --log_samples line ({what}; expected {', '.join(LM_EVAL_FIELDS)}): "
            "pass --format jsonl for a plain file"
        )
    resps = obj["resps"]
    texts = resps[0] if len(resps) == 1 and isinstance(resps[0], list) else resps
    if not texts or not all(isinstance(t, str) for t in texts):
        raise DataError(
            f"{where}: 'resps' holds {json.dumps(resps)[:60]}, not generated text: a log-likelihood (multiple-choice) "
            "lm-eval task; latentcot score scores the output text of generate_until tasks"
        )
    doc = obj["doc"]
    question = next((doc[k] for k in QUESTION_FIELDS_LM_EVAL if isinstance(doc.get(k), str)), None)
    if question is None:
        args = obj.get("arguments")
        first = args.get("gen_args_0") if isinstance(args, dict) else None
        question = first.get("arg_0") if isinstance(first, dict) and isinstance(first.get("arg_0"), str) else None
    key = next((k for k in OPTION_FIELDS if doc.get(k) is not None), None)
    options = read_options(doc[key], f"{where}: doc field {key!r}") if key else None
    if options is None and question is not None:
        options = split_options(question)[1]
    target = obj["target"]
    return Line(
        where=where,
        qid=f"doc-{obj['doc_id']}",
        question=question,
        outputs=list(texts),
        gold=None if target in (None, "") else target,
        options=options,
    )


def _output_text(obj: dict[str, Any], where: str) -> str:
    for key in OUTPUT_FIELDS:
        if obj.get(key) is not None:
            if not isinstance(obj[key], str):
                raise DataError(f"{where}: field {key!r} must be a string, got {type(obj[key]).__name__}")
            return obj[key]
    raise DataError(f"{where}: no output text: give it as one of the fields {', '.join(OUTPUT_FIELDS)}")


def _int_field(obj: dict[str, Any], key: str, where: str) -> int | None:
    if key not in obj or obj[key] is None:
        return None
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int | str) or not str(v).lstrip("-").isdigit():
        raise DataError(f"{where}: {key!r} must be an integer, got {v!r}")
    return int(v)


# ---- options ------------------------------------------------------------------------------------------------------
_LABEL = re.compile(r"^\s*\(?([A-J])\s*[).:]\s*(.*)$", re.S)


def read_options(value: Any, what: str) -> list[str]:
    """Option texts from a list of strings ("A) 38" labels dropped), a list of {label, text}, or HF's
    {"label": [...], "text": [...]}; raises DataError naming `what` for anything else."""
    if isinstance(value, dict) and isinstance(value.get("text"), list):
        labels = value.get("label") or list(LETTERS[: len(value["text"])])
        value = [{"label": lab, "text": t} for lab, t in zip(labels, value["text"])]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        try:
            value = [str(v["text"]) for v in sorted(value, key=lambda v: str(v.get("label", "")))]
        except KeyError:
            raise DataError(f"{what}: each option needs a 'text'") from None
    if (
        not isinstance(value, list)
        or not 2 <= len(value) <= len(LETTERS)
        or not all(isinstance(v, str) for v in value)
    ):
        raise DataError(f"{what}: expected a list of 2 to {len(LETTERS)} option texts")
    labelled = [_LABEL.match(v) for v in value]
    if all(m and m.group(1) == LETTERS[i] for i, m in enumerate(labelled)):
        return [m.group(2).strip() for m in labelled]  # type: ignore[union-attr]
    return [v.strip() for v in value]


_MARKER = re.compile(r"(?<![A-Za-z0-9])\(?([A-J])\)")
_BLOCK_TITLE = re.compile(r"(answer\s+choices|options|choices)\s*:?\s*$", re.I)


def split_options(question: str) -> tuple[str, list[str] | None]:
    """(stem, option texts) of a question that lists its options as "(A) ... (B) ..." or "A) ... B) ..." (on one
    line or several, after an optional "Answer Choices:" / "Options:"); (question, None) when it lists none."""
    marks = list(_MARKER.finditer(question))
    start = None
    for i in range(len(marks) - 1):  # the last "(A)" followed by "(B)": the options block is at the end
        if marks[i].group(1) == "A" and marks[i + 1].group(1) == "B":
            start = i
    if start is None:
        return question, None
    run = [marks[start]]
    for m in marks[start + 1 :]:
        if m.group(1) == LETTERS[len(run)]:
            run.append(m)
    ends = [m.start() for m in run[1:]] + [len(question)]
    options = [question[m.end() : end].strip() for m, end in zip(run, ends)]
    stem = _BLOCK_TITLE.sub("", question[: run[0].start()].rstrip()).rstrip()
    return stem, options


# ---- matching keys ------------------------------------------------------------------------------------------------
_QUOTES = "\"'`\u2018\u2019\u201c\u201d\u00ab\u00bb"
_PREFIX = re.compile(r"^\s*(q|question)\s*[:.]\s*", re.I)


def exact_key(text: str) -> str:
    """Whitespace collapsed: the match `--strict-match` allows."""
    return " ".join(text.split())


def tolerant_key(text: str) -> str:
    """Case, quotes, punctuation and whitespace dropped, with a leading "Q:" and a trailing options block removed."""
    stem = split_options(text)[0]
    t = unicodedata.normalize("NFKC", _PREFIX.sub("", stem)).lower()
    t = re.sub(f"[{_QUOTES}]", "", t)
    t = re.sub(r"[^\w\s]", " ", t)
    return " ".join(t.split())
