"""Synthetic tasks: determinism, disjoint splits, verifiable rationales, closed vocabularies, config validation."""

from __future__ import annotations

import json

import pytest

from latentcot.errors import ConfigError, DataError
from latentcot.models.tokenizers import word_level_tokenizer
from latentcot.tasks import TASKS, get_task, resolve_data_dir
from latentcot.tasks.synthetic import SPLITS, split_of
from latentcot.tasks.synthetic_prosqa import prosqa_stats

SMALL = {"num_train": 300, "num_valid": 50, "num_test": 50}
NAMES = ["pointer_chase", "pointer_chase2", "arith_chain", "multiplication", "prosqa_synth"]
# Every task, plus the settings that change its vocabulary or step format.
VARIANTS = [(n, {}) for n in NAMES] + [
    ("pointer_chase2", {"step_format": "sep"}),
    ("pointer_chase2", {"step_format": "pair"}),
    ("pointer_chase", {"num_nodes": 30, "k": 6}),
    ("pointer_chase", {"answer_hops": 1}),
    ("pointer_chase", {"answer_hops": 2, "distinct": True}),
    ("arith_chain", {"modulus": 23, "ops": "+*"}),
    ("multiplication", {"num_digits": 2}),
    ("prosqa_synth", {"step_style": "concept"}),
]


def task(name: str, **kw):
    return get_task(name, **{**SMALL, **kw})


def test_registered_with_splits():
    for name in NAMES:
        t = task(name)
        assert name in TASKS
        assert t.splits == SPLITS and t.default_split == "test" and t.train_split == "train"
        assert t.answer_phrase == "####"
        assert len(t.load()) == SMALL["num_test"]


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_by_seed(name):
    a, b = task(name, seed=3).load("train"), task(name, seed=3).load("train")
    assert [(e.question, e.steps, e.answer) for e in a] == [(e.question, e.steps, e.answer) for e in b]
    c = task(name, seed=4).load("train")
    assert [e.question for e in a] != [e.question for e in c]
    # A smaller split is a prefix of a larger one.
    small, large = task(name, num_test=20).load("test"), task(name, num_test=50).load("test")
    assert [e.question for e in small] == [e.question for e in large[:20]]


@pytest.mark.parametrize("name", NAMES)
def test_splits_disjoint(name):
    t = task(name)
    qs = {s: [e.question for e in t.load(s)] for s in SPLITS}
    for s in SPLITS:
        assert len(qs[s]) == SMALL[f"num_{s}"]
        assert all(split_of(q) == s for q in qs[s])
    assert not set(qs["train"]) & set(qs["test"])
    assert not set(qs["train"]) & set(qs["valid"])
    assert not set(qs["valid"]) & set(qs["test"])
    ids = [e.id for s in SPLITS for e in t.load(s)]
    assert len(set(ids)) == len(ids)


def test_unknown_split():
    with pytest.raises(DataError, match="no split"):
        task("pointer_chase").load("dev")


@pytest.mark.parametrize(("name", "kw"), VARIANTS)
def test_vocabulary_covers_every_token(name, kw):
    t = task(name, **kw)
    tok = word_level_tokenizer(t.vocabulary())
    unk = tok.convert_tokens_to_ids("<|unk|>")
    for split in SPLITS:
        for ex in t.load(split):
            for text in (t.prompt(ex), t.target(ex), t.target(ex, with_rationale=False)):
                ids = tok(text, add_special_tokens=False).input_ids
                assert unk not in ids, text
                assert len(ids) == len(text.split())  # one word = one token


@pytest.mark.parametrize(("name", "kw"), VARIANTS)
def test_target_format_and_self_score(name, kw):
    t = task(name, **kw)
    for ex in t.load("test"):
        assert t.prompt(ex) == ex.question
        assert t.target(ex) == f"{' '.join(ex.steps)} #### {ex.answer}"
        assert t.target(ex, with_rationale=False) == f"#### {ex.answer}"
        assert ex.rationale == " ".join(ex.steps)
        got = t.score(ex, t.target(ex) + " <|eos|>")
        assert got["correct_strict"] and got["correct_flexible"]


