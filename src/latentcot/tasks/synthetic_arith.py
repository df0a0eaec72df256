"""Arithmetic tasks with single-token numbers: modular operation chains and iCoT-style multiplication.

`arith_chain`: a start value and k operations modulo a small base, applied left to right, e.g. modulus 10:
question `3 + 4 * 7 - 2 =`, CoT = the intermediate results `7 9 7`, target `7 9 7 #### 7`. (SPEC section 3: this
kind of task did not learn within ~3 minutes on a 4-layer GPT-2; pointer_chase is the quick one.)

`multiplication`: n x n digit multiplication in the format of implicit CoT (Deng et al., arXiv 2311.01460): digits
least significant first, the CoT is the partial products a * b_j * 10^j (reversed, zero padded to n+1+j digits),
each after the first followed by the running sum in parentheses. For 12 * 34 (n=2), question `2 1 * 4 3`:
steps `8 4 0` and `+ 0 6 3 0 ( 8 0 4 0 )`, answer `8 0 4 0` (= 408 reversed, 2n digits). The answer is 2n tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentcot.tasks.base import TASKS, Extracted
from latentcot.tasks.synthetic import ANSWER_MARK, Candidate, SyntheticConfig, SyntheticTask

_OPS = "+-*"
EQUALS = "="


@dataclass
class ArithChainConfig(SyntheticConfig):
    """Settings of arith_chain.

    Attributes:
        k: operations in the chain (= CoT steps).
        modulus: all numbers are residues 0 .. modulus-1, one token each.
        ops: the operations to draw from, a string over "+-*".
    """

    k: int = 4
    modulus: int = 10
    ops: str = "+-*"

    def __post_init__(self) -> None:
        super().__post_init__()
        from latentcot.config import check

        check(self.k > 0, "task.k", f"must be > 0, got {self.k}")
        check(self.modulus >= 2, "task.modulus", f"must be >= 2, got {self.modulus}")
        check(len(self.ops) > 0 and set(self.ops) <= set(_OPS), "task.ops",
              f"must be a non-empty string over {_OPS!r}, got {self.ops!r}")


@TASKS.register("arith_chain")
class ArithChain(SyntheticTask):
    """k-step arithmetic chains modulo a small base, one token per number and per step."""

    Config = ArithChainConfig
    cfg: ArithChainConfig
    name = "arith_chain"
    salt = 2

    def _sample(self, rng: np.random.Generator, count: int) -> list[Candidate]:
        k, m = self.cfg.k, self.cfg.modulus
        ops = sorted(set(self.cfg.ops), key=_OPS.index)
        starts = rng.integers(0, m, size=count)  # (count,)
        operands = rng.integers(0, m, size=(count, k))  # (count, k)
        op_ids = rng.integers(0, len(ops), size=(count, k))  # (count, k)
        out: list[Candidate] = []
        for s, xs, os_ in zip(starts.tolist(), operands.tolist(), op_ids.tolist()):
            words, results, cur = [str(s)], [], s
            for x, o in zip(xs, os_):
                op = ops[o]
                cur = (cur + x) % m if op == "+" else (cur - x) % m if op == "-" else (cur * x) % m
                words += [op, str(x)]
                results.append(str(cur))
            question = " ".join(words) + f" {EQUALS}"
            out.append((question, tuple(results), results[-1], {}))
        return out

    def vocabulary(self) -> list[str]:
        return [str(i) for i in range(self.cfg.modulus)] + list(_OPS) + [EQUALS, ANSWER_MARK]

    def _answer_like(self, token: str) -> bool:
        return token.isdigit() and int(token) < self.cfg.modulus


@dataclass
class MultiplicationConfig(SyntheticConfig):
    """Settings of multiplication.

    Attributes:
        num_digits: n, the digits of each factor (leading digit non-zero); the product has up to 2n digits.
    """

    num_digits: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        from latentcot.config import check

        check(self.num_digits > 0, "task.num_digits", f"must be > 0, got {self.num_digits}")


def _rev_digits(value: int, width: int) -> str:
    """`value` zero padded to `width` digits, least significant first, space separated."""
    return " ".join(str(value).zfill(width)[::-1])


@TASKS.register("multiplication")
class Multiplication(SyntheticTask):
    """n x n digit multiplication, iCoT style: reversed digits, partial products and running sums as the CoT."""

    Config = MultiplicationConfig
    cfg: MultiplicationConfig
    name = "multiplication"
    salt = 3

    def _sample(self, rng: np.random.Generator, count: int) -> list[Candidate]:
        n = self.cfg.num_digits
        lo, hi = 10 ** (n - 1), 10**n
        if n <= 9:  # fits int64
            pairs = rng.integers(lo, hi, size=(count, 2)).tolist()  # (count, 2)
        else:
            digits = rng.integers(0, 10, size=(count, 2, n))  # (count, 2, n), most significant first
            digits[:, :, 0] = rng.integers(1, 10, size=(count, 2))
            pairs = [[int("".join(map(str, f))) for f in row] for row in digits.tolist()]
        out: list[Candidate] = []
        for a, b in pairs:
            question = f"{_rev_digits(a, n)} * {_rev_digits(b, n)}"
            steps, total = [], 0
            for j, bj in enumerate(str(b)[::-1]):
                partial = a * int(bj) * 10**j
                total += partial
                width = n + 1 + j
                if j == 0:
                    steps.append(_rev_digits(partial, width))
                else:
                    steps.append(f"+ {_rev_digits(partial, width)} ( {_rev_digits(total, width)} )")
            out.append((question, tuple(steps), _rev_digits(a * b, 2 * n), {"a": a, "b": b}))
        return out

    def vocabulary(self) -> list[str]:
        return [str(i) for i in range(10)] + ["*", "+", "(", ")", ANSWER_MARK]

    def _answer_like(self, token: str) -> bool:
        return len(token) == 1 and token.isdigit()

    def extract(self, text: str) -> Extracted:
        """strict: the digits after the last "####"; flexible: the last run of digit tokens."""
        words = self._words(text)
        strict = None
        if ANSWER_MARK in words:
            tail = words[len(words) - words[::-1].index(ANSWER_MARK):]
            run = []
            for w in tail:
                if not self._answer_like(w):
                    break
                run.append(w)
            strict = " ".join(run) or None
        flexible: list[str] = []
        for w in reversed(words):
            if self._answer_like(w):
                flexible.append(w)
            elif flexible:
                break
        return Extracted(strict=strict, flexible=" ".join(reversed(flexible)) or None)
