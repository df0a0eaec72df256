"""ProsQA-style graph reasoning generated locally (ProsQA: Hao et al., Coconut, arXiv 2412.06769).

A random DAG of made-up concepts with a few people as sources, written as shuffled facts ("Every X is a Y ." and
"Tom is a X ."), then the question "Is Tom a A or B ?" where A is reachable from Tom and B is not. The chain of
thought is the shortest path, one fact per step ("Tom is a X ." "Every X is a Y ." ...) or, with
`step_style=concept`, one concept per step; the answer is the reachable concept, one token. Punctuation is written
as separate words so that one word = one token.

Generator design (sources first, in topological order): each concept draws 1-4 parents (mean ~1.9) from the 8
nodes before it, a person further back now and then; the root is a random person that reaches some leaf 3-6 hops
away (the target, shorter paths preferred) and cannot reach another leaf (the distractor, a deep one when there is
one). Graphs are built in vectorised batches (numpy), ~1 s per 10k examples. The defaults were tuned so that
`prosqa_stats` matches the real ProsQA files. Measured (mean [min, max]; real = ProsQA test.json, 500 problems;
synth = prosqa_synth test split, default config, seed 0, 500 problems):

    statistic             real ProsQA            prosqa_synth
    nodes                 22.8 [14, 28]          22.9 [19, 26]
    edges (= facts)       35.8 [16, 54]          36.2 [23, 52]
    path length (hops)    3.78 [3, 6]            3.75 [3, 6]
    people                2.58 [2, 6]            2.59 [2, 5]
    facts about people    6.87 [2, 13]           7.41 [2, 14]
    question words        215 [98, 320]          217 [136, 314]
    path 3/4/5/6 hops     40/43/14/2 %           45/37/14/3 %

Also as in the real files (checked on their edge lists): both candidates are leaves, the distractor is never
reachable from the root, and the number of steps equals the shortest path. Questions are long (~220 words, up to
~320): a model needs ~400 positions for question + CoT.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from latentcot.tasks.base import TASKS, Example
from latentcot.tasks.synthetic import ANSWER_MARK, Candidate, SyntheticConfig, SyntheticTask

NAMES = ["Alex", "Bob", "Carol", "Davis", "Eva", "Fae", "Gabriel", "Jack", "Max", "Oliver", "Polly", "Rex", "Sally",
         "Sam", "Stella", "Tom", "Wren"]
_ONSETS = ["b", "br", "ch", "d", "f", "g", "gr", "h", "j", "k", "l", "m", "n", "p", "qu", "r", "s", "sh", "st", "t",
           "v", "w", "y", "zh"]
CONCEPTS = [o + rime for rime in ("umpus", "orpus") for o in _ONSETS]  # 48 made-up concept words
GLUE = ["Every", "is", "a", ".", "Is", "or", "?"]

# Generator constants behind the defaults (see the module docstring for what they reproduce).
_PEOPLE_WEIGHTS = {2: 0.70, 3: 0.23, 4: 0.055, 5: 0.013, 6: 0.002}  # before rejection (fewer 2s survive)
_INDEGREE_WEIGHTS = {1: 0.42, 2: 0.36, 3: 0.16, 4: 0.06}
_WINDOW = 8  # parents come from the last _WINDOW nodes (gives the real graphs' depth) ...
_P_FAR_PERSON = 0.08  # ... plus each person further back with this probability (facts about people)
_DEEP = 3  # prefer distractors at least this deep
_HOP_DECAY = 0.6  # a target h hops away is picked with weight _HOP_DECAY ** (h - min_hops)


@dataclass
class ProsQASynthConfig(SyntheticConfig):
    """Settings of prosqa_synth.

    Attributes:
        min_nodes: fewest nodes (people + concepts) in a graph.
        max_nodes: most nodes in a graph (at most 6 people + 48 concepts).
        min_hops: shortest allowed path from the person to the answer.
        max_hops: longest allowed path.
        step_style: "sentence" (ProsQA: "Every X is a Y .", 5 tokens per step) or "concept" (one token per step).
    """

    min_nodes: int = 20
    max_nodes: int = 26
    min_hops: int = 3
    max_hops: int = 6
    step_style: str = "sentence"

    def __post_init__(self) -> None:
        super().__post_init__()
        from latentcot.config import check

        check(self.min_nodes >= 8, "task.min_nodes", f"must be >= 8, got {self.min_nodes}")
        most = max(_PEOPLE_WEIGHTS) + len(CONCEPTS)
        check(self.min_nodes <= self.max_nodes <= most, "task.max_nodes",
              f"must be in [min_nodes, {most}], got {self.max_nodes}")
        check(self.min_hops > 0, "task.min_hops", f"must be > 0, got {self.min_hops}")
        check(self.max_hops >= self.min_hops, "task.max_hops", f"must be >= min_hops, got {self.max_hops}")
        check(self.step_style in ("sentence", "concept"), "task.step_style",
              f"must be 'sentence' or 'concept', got {self.step_style!r}")


def _graphs(rng: np.random.Generator, cfg: ProsQASynthConfig, count: int) -> dict[str, np.ndarray]:
    """`count` random DAGs at once, with the reachability and hop counts needed to pick root, target and distractor.

    Nodes are in topological order, the people (sources) first; node v of graph b exists when v < n_nodes[b].
    """
    size = cfg.max_nodes
    idx = np.arange(size)
    n_people = rng.choice(list(_PEOPLE_WEIGHTS), size=count, p=list(_PEOPLE_WEIGHTS.values()))  # (B,)
    n_nodes = rng.integers(cfg.min_nodes, cfg.max_nodes + 1, size=count)  # (B,)
    u, v = idx[None, :, None], idx[None, None, :]  # parent u, child v
    concept_v = (v >= n_people[:, None, None]) & (v < n_nodes[:, None, None])  # (B, 1, N)
    roots = max(_PEOPLE_WEIGHTS)  # people are among the first 6 nodes
    coin = np.zeros((count, size, size), dtype=bool)
    coin[:, :roots] = rng.random((count, roots, size)) < _P_FAR_PERSON
    far_person = (u < v - _WINDOW) & (u < n_people[:, None, None]) & coin
    cand = concept_v & (((u < v) & (u >= v - _WINDOW)) | far_person)  # (B, N, N): u may be a parent of v
    # Each concept v keeps the `indeg` candidates with the smallest random scores (sorted along a contiguous axis).
    indeg = rng.choice(list(_INDEGREE_WEIGHTS), size=(count, size, 1), p=list(_INDEGREE_WEIGHTS.values()))
    scores = np.where(cand.transpose(0, 2, 1), rng.random((count, size, size), dtype=np.float32), 2.0)  # (B, v, u)
    cut = np.take_along_axis(np.sort(scores, axis=-1), indeg - 1, axis=-1)  # (B, v, 1)
    adj = cand & (scores <= cut).transpose(0, 2, 1)  # (B, N, N): edge u -> v ("every u is a v")
    # Longest path from a source (depth), parents before children.
    depth = np.zeros((count, size), dtype=np.int64)  # (B, N)
    for w in range(size):
        depth[:, w] = np.where(adj[:, :, w], depth + 1, 0).max(axis=1)
    # From each possible root: reachability, and hop counts up to max_hops (-1 beyond).
    reach = np.eye(roots, size, dtype=bool)[None].repeat(count, axis=0)  # (B, R, N)
    for w in range(size):  # topological order: w is reachable when a parent is
        reach[:, :, w] |= (reach & adj[:, None, :, w]).any(axis=2)
    hops = np.full((count, roots, size), -1)  # (B, R, N)
    frontier = np.eye(roots, size, dtype=bool)[None].repeat(count, axis=0)  # (B, R, N)
    hops[frontier] = 0
    adj_f = adj.astype(np.float32)
    for h in range(1, cfg.max_hops + 1):
        frontier = (frontier.astype(np.float32) @ adj_f > 0) & (hops < 0)  # (B, R, N)
        hops[frontier] = h
    leaf = (idx >= n_people[:, None]) & (idx < n_nodes[:, None]) & ~adj.any(axis=2)  # (B, N)
    target_ok = leaf[:, None] & (hops >= cfg.min_hops)  # (B, R, N)
    neg_ok = leaf[:, None] & ~reach  # (B, R, N)
    root_ok = (np.arange(roots) < n_people[:, None]) & target_ok.any(axis=2) & neg_ok.any(axis=2)  # (B, R)
    return {"n_people": n_people, "n_nodes": n_nodes, "adj": adj, "depth": depth, "hops": hops,
            "target_ok": target_ok, "neg_ok": neg_ok, "root_ok": root_ok}


@TASKS.register("prosqa_synth")
class ProsQASynth(SyntheticTask):
    """ProsQA-style "Is Tom a A or B ?" over a random DAG of concepts; CoT = the path of concepts."""

    Config = ProsQASynthConfig
    cfg: ProsQASynthConfig
    name = "prosqa_synth"
    salt = 4

    def _sample(self, rng: np.random.Generator, count: int) -> list[Candidate]:
        return self._render(rng, _graphs(rng, self.cfg, count))  # the ~43% of graphs that admit a question

    def _render(self, rng: np.random.Generator, g: dict[str, np.ndarray]) -> list[Candidate]:
        """Questions, steps and answers of the graphs that admit a root, a target and a distractor."""
        count, size = g["adj"].shape[:2]
        # All random choices drawn for the whole batch, so that the stream does not depend on the graphs.
        names = rng.random((count, len(NAMES))).argsort(axis=1).tolist()  # (B, 17)
        concepts = rng.random((count, len(CONCEPTS))).argsort(axis=1).tolist()  # (B, 48)
        root_pick = np.where(g["root_ok"], rng.random(g["root_ok"].shape), -1.0).argmax(axis=1)  # (B,)
        rows = np.arange(count)
        target_ok, neg_ok = g["target_ok"][rows, root_pick], g["neg_ok"][rows, root_pick]  # (B, N)
        # Weighted pick without a loop: the largest u ** (1 / weight) wins with probability proportional to weight.
        hop_weight = _HOP_DECAY ** np.maximum(g["hops"][rows, root_pick] - self.cfg.min_hops, 0)  # (B, N)
        target_pick = np.where(target_ok, rng.random((count, size)) ** (1 / hop_weight), -1.0).argmax(axis=1)
        deep = 1.0 + (g["depth"] >= _DEEP)  # a deep distractor wins over any shallow one
        neg_pick = np.where(neg_ok, rng.random((count, size)) + deep, -1.0).argmax(axis=1)  # (B,)
        flips = (rng.random(count) < 0.5).tolist()
        # The edges of all graphs, each graph's in its random order: (graph, parent, child) triples.
        bs, us, vs = np.nonzero(g["adj"])
        order = np.lexsort((rng.random(len(bs)), bs))  # random order of the facts within each graph
        bs, us, vs = bs[order], us[order], vs[order]
        bounds = np.searchsorted(bs, np.arange(count + 1)).tolist()
        us, vs = us.tolist(), vs.tolist()
        # prev[b, w]: a parent of w one hop closer to the chosen root (for the shortest path).
        hops = g["hops"][rows, root_pick]  # (B, N)
        closer = g["adj"] & (hops[:, :, None] >= 0) & (hops[:, :, None] == hops[:, None, :] - 1)  # (B, N, N)
        prev = closer.argmax(axis=1).tolist()  # (B, N)
        valid = g["root_ok"].any(axis=1).tolist()
        n_people_all, n_nodes_all = g["n_people"].tolist(), g["n_nodes"].tolist()
        root_pick, target_pick, neg_pick = root_pick.tolist(), target_pick.tolist(), neg_pick.tolist()
        sentence = self.cfg.step_style == "sentence"
        out: list[Candidate] = []
        for b in range(count):
            if not valid[b]:
                continue
            n_people, root, target, neg = n_people_all[b], root_pick[b], target_pick[b], neg_pick[b]
            sym = [NAMES[i] for i in names[b][:n_people]]
            sym += [CONCEPTS[i] for i in concepts[b][: n_nodes_all[b] - n_people]]
            facts = [f"{sym[u]} is a {sym[v]} ." if u < n_people else f"Every {sym[u]} is a {sym[v]} ."
                     for u, v in zip(us[bounds[b]:bounds[b + 1]], vs[bounds[b]:bounds[b + 1]])]
            a, c = (neg, target) if flips[b] else (target, neg)
            question = " ".join(facts) + f" Is {sym[root]} a {sym[a]} or {sym[c]} ?"
            path = [target]
            while path[-1] != root:
                path.append(prev[b][path[-1]])
            path.reverse()
            if sentence:
                steps = tuple(f"{sym[u]} is a {sym[v]} ." if u < n_people else f"Every {sym[u]} is a {sym[v]} ."
                              for u, v in zip(path, path[1:]))
            else:
                steps = tuple(sym[v] for v in path[1:])
            edges = list(zip(us[bounds[b]:bounds[b + 1]], vs[bounds[b]:bounds[b + 1]]))
            meta = {"symbols": sym, "edges": edges, "root": root, "target": target, "neg_target": neg}
            out.append((question, steps, sym[target], meta))
        return out

    def vocabulary(self) -> list[str]:
        return NAMES + CONCEPTS + GLUE + [ANSWER_MARK]

    def _answer_like(self, token: str) -> bool:
        return token in _CONCEPT_SET


_CONCEPT_SET = frozenset(CONCEPTS)
_FACT = re.compile(r"^(?:Every (\S+)|(\S+)) is a (\S+)$")


def prosqa_stats(examples: Iterable[Example | dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Statistics of ProsQA-style problems, read from the text alone, for real rows and synthetic examples alike.

    Args:
        examples: `Example`s (prosqa_synth, or the prosqa task) or raw ProsQA rows (dicts with "question", "steps").

    Returns:
        {statistic: {"mean", "std", "min", "max"}} for "nodes" (distinct entities in the facts), "edges" (distinct
        facts), "facts" (fact sentences, repeats included), "people" (capitalised subjects), "person_facts",
        "path_length" (reasoning steps) and "question_words".
    """
    rows: dict[str, list[float]] = {k: [] for k in
                                    ("nodes", "edges", "facts", "people", "person_facts", "path_length",
                                     "question_words")}
    for ex in examples:
        question, steps = (ex["question"], ex["steps"]) if isinstance(ex, dict) else (ex.question, ex.steps)
        text = question.replace(".", " . ").replace("?", " ? ")
        sentences = [" ".join(s.split()) for s in re.split(r"[.?]", text)]
        facts = [m.groups() for m in map(_FACT.match, sentences) if m]
        edges = {(every or who, obj) for every, who, obj in facts}
        people = {who for _, who, _ in facts if who}
        rows["nodes"].append(len({x for e in edges for x in e}))
        rows["edges"].append(len(edges))
        rows["facts"].append(len(facts))
        rows["people"].append(len(people))
        rows["person_facts"].append(sum(1 for _, who, _ in facts if who))
        rows["path_length"].append(len(steps))
        rows["question_words"].append(len(text.split()))
    return {
        k: {"mean": statistics.fmean(v), "std": statistics.pstdev(v), "min": min(v), "max": max(v)}
        for k, v in rows.items() if v
    }