def test_pointer_chase_rationale_follows_table():
    t = task("pointer_chase", k=5)
    for ex in t.load("train"):
        words = ex.question.split()
        assert words[-2] == "?" and len(words) == 12 + 2
        table = words[:-2]  # value of node i at position i
        assert sorted(table) == sorted(f"n{i}" for i in range(12))  # a permutation
        node, path = words[-1], []
        for _ in range(5):
            node = table[int(node[1:])]
            path.append(node)
        assert list(ex.steps) == path and ex.answer == path[-1]


@pytest.mark.parametrize("hops", [1, 3])
def test_pointer_chase_answer_hops_shortens_the_cot_only(hops):
    # Same questions and answers as answer_hops=0; the CoT keeps the first k - hops nodes, and following the table
    # from the CoT's last node for `hops` more look-ups reaches the answer.
    full, short = task("pointer_chase", k=4).load("train"), task("pointer_chase", k=4, answer_hops=hops).load("train")
    assert len(full) == len(short)
    for a, b in zip(full, short):
        assert (a.question, a.answer) == (b.question, b.answer)
        assert b.steps == a.steps[: 4 - hops]
        table = b.question.split()[:-2]
        node = b.steps[-1]
        for _ in range(hops):
            node = table[int(node[1:])]
        assert node == b.answer
    ex = short[0]
    assert task("pointer_chase", k=4, answer_hops=hops).target(ex) == " ".join(full[0].steps[: 4 - hops]) + f" #### {ex.answer}"


def test_pointer_chase_distinct_walks_never_revisit_a_node():
    # With distinct=True every walk (start + k visited nodes) has k + 1 different nodes, so the start node or a CoT
    # node is never the answer; without it the start node is the answer about a quarter of the time (n=12, k=4).
    def start_is_answer(exs):
        return sum(e.answer == e.question.split()[-1] for e in exs) / len(exs)

    plain = task("pointer_chase", k=4, answer_hops=2).load("train")
    kept = task("pointer_chase", k=4, answer_hops=2, distinct=True).load("train")
    assert len(kept) == SMALL["num_train"]
    assert 0.15 < start_is_answer(plain) < 0.35 and start_is_answer(kept) == 0
    for ex in kept:
        table, start = ex.question.split()[:-2], ex.question.split()[-1]
        path, node = [], start
        for _ in range(4):
            node = table[int(node[1:])]
            path.append(node)
        assert len({start, *path}) == 5 and ex.answer == path[-1] and list(ex.steps) == path[:2]
    assert [e.question for e in kept] == [e.question for e in task("pointer_chase", k=4, answer_hops=2,
                                                                      distinct=True).load("train")]


@pytest.mark.parametrize("fmt", ["digits", "sep", "pair", "dup", "ptr"])
def test_pointer_chase2_same_problems_twice_the_cot_tokens(fmt):
    one, two = task("pointer_chase").load("train"), task("pointer_chase2", step_format=fmt).load("train")
    for a, b in zip(one, two):
        assert (a.question, a.answer) == (b.question, b.answer)
        assert len(b.steps) == len(a.steps)
        assert len(b.rationale.split()) == 2 * len(a.rationale.split())
        assert all(len(s.split()) == 2 for s in b.steps)
        start = a.question.split()[-1]
        for prev, node, step in zip([start, *a.steps[:-1]], a.steps, b.steps):
            x, y = step.split()
            if fmt == "pair":  # the node the step starts from, then the node it reaches
                assert (x, y) == (prev, node)
                continue
            if fmt in ("dup", "ptr"):  # the node reached, then it again (as a node or as a pointer token)
                assert (x, y) == (node, node if fmt == "dup" else "p" + node[1:])
                continue
            assert (f"n{int(x[1:]) * 10 + int(y[1:])}" if fmt == "digits" else x) == node
            assert fmt == "digits" or y == ";"


