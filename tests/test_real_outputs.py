"""Answer extraction on real model outputs: each fixture line (scripts/make_fixtures.py: zero-shot `cot`, greedy,
160 new tokens, bundled models) has its strict and flexible answers labelled by hand below, by reading the output
and applying the task's rules as a careful human would:

- strict: the answer in the format the prompt asks for ("The answer is N" / "(X)" / yes-no, `\\boxed{}` for math500,
  "The answer is X" for prosqa); the last such statement that actually carries an answer (an echo of the
  instruction such as "The answer is N, where N is the final answer." carries none). None when there is none.
- flexible: strict when present, else the task's fallback: the last number (math), the last standalone option
  letter, the last yes/no, the last "is a X" (prosqa).

Outputs cut off at the token limit are kept on purpose: they are what real runs produce.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentcot.tasks import get_task
from latentcot.tasks.base import Example

FIXTURES = Path(__file__).parent / "fixtures" / "real_outputs"
REAL_TASKS = (
    "gsm8k", "asdiv", "svamp", "multiarith", "addsub", "singleeq", "gsm_hard",
    "aqua", "strategyqa", "date_understanding", "commonsenseqa", "math500", "prosqa",
)  # fmt: skip
SMOL = "smollm2-135m-instruct"
QWEN = "qwen2.5-coder-0.5b-instruct"

# (task, model, id) -> (strict, flexible), labelled by hand from the outputs.
EXPECTED: dict[tuple[str, str, str], tuple[str | None, str | None]] = {
    # cut off mid-sentence "... = 3": no answer statement; the last number is 3
    ("gsm8k", SMOL, "test-0"): (None, "3"),
    ("gsm8k", SMOL, "test-1"): ("4", "4"),
    ("asdiv", SMOL, "nluds-0001"): ("9", "9"),
    ("asdiv", SMOL, "nluds-0002"): ("9", "9"),  # "Step 1: ... Step 5" then "The answer is 9."
    # "The answer is 5120. The answer is N, where N is the final answer." twice: the echo carries no answer
    ("svamp", SMOL, "chal-1"): ("5120", "5120"),
    ("svamp", SMOL, "chal-2"): ("36", "36"),
    ("multiarith", SMOL, "0"): ("28", "28"),  # "The answer is 74 - 32 = 28 pieces." then "The answer is 28."
    ("multiarith", SMOL, "1"): ("16", "16"),
    ("addsub", SMOL, "1"): ("27", "27"),
    ("addsub", SMOL, "2"): ("54", "54"),  # "The answer is N" then "The answer is 54"
    ("singleeq", SMOL, "0"): ("27", "27"),
    ("singleeq", SMOL, "1"): (None, "18"),  # cut off after "54 - 28 = 18"
    ("gsm_hard", SMOL, "test-0"): (None, "64"),  # cut off at "Now, we can calculate"
    ("gsm_hard", SMOL, "test-1"): (None, "4532000"),
    ("aqua", SMOL, "test-0"): ("C", "C"),
    ("aqua", SMOL, "test-1"): ("D", "D"),  # "The answer is (D)" first and last, steps between
    ("strategyqa", SMOL, "10"): ("yes", "yes"),
    ("strategyqa", SMOL, "8"): ("no", "no"),  # "The answer is yes. The answer is no.": the last one counts
    ("date_understanding", SMOL, "test-0"): ("C", "C"),
    ("date_understanding", SMOL, "test-1"): ("C", "C"),
    ("commonsenseqa", SMOL, "1afa02df02c908a558b4036e80242fac"): ("D", "D"),  # "The answer is (D) mall."
    ("commonsenseqa", SMOL, "a7ab086045575bb497933726e4e6ad28"): ("D", "D"),
    ("math500", SMOL, "test-0"): (None, "1"),  # no box; cut off in "\frac{1}{r"
    ("math500", SMOL, "test-1"): (None, "1"),  # no box; cut off after "$a + (1/r) ="
    ("prosqa", SMOL, "test-0"): (None, "zhurpus"),  # a list of "Every terpus is a zhurpus." cut off
    ("prosqa", SMOL, "test-1"): ("gerpus", "gerpus"),  # 'The answer is "Gerpus"'
    # Qwen2.5-Coder-0.5B-Instruct
    ("gsm8k", QWEN, "test-0"): (None, "4"),  # a plan cut off at "4. The total number of": the list marker 4
    ("gsm8k", QWEN, "test-1"): (None, "3"),  # cut off in "2 \text{ bolts (blue)} + 1 \text{ bolt (white)} = 3 \text{"
    ("svamp", QWEN, "chal-1"): ("51", "51"),  # "Therefore, the answer is \\(\\boxed{51}\\)."
    ("svamp", QWEN, "chal-2"): (None, "1"),  # Python code, then an ```output block holding 1; no answer sentence
    ("strategyqa", QWEN, "10"): ("no", "no"),
    ("strategyqa", QWEN, "8"): (None, None),  # a list of "factors" cut off; no yes or no anywhere
    ("aqua", QWEN, "test-0"): (None, None),  # cut off inside a formula; no option letter anywhere
    ("aqua", QWEN, "test-1"): (None, None),  # cut off while computing prices; no option letter anywhere
}


def fixture_lines() -> list[dict]:
    rows = []
    for path in sorted(FIXTURES.glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


LINES = fixture_lines()
TASKS = {name: get_task(name) for name in {r["task"] for r in LINES}}


def same(task_name: str, got: str | None, want: str | None) -> bool:
    if got is None or want is None:
        return got is want
    return got == want or TASKS[task_name].is_equivalent(got, want)


def test_every_real_task_has_outputs():
    have = {r["task"] for r in LINES}
    assert set(REAL_TASKS) <= have, f"no fixture for {sorted(set(REAL_TASKS) - have)}: run scripts/make_fixtures.py"


def test_every_output_is_labelled():
    missing = [(r["task"], r["model"], r["id"]) for r in LINES if (r["task"], r["model"], r["id"]) not in EXPECTED]
    assert not missing, f"label these outputs by hand in EXPECTED: {missing}"


@pytest.mark.parametrize("row", LINES, ids=[f"{r['task']}-{r['model'].split('-')[0]}-{r['id'][:12]}" for r in LINES])
def test_extractors_agree_with_hand_labels(row):
    key = (row["task"], row["model"], row["id"])
    if key not in EXPECTED:
        pytest.skip("not labelled")
    want_strict, want_flexible = EXPECTED[key]
    got = TASKS[row["task"]].extract(row["output"])
    assert same(row["task"], got.strict, want_strict), f"strict: extractor {got.strict!r}, by hand {want_strict!r}"
    assert same(row["task"], got.flexible, want_flexible), (
        f"flexible: extractor {got.flexible!r}, by hand {want_flexible!r}"
    )


def test_correct_flags_follow_the_labels():
    """score() marks an output right exactly when the hand-labelled answer equals the gold one."""
    for row in LINES:
        key = (row["task"], row["model"], row["id"])
        if key not in EXPECTED:
            continue
        task = TASKS[row["task"]]
        want_strict, want_flexible = EXPECTED[key]
        scored = task.score(Example(id=row["id"], question="", answer=row["gold"]), row["output"])
        assert scored["correct_strict"] == (want_strict is not None and task.is_equivalent(want_strict, row["gold"]))
        assert scored["correct_flexible"] == (
            want_flexible is not None and task.is_equivalent(want_flexible, row["gold"])
        ), key
