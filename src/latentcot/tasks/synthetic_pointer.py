"""k-hop pointer chasing through a random permutation written as a table indexed by position.

Question: `f(0) f(1) ... f(n-1) ? s` (values only: the index of a value is its position in the table), e.g. with
n=4, k=2: `n2 n0 n3 n1 ? n0`. The chain of thought lists the k visited nodes f(s), f(f(s)), ...: `n2 n3`, and the
answer is the last one: target `n2 n3 #### n3`. With `answer_hops=h` the CoT lists only the first k - h nodes and
the answer step does the remaining h look-ups itself (k=2, h=1: target `n2 #### n3`). Each step is one positional look-up, which is what makes this
learnable from scratch in seconds (SPEC section 3: 4-layer GPT-2, d=128, k=4, n=12: CoT-SFT 100%, no-CoT ~8%
chance, Coconut with a curriculum 100%; the "answer the start node" shortcut scores ~24%, because a random
permutation has short cycles; `distinct=true` keeps only walks that never revisit a node, which removes it).

`pointer_chase2` asks the same problems (same seed -> same questions and answers) but writes each CoT step as two
tokens, so one continuous thought replacing one step compresses the reasoning (k latents for 2k CoT tokens):
`digits` writes node 7 as `d0 d7` (both tokens carry information), `sep` as `n7 ;`, `pair` as the node the step
starts from and the node it reaches (`n3 n7`: the step from n3 to f(n3) = n7), `dup` as `n7 n7` and `ptr` as
`n7 p7` (the node, then a pointer token for it). The answer stays one token. `dup` and `ptr` exist for the demo
study (README): with them, unlike `pair`, Coconut's first stage already needs the continuous thought to carry a
hop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentcot.tasks.base import TASKS
from latentcot.tasks.synthetic import ANSWER_MARK, Candidate, SyntheticConfig, SyntheticTask

QUERY = "?"


@dataclass
class PointerChaseConfig(SyntheticConfig):
    """Settings of pointer_chase.

    Attributes:
        num_nodes: n, the size of the permutation (node tokens n0 .. n{n-1}).
        k: hops to follow.
        answer_hops: hops the answer takes beyond the chain of thought's last node. 0 (default): the CoT lists all k
            visited nodes and the answer repeats the last one; h > 0: the CoT lists the first k - h nodes and the
            answer is the k-th, so the answer step itself is h look-ups (same questions and answers as h = 0).
        distinct: only problems whose walk never comes back to a node it has seen (the start and the k visited
            nodes all differ; the others are drawn again), so no answer can be copied from the question's start or
            from the chain of thought: with answer_hops > 0 the "answer the start node" shortcut (right ~25% of the
            time with n = 12, k = 4) is never right.
    """

    num_nodes: int = 12
    k: int = 4
    answer_hops: int = 0
    distinct: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        from latentcot.config import check

        check(self.num_nodes >= 2, "task.num_nodes", f"must be >= 2, got {self.num_nodes}")
        check(self.k > 0, "task.k", f"must be > 0, got {self.k}")
        check(0 <= self.answer_hops < self.k, "task.answer_hops",
              f"must be >= 0 and < k = {self.k} (the CoT keeps at least one step), got {self.answer_hops}")
        check(not self.distinct or self.k < self.num_nodes, "task.distinct",
              f"needs k < num_nodes (k + 1 different nodes on a walk), got k = {self.k}, num_nodes = {self.num_nodes}")


@TASKS.register("pointer_chase")
class PointerChase(SyntheticTask):
    """k-hop pointer chasing, one token per step."""

    Config = PointerChaseConfig
    cfg: PointerChaseConfig
    name = "pointer_chase"
    salt = 1

    def _node_names(self) -> list[str]:
        return [f"n{i}" for i in range(self.cfg.num_nodes)]

    def _step(self, node: int, prev: int) -> str:
        """The text of the step that goes from node `prev` to node `node` = f(prev)."""
        return f"n{node}"

    def _sample(self, rng: np.random.Generator, count: int) -> list[Candidate]:
        n, k = self.cfg.num_nodes, self.cfg.k
        tables = rng.random((count, n)).argsort(axis=1)  # (count, n): row i is the permutation f of problem i
        starts = rng.integers(0, n, size=count)  # (count,)
        visited = np.empty((count, k), dtype=np.int64)  # (count, k)
        cur, rows = starts, np.arange(count)
        for j in range(k):
            cur = tables[rows, cur]
            visited[:, j] = cur
        names = self._node_names()
        out: list[Candidate] = []
        for table, s, path in zip(tables.tolist(), starts.tolist(), visited.tolist()):
            if self.cfg.distinct and len({s, *path}) < k + 1:
                continue
            question = " ".join([names[v] for v in table]) + f" {QUERY} {names[s]}"
            shown = path[: k - self.cfg.answer_hops]  # the CoT's nodes (all k unless answer_hops > 0)
            steps = tuple(self._step(v, p) for v, p in zip(shown, [s, *shown[:-1]]))
            out.append((question, steps, names[path[-1]], {"table": table, "start": s, "path": path}))
        return out

    def vocabulary(self) -> list[str]:
        return self._node_names() + [QUERY, ANSWER_MARK]

    def _answer_like(self, token: str) -> bool:
        return token[:1] == "n" and token[1:].isdigit()


@dataclass
class PointerChase2Config(PointerChaseConfig):
    """Settings of pointer_chase2.

    Attributes:
        step_format: "digits" (node 7 -> `d0 d7`, tens then units; needs num_nodes <= 100), "sep" (`n7 ;`) or
            "pair" (the step from n3 to n7 -> `n3 n7`), "dup" (`n7 n7`) or "ptr" (`n7 p7`).
    """

    step_format: str = "digits"

    def __post_init__(self) -> None:
        super().__post_init__()
        from latentcot.config import check

        check(self.step_format in ("digits", "sep", "pair", "dup", "ptr"), "task.step_format",
              f"must be 'digits', 'sep', 'pair', 'dup' or 'ptr', got {self.step_format!r}")
        if self.step_format == "digits":
            check(self.num_nodes <= 100, "task.num_nodes",
                  f"must be <= 100 with step_format=digits, got {self.num_nodes}")


@TASKS.register("pointer_chase2")
class PointerChase2(PointerChase):
    """k-hop pointer chasing with two-token CoT steps (compression target for one latent per step)."""

    Config = PointerChase2Config
    cfg: PointerChase2Config
    name = "pointer_chase2"
    salt = 1  # same problems as pointer_chase

    def _step(self, node: int, prev: int) -> str:
        if self.cfg.step_format == "digits":
            return f"d{node // 10} d{node % 10}"
        if self.cfg.step_format == "pair":
            return f"n{prev} n{node}"
        if self.cfg.step_format == "dup":
            return f"n{node} n{node}"
        if self.cfg.step_format == "ptr":
            return f"n{node} p{node}"
        return f"n{node} ;"

    def vocabulary(self) -> list[str]:
        extra = {"digits": [f"d{i}" for i in range(10)], "sep": [";"], "pair": [], "dup": [],
                 "ptr": [f"p{i}" for i in range(self.cfg.num_nodes)]}[self.cfg.step_format]
        return super().vocabulary() + extra