def test_arith_chain_rationale_recomputes():
    t = task("arith_chain", modulus=23, k=6)
    for ex in t.load("train"):
        words = ex.question.split()
        assert words[-1] == "=" and len(words) == 2 * 6 + 2
        cur, results = int(words[0]), []
        for op, x in zip(words[1:-1:2], words[2:-1:2]):
            cur = {"+": cur + int(x), "-": cur - int(x), "*": cur * int(x)}[op] % 23
            results.append(str(cur))
        assert list(ex.steps) == results and ex.answer == results[-1]


@pytest.mark.parametrize("n", [1, 3, 4, 12])
def test_multiplication_rationale_recomputes(n):
    t = task("multiplication", num_digits=n)
    for ex in t.load("test"):
        left, right = ex.question.split(" * ")
        a, b = int(left.replace(" ", "")[::-1]), int(right.replace(" ", "")[::-1])
        assert len(str(a)) == n and len(str(b)) == n
        assert ex.answer.replace(" ", "")[::-1].lstrip("0") == str(a * b)
        assert len(ex.answer.split()) == 2 * n and len(ex.steps) == n
        total = 0
        for j, step in enumerate(ex.steps):
            words = step.split()
            if j == 0:
                partial = words
            else:
                assert words[0] == "+" and words[-1] == ")"
                cut = words.index("(")
                partial, running = words[1:cut], words[cut + 1:-1]
            value = int("".join(partial)[::-1])
            assert value == a * int(str(b)[::-1][j]) * 10**j and len(partial) == n + 1 + j
            total += value
            if j:
                assert int("".join(running)[::-1]) == total
        assert total == a * b


def test_multiplication_extraction():
    t = task("multiplication", num_digits=2)
    got = t.extract("0 0 6 + 0 5 2 5 ( 0 5 8 5 ) #### 0 5 8 5 <|eos|>")
    assert got.strict == "0 5 8 5" and got.flexible == "0 5 8 5"
    got = t.extract("0 0 6 + 0 5 2 5 ( 0 5 8 5 )")
    assert got.strict is None and got.flexible == "0 5 8 5"
    assert t.extract("####").strict is None
    assert t.is_equivalent("0  5 8 5", "0 5 8 5") and not t.is_equivalent("0 5 8", "0 5 8 5")


def test_extraction_strict_and_flexible():
    t = task("pointer_chase")
    assert t.extract("n3 n4 #### n4").strict == "n4"
    assert t.extract("n3 #### n1 #### n4 <|eos|>") == t.extract("n4 #### n4")
    got = t.extract("n3 n4 n7")
    assert got.strict is None and got.flexible == "n7"
    got = t.extract("n3 n4 ####")
    assert got.strict is None and got.flexible == "n4"
    assert t.extract("").flexible is None
    a = task("arith_chain", modulus=10)
    assert a.extract("3 4 12 #### 7").flexible == "7" and a.extract("3 12").flexible == "3"
    p = task("prosqa_synth")
    assert p.extract("Tom is a wumpus . Every wumpus is a yumpus .").flexible == "yumpus"
    assert not p.is_equivalent(None, "yumpus")


