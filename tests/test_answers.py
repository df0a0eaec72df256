"""Answer extraction and checking on the kind of text small LMs write."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latentcot.tasks.answers import (
    flexible_choice,
    flexible_number,
    flexible_yes_no,
    format_number,
    last_boxed,
    last_number,
    parse_number,
    same_number,
    strict_choice,
    strict_number,
    strict_yes_no,
)
from latentcot.tasks.symbolic import math_equal

# (model output, strict, flexible)
NUMBER_CASES = [
    ("The answer is $1,234.50.", "1234.5", "1234.5"),
    ("Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72", "72", "72"),
    ("#### -5", "-5", "-5"),
    ("So the total is \\boxed{\\frac{1}{2}}.", "1/2", "1/2"),
    ("The answer is 25%.", "25", "25"),
    ("The answer is **42**", "42", "42"),
    ("Step 1: 18 - 3 = 15.\nThe answer is: 18 - 3 = 15.", "15", "15"),
    ("The answer is −7.", "-7", "-7"),
    ("The answer is \\$18.", "18", "18"),
    ("The final answer is $\\boxed{1{,}000}$.", "1000", "1000"),
    ("The answer is 5 apples.", "5", "5"),
    ("Answer: 3/4", "3/4", "3/4"),
    ("She pays 3 * $4 = $12. The answer is 12. Wait, the tax: 13", "12", "12"),
    ("The answer is 12.\n\nQuestion: Tom has 5 apples...", "12", "12"),
    ("He earns 0.2 x 50 = $10 in total.", None, "10"),
    ("A man walks 5 miles, then 7 more.", None, "7"),
    ("It costs -$5 in the end", None, "-5"),
    ("I am not sure.", None, None),
    ("", None, None),
    ("The answer is unclear to me.", None, None),
]


@pytest.mark.parametrize("text,strict,flexible", NUMBER_CASES)
def test_number_extraction(text: str, strict: str | None, flexible: str | None) -> None:
    assert strict_number(text) == strict
    assert flexible_number(text) == flexible


@pytest.mark.parametrize(
    "text,value",
    [("$1,234.50", 1234.5), ("-5", -5.0), ("3/4", 0.75), ("25%", 25.0), ("−2", -2.0), ("\\frac{1}{2}", 0.5),
     ("+3", 3.0), ("1/0", None), ("abc", None), ("", None), ("5.", 5.0)],
)  # fmt: skip
def test_parse_number(text: str, value: float | None) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize(
    "pred,gold,same",
    [("0.5", "1/2", True), ("1234.50", "1234.5", True), ("72.0", "72", True), ("-5", "5", False),
     ("0.3333333", "1/3", True), ("0.33", "1/3", False), ("1e3", "1000", True), ("25%", "25", True),
     ("3:30 pm", "3:30 p.m.", False), ("Yes", "yes", True), (None, "1", False), ("100000001", "100000000", True)],
)  # fmt: skip
def test_same_number(pred: str | None, gold: str, same: bool) -> None:
    assert same_number(pred, gold) is same


def test_format_number() -> None:
    assert format_number(51.0) == "51"
    assert format_number("1,234.50") == "1234.5"
    assert format_number(-9867630.0) == "-9867630"
    assert format_number("3/4") == "3/4"


def test_last_boxed_nested_braces() -> None:
    text = "so \\boxed{1} first, then \\boxed{\\frac{\\sqrt{3}}{2}} and \\boxed{unclosed"
    assert last_boxed(text) == (text.index("\\boxed{\\frac"), "\\frac{\\sqrt{3}}{2}")
    assert last_boxed("no box") is None


# (model output, strict, flexible); options A-E
CHOICE_CASES = [
    ("So the answer is (C).", "C", "C"),
    ("The answer is B because 6000 = 100 * 60.", "B", "B"),
    ("Therefore, the answer is **(D)**", "D", "D"),
    ("Answer: $\\boxed{E}$", "E", "E"),
    ("the answer is (b)", "B", "B"),
    ("The answer is option A.", "A", "A"),
    ("A man walks 3 km. A woman walks 4 km. So they walk 7 km.", None, None),
    ("A farmer has 3 cows. The answer is a bit unclear.", None, None),
    ("A train leaves at noon.\nA car leaves later.", None, None),
    ("Between (B) and (D), (D) fits the data.", None, "D"),
    ("Let me check each option.\nB\n", None, "B"),
    ("The correct choice is option E", None, "E"),
    ("So it is A.", None, "A"),
    ("The answer is (F)", None, None),  # F is not an option here
    ("I think it's 600 km/h.", None, None),
]


@pytest.mark.parametrize("text,strict,flexible", CHOICE_CASES)
def test_choice_extraction(text: str, strict: str | None, flexible: str | None) -> None:
    assert strict_choice(text) == strict
    assert flexible_choice(text) == flexible


def test_choice_six_options() -> None:
    assert strict_choice("The answer is (F).", "ABCDEF") == "F"


@pytest.mark.parametrize(
    "text,strict,flexible",
    [("The answer is yes.", "yes", "yes"), ("Answer: **No**", "no", "no"),
     ("There is no frost in May. So yes.", None, "yes"), ("Maybe.", None, None),
     ("So the answer is No, because yes-men...", "no", "no")],
)  # fmt: skip
def test_yes_no(text: str, strict: str | None, flexible: str | None) -> None:
    assert strict_yes_no(text) == strict
    assert flexible_yes_no(text) == flexible


EXTRACTORS = [strict_number, flexible_number, last_number, strict_choice, flexible_choice, strict_yes_no,
              flexible_yes_no, last_boxed]  # fmt: skip


@settings(deadline=500, max_examples=300)
@given(st.text())
def test_extractors_never_crash_on_text(text: str) -> None:
    for f in EXTRACTORS:
        f(text)


@settings(deadline=500, max_examples=100)
@given(st.text(alphabet="0123456789,./$%-− \n\\{}()ABab*#:answerisboxed", max_size=3000))
def test_extractors_never_crash_on_adversarial_text(text: str) -> None:
    for f in EXTRACTORS:
        f(text)


@pytest.mark.parametrize(
    "text",
    ["\\boxed{" * 3000, "A" + " " * 20000 + "x", "answer" + " " * 20000, "1," * 10000, "#### " * 4000,
     "\n" * 20000 + "B x", "(A" * 10000, "answer is " * 2000, "9" * 100000],
)  # fmt: skip
def test_extractors_are_fast_on_pathological_text(text: str) -> None:
    start = time.perf_counter()
    for f in EXTRACTORS:
        f(text)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    "pred,gold,equal",
    [("(3,\\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", True), ("-q+p", "p - q", True),
     ("14/3", "\\frac{14}{3}", True), ("\\dfrac{14}{3}", "\\frac{14}{3}", True), ("Evelyn", "\\text{Evelyn}", True),
     ("\\sqrt{117}", "3\\sqrt{13}", True), ("1.5", "\\frac{3}{2}", True), ("x = 5", "x=5", True),
     ("\\frac{3}{56}", "\\frac{3}{55}", False), ("6+5i", "6 - 5i", False), (None, "1", False), ("", "1", False)],
)  # fmt: skip
def test_math_equal(pred: str | None, gold: str, equal: bool) -> None:
    assert math_equal(pred, gold) is equal


def test_math_equal_is_bounded_in_time() -> None:
    start = time.perf_counter()
    assert math_equal("2^{2^{2^{2^{30}}}}+1", "5", timeout=1.0) is False
    assert time.perf_counter() - start < 5.0
    assert math_equal("\\frac{1}{2}", "0.5")  # the worker restarted after the timeout


def test_math_equal_in_a_thread() -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda p: math_equal(p, "\\frac{\\sqrt{3}}{2}"), ["\\sqrt3/2", "\\sqrt{2}/2"]))
    assert results == [True, False]
