"""Answer extraction and normalisation as pure functions: numbers, option letters, yes/no.

Every task has a strict extractor (the format the prompt asks for: "The answer is N", GSM8K `#### N`,
`\\boxed{...}`, "The answer is (B)") and a flexible one (strict when it matches, else a fallback such as the
last number in the text), so flexible accuracy is never below strict accuracy.

All regular expressions here are linear in the input (no nested or adjacent overlapping quantifiers), and every
extractor only reads the last `MAX_CHARS` characters of an output, so none can hang on arbitrary text.
Symbolic (math500) equivalence lives in `latentcot.tasks.symbolic`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

MAX_CHARS = 20_000
_BOXED_TRIES, _BOXED_SPAN = 16, 4000  # markers tried from the end; chars read per box
REL_TOL = 1e-6

# A number as models write it: sign, $, thousands commas, decimals, a simple fraction, a percent sign.
# The look-behind stops "x2" or "3.5.6" from reading a number out of the middle of a token.
_NUM = (
    r"(?<![\w.])(?:[-−]\s?)?\$?\s?[-−]?"
    r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:\s?/\s?\d+(?:\.\d+)?(?![\d/]))?"
    r"(?:\s?%)?"
)
NUMBER_RE = re.compile(_NUM)
_PHRASE_RE = re.compile(r"(?i)\banswer\b(?:\s+is\b|\s*:|\s+would\s+be\b|\s+will\s+be\b|\s+=)")
_HASH_RE = re.compile(r"####")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf)\s*\{([^{}]*)\}")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([-−]?[\d.,]+)\s*\}\s*\{\s*([-−]?[\d.,]+)\s*\}")
_LATEX_DROP_RE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\^\s*\{?\\circ\}?|\\quad")
_YES_NO_RE = re.compile(r"(?i)\b(yes|no)\b")


def _tail(text: str) -> str:
    return text[-MAX_CHARS:] if len(text) > MAX_CHARS else text


def latex_to_plain(s: str) -> str:
    """Light LaTeX clean-up so numbers inside math read as numbers: `\\frac{1}{2}` -> `1/2`, `1{,}234` -> `1,234`."""
    s = _LATEX_DROP_RE.sub("", s)
    s = s.replace("{,}", ",").replace("\\$", "$").replace("\\%", "%")
    s = _TEXT_CMD_RE.sub(r"\1", s)
    return _FRAC_RE.sub(r"\1/\2", s)


def parse_number(s: str | None) -> float | None:
    """The value of one number string ("$1,234.50", "-5", "3/4", "25%", "−2"), or None when it is not one number.

    A percent sign is dropped ("25%" -> 25.0): GSM8K-style gold answers give percentages as the bare number.
    """
    if s is None:
        return None
    t = latex_to_plain(s.strip()).strip().rstrip(".")
    t = t.replace("−", "-").replace("$", "").replace(",", "").replace("%", "").replace(" ", "")
    if t.startswith("+"):
        t = t[1:]
    if not t or len(t) > 400:
        return None
    try:
        if "/" in t:
            num, den = t.split("/", 1)
            d = float(den)
            return float(num) / d if d != 0 else None
        return float(t)
    except ValueError:
        return None


def format_number(x: float | int | str) -> str:
    """A canonical string for a gold number: 51.0 -> "51", "1,234.50" -> "1234.5", 0.5 -> "0.5"."""
    if isinstance(x, str):
        v = parse_number(x)
        if v is None:
            return x.strip()
        if "/" in x and not float(v).is_integer():
            return clean_number(x)
        x = v
    x = float(x)
    if math.isfinite(x) and x.is_integer():
        return str(int(x))
    return repr(x)


def clean_number(s: str) -> str:
    """The matched number text without $, commas, spaces or %, with a plain minus and no trailing zeros."""
    t = s.strip().replace("−", "-").replace("$", "").replace(",", "").replace("%", "").replace(" ", "")
    if t.startswith("+"):
        t = t[1:]
    if "/" not in t and "." in t:
        t = t.rstrip("0").rstrip(".") or "0"
    if t in ("-0", "-"):
        t = "0"
    return t


def numbers_equal(a: float | None, b: float | None, rel_tol: float = REL_TOL) -> bool:
    """Numeric equality with a relative tolerance (and a tiny absolute one, for answers of 0)."""
    if a is None or b is None:
        return False
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)


def same_number(pred: str | None, gold: str) -> bool:
    """Whether two answer strings are the same number; non-numbers compare as normalised text."""
    if pred is None:
        return False
    p, g = parse_number(pred), parse_number(gold)
    if p is not None and g is not None:
        return numbers_equal(p, g)
    return normalize_text(pred) == normalize_text(gold) != ""


def normalize_text(s: str) -> str:
    """Lower case, no punctuation, articles or extra spaces: for comparing short text answers."""
    s = re.sub(r"[^\w\s:]", " ", s.lower())
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def first_number(s: str) -> str | None:
    m = NUMBER_RE.search(latex_to_plain(s))
    return clean_number(m.group(0)) if m else None


def last_number(text: str) -> str | None:
    """The last number in the text (the usual flexible extractor), cleaned; None when there is none."""
    last = None
    for m in NUMBER_RE.finditer(latex_to_plain(_tail(text))):
        last = m
    return clean_number(last.group(0)) if last else None


def _line_after(text: str, pos: int, limit: int = 300) -> str:
    rest = text[pos : pos + limit].lstrip()
    return rest.split("\n", 1)[0]


def _number_in_tail(tail: str) -> str | None:
    tail = latex_to_plain(tail)
    if "=" in tail:  # "The answer is 18 - 3 = 15": the value after the last "=".
        tail = tail.rsplit("=", 1)[1]
    return first_number(tail)


def answer_phrases(text: str) -> Iterator[tuple[int, str]]:
    """(position, rest of the line) of each "answer is ..." / "Answer: ..." with text after it, last first
    (at most the last `_BOXED_TRIES` phrases)."""
    text = _tail(text)
    for m in list(_PHRASE_RE.finditer(text))[: -_BOXED_TRIES - 1 : -1]:
        tail = _line_after(text, m.end())
        if tail.strip(" *_:$.\t"):
            yield m.start(), tail


def answer_phrase(text: str) -> tuple[int, str] | None:
    """(position, rest of the line) of the last "answer is ..." / "Answer: ..." that has text after it."""
    return next(answer_phrases(text), None)


def last_boxed(text: str) -> tuple[int, str] | None:
    """(position, content) of the last `\\boxed{...}` (nested braces allowed), or None."""
    text = _tail(text)
    matches = list(_BOXED_RE.finditer(text))
    for m in matches[: -_BOXED_TRIES - 1 : -1]:  # the last few boxes, each read at most _BOXED_SPAN chars
        depth, i, end = 1, m.end(), min(len(text), m.end() + _BOXED_SPAN)
        while i < end and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return m.start(), text[m.end() : i - 1].strip()
    return None


def strict_number(text: str) -> str | None:
    """The number in the asked format: the last of "The answer is N", `#### N` and `\\boxed{N}`."""
    text = _tail(text)
    found: list[tuple[int, str]] = []
    # The last phrase that holds a number: small models echo the instruction ("The answer is 36. The answer
    # is N, where N is the final answer."), and the echo must not hide the answer they gave.
    for pos, tail in answer_phrases(text):
        if (n := _number_in_tail(tail)) is not None:
            found.append((pos, n))
            break
    for m in list(_HASH_RE.finditer(text))[: -_BOXED_TRIES - 1 : -1]:
        if (n := _number_in_tail(_line_after(text, m.end()))) is not None:
            found.append((m.start(), n))
            break
    boxed = last_boxed(text)
    if boxed and (n := _number_in_tail(boxed[1])) is not None:
        found.append((boxed[0], n))
    return max(found)[1] if found else None


def flexible_number(text: str) -> str | None:
    """Strict when it matches, else the last number in the text."""
    return strict_number(text) or last_number(text)


# ----------------------------------------------------------------------------- option letters


def _letter_class(letters: str) -> str:
    return "[" + re.escape(letters) + "]"


def strict_choice(text: str, letters: str = "ABCDE") -> str | None:
    """The option letter after the answer phrase: "The answer is (B)", "answer is B", "Answer: **C**".

    A lower-case letter counts only in parentheses or alone before punctuation, so "the answer is a farmer"
    reads as nothing, never as option A.
    """
    phrase = answer_phrase(text)
    if not phrase:
        return None
    tail = re.sub(r"^[\s*_:$]*(?:(?:option|choice)\s+)?", "", phrase[1], flags=re.I)
    tail = re.sub(r"^(?:\\(?:boxed|text|textbf|mathrm)\s*\{\s*)+", "", tail)
    up, low = _letter_class(letters.upper()), _letter_class(letters.lower())
    m = (
        re.match(rf"\(\s*({up}|{low})\s*\)", tail)
        or re.match(rf"({up})(?![A-Za-z])", tail)
        or re.match(rf"({low})\s*(?:[.,;!)}}*]|$)", tail)
    )
    return m.group(1).upper() if m else None


def flexible_choice(text: str, letters: str = "ABCDE") -> str | None:
    """Strict when it matches, else the last standalone option letter: "(C)", "option C", a letter alone on a
    line, or a letter ending the text. Only upper-case letters, so the article "a"/"A" in prose never counts."""
    if (s := strict_choice(text, letters)) is not None:
        return s
    text = _tail(text)
    up = _letter_class(letters.upper())
    patterns = (
        rf"\(({up})\)",
        rf"(?i:\b(?:option|choice)\s+)\(?({up})(?![A-Za-z])",
        rf"(?m)^[ \t*#>]*\(?({up})\)?[.:)]?[ \t*]*$",
        rf"(?<![A-Za-z'])({up})[ \t*]*(?:[.!)][ \t*]*)?\Z",
    )
    best: tuple[int, str] | None = None
    for p in patterns:
        for m in re.finditer(p, text):
            if best is None or m.start(1) > best[0]:
                best = (m.start(1), m.group(1))
    return best[1] if best else None


# ----------------------------------------------------------------------------- yes / no


def strict_yes_no(text: str) -> str | None:
    """ "yes"/"no" right after the answer phrase ("The answer is yes.", "Answer: **No**")."""
    phrase = answer_phrase(text)
    if not phrase:
        return None
    m = re.match(r"[\s*_:\"'(]*(yes|no)\b", phrase[1], flags=re.I)
    return m.group(1).lower() if m else None


def flexible_yes_no(text: str) -> str | None:
    """Strict when it matches, else the last standalone "yes" or "no"."""
    if (s := strict_yes_no(text)) is not None:
        return s
    last = None
    for m in _YES_NO_RE.finditer(_tail(text)):
        last = m
    return last.group(1).lower() if last else None