def _reachable(facts: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in facts.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize("style", ["sentence", "concept"])
def test_prosqa_synth_rationale_is_a_shortest_path(style):
    t = task("prosqa_synth", step_style=style)
    for ex in t.load("train")[:100]:
        body, query = ex.question.rsplit(" . ", 1)
        sentences = [s.split() for s in (body + " .").split(" . ") if s.strip(" .")]
        facts: dict[str, set[str]] = {}
        for s in sentences:
            subject, obj = (s[1], s[4]) if s[0] == "Every" else (s[0], s[3])
            facts.setdefault(subject, set()).add(obj)
        _, person, _, a, _, b, _ = query.split()
        assert ex.answer in (a, b)
        other = b if ex.answer == a else a
        reach = _reachable(facts, person)
        assert ex.answer in reach and other not in reach
        assert not facts.get(ex.answer) and not facts.get(other)  # both candidates are leaves
        if style == "sentence":
            path = [person]
            for step in ex.steps:
                assert f" {step} " in f" {ex.question} "  # every step is a given fact
                w = step.split()
                assert (w[1] if w[0] == "Every" else w[0]) == path[-1]
                path.append(w[-2])
        else:
            path = [person, *ex.steps]
            assert all(nxt in facts[cur] for cur, nxt in zip(path, path[1:]))
        assert path[-1] == ex.answer and 3 <= len(ex.steps) <= 6
        # No shorter path: breadth-first distance equals the number of steps.
        frontier, dist = {person}, 0
        while ex.answer not in frontier:
            frontier = {n for f in frontier for n in facts.get(f, ())}
            dist += 1
        assert dist == len(ex.steps)


def test_prosqa_synth_resembles_prosqa():
    try:
        path = resolve_data_dir() / "prosqa" / "test.json"
    except DataError:
        pytest.skip("no benchmark data directory")
    if not path.is_file():
        pytest.skip("ProsQA test.json not found")
    real = prosqa_stats(json.loads(path.read_text()))
    synth = prosqa_stats(get_task("prosqa_synth", num_test=500).load("test"))
    for key, tol in {"nodes": 0.05, "edges": 0.05, "facts": 0.05, "path_length": 0.05, "people": 0.1,
                     "person_facts": 0.15, "question_words": 0.05}.items():
        assert abs(synth[key]["mean"] - real[key]["mean"]) <= tol * real[key]["mean"], (key, synth[key], real[key])
    assert synth["path_length"]["min"] == real["path_length"]["min"] == 3
    assert synth["path_length"]["max"] == real["path_length"]["max"] == 6


def test_prosqa_stats_by_hand():
    rows = [{"question": "Tom is a wumpus. Every wumpus is a yumpus. Every wumpus is a zumpus. Is Tom a yumpus or "
                         "rompus?", "steps": ["Tom is a wumpus.", "Every wumpus is a yumpus."]}]
    s = prosqa_stats(rows)
    assert s["nodes"]["mean"] == 4 and s["edges"]["mean"] == 3 and s["people"]["mean"] == 1
    assert s["person_facts"]["mean"] == 1 and s["path_length"]["mean"] == 2


@pytest.mark.parametrize(
    ("name", "kw", "field"),
    [
        ("pointer_chase", {"k": 0}, "task.k"),
        ("pointer_chase", {"k": -2}, "task.k"),
        ("pointer_chase", {"num_nodes": 1}, "task.num_nodes"),
        ("pointer_chase2", {"k": 0}, "task.k"),
        ("pointer_chase2", {"step_format": "hex"}, "task.step_format"),
        ("pointer_chase2", {"num_nodes": 101}, "task.num_nodes"),
        ("arith_chain", {"k": 0}, "task.k"),
        ("arith_chain", {"modulus": 1}, "task.modulus"),
        ("arith_chain", {"ops": "/"}, "task.ops"),
        ("multiplication", {"num_digits": 0}, "task.num_digits"),
        ("prosqa_synth", {"max_hops": 2}, "task.max_hops"),
        ("prosqa_synth", {"min_hops": 0}, "task.min_hops"),
        ("prosqa_synth", {"max_nodes": 99}, "task.max_nodes"),
        ("prosqa_synth", {"step_style": "graph"}, "task.step_style"),
        ("pointer_chase", {"num_train": -1}, "task.num_train"),
        ("pointer_chase", {"k": 3, "answer_hops": 3}, "task.answer_hops"),
        ("pointer_chase", {"answer_hops": -1}, "task.answer_hops"),
        ("pointer_chase", {"k": 12, "distinct": True}, "task.distinct"),
        ("pointer_chase", {"kk": 3}, "task.kk"),
    ],
)
def test_config_validation(name, kw, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        get_task(name, **kw)


def test_settings_from_strings():
    # Command-line overrides arrive as strings; the Config types them.
    t = get_task("pointer_chase", k="3", num_nodes="8", num_test="10", seed="5")
    assert (t.cfg.k, t.cfg.num_nodes, t.cfg.seed) == (3, 8, 5)
    assert all(len(e.steps) == 3 and len(e.question.split()) == 10 for e in t.load())
