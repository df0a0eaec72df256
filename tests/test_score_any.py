"""`latentcot score` on outputs written the way other systems write them: options appended to the question, a
question from another split, options in another order with their own letters, lines with their own gold, an
lm-evaluation-harness --log_samples file written by hand in its documented layout, and the bad-input lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentcot.cli.main import main
from latentcot.eval.score_input import split_options, tolerant_key
from latentcot.tasks import get_task
from latentcot.tasks.choice import LETTERS


def run_score(tmp_path: Path, data: Path, task: str, rows: list, *extra: str) -> tuple[int, dict | None, Path]:
    src = tmp_path / "outs.jsonl"
    src.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    out = tmp_path / f"scored-{task}"  # one directory per task: another task into it is refused
    rc = main(["score", "--task", task, str(src), "--out", str(out), "--data-dir", str(data), *extra])
    return rc, (json.loads((out / "metrics.json").read_text()) if rc == 0 else None), out


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def kojima(stem: str, options: list[str]) -> str:
    """The question as the zero-shot-CoT logs write it: options appended on the same line."""
    return stem + " Answer Choices: " + " ".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))


def test_split_options_forms():
    assert split_options("Pick one. Answer Choices: (A) 38 (B) 40 (C) 42") == ("Pick one.", ["38", "40", "42"])
    assert split_options("Pick one.\nOptions:\n(A) red\n(B) blue") == ("Pick one.", ["red", "blue"])
    assert split_options("What is 1+1?\nA)2\nB)3") == ("What is 1+1?", ["2", "3"])
    assert split_options("Plan (A) of the year (B) was late; what now?")[1] is not None  # last (A)..(B) run wins
    assert split_options("Janet has 3 eggs. How many?") == ("Janet has 3 eggs. How many?", None)
    assert tolerant_key('Q: "Is it  cold?"\n(A) yes (B) no') == tolerant_key("is it cold")


def test_appended_choices_and_other_split(tmp_path, shared_data):
    """CommonsenseQA questions with "Answer Choices:" appended; one from train, scored with the default dev."""
    csqa = get_task("commonsenseqa", data_dir=str(shared_data))
    dev, train = csqa.load("dev")[:2], csqa.load("train")[:1]
    rows = [
        {"question": kojima(ex.meta["stem"], ex.meta["options"]), "output": f"So the answer is ({ex.answer})."}
        for ex in dev + train
    ]
    rows[1]["output"] = "The answer is (" + next(c for c in "ABCDE" if c != dev[1].answer) + ")."  # wrong
    rows.append({"question": "  " + dev[0].meta["stem"].upper() + "  ", "output": f"The answer is ({dev[0].answer})"})
    rc, m, out = run_score(tmp_path, shared_data, "commonsenseqa", rows)
    assert rc == 0
    assert m["lines"] == {"own_gold": 0, "id": 0, "exact": 0, "tolerant": 4, "unmatched": 0, "bad": 0}
    assert [r["id"] for r in records(out)] == [dev[0].id, dev[1].id, train[0].id, dev[0].id]
    assert m["accuracy_strict"]["mean"] == pytest.approx(75.0)
    assert not (out / "unmatched.jsonl").exists()
    # --strict-match: the appended choices no longer match: one line, exit 2
    rc, _, _ = run_score(tmp_path, shared_data, "commonsenseqa", rows, "--strict-match")
    assert rc == 2


def test_shuffled_options_are_read_with_the_lines_letters(tmp_path, shared_data, capsys):
    """date_understanding in the file's own option order (the correct option mostly first): letters are the line's."""
    date = get_task("date_understanding", data_dir=str(shared_data))
    raw = json.loads((shared_data / "date_understanding" / "task.json").read_text())["examples"]
    exs = date.load()
    rows = []
    for i in (0, 1, 2):
        options = list(raw[i]["target_scores"])  # the file's order, not ours
        right = LETTERS[[raw[i]["target_scores"][o] for o in options].index(1)]
        rows.append({"question": kojima(raw[i]["input"], options), "output": f"The answer is ({right})."})
    assert [r["output"][15] for r in rows] != [ex.answer for ex in exs[:3]]  # our letters would mark some wrong
    rows.append({"question": kojima(raw[3]["input"], list(raw[3]["target_scores"])), "output": "The answer is (F)."})
    rc, m, out = run_score(tmp_path, shared_data, "date_understanding", rows)
    assert rc == 0 and m["lines"]["tolerant"] == 4
    recs = records(out)
    assert [r["correct_strict"] for r in recs] == [True, True, True, False]
    assert [r["gold"] for r in recs[:3]] == [r["output"][15] for r in rows[:3]]
    # options that do not hold the gold option: one line naming file:line
    bad = dict(rows[0], question=kojima(raw[0]["input"], ["01/01/1900", "02/02/1900", "03/03/1900"]))
    rc, _, _ = run_score(tmp_path, shared_data, "date_understanding", [rows[1], bad])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "outs.jsonl:2" in err[0] and "do not include the gold option" in err[0]


def test_gold_only_lines_need_no_match(tmp_path, shared_data):
    rows = [
        {"question": "A question no split holds: 2+2?", "output": "The answer is 4.", "gold": "4"},
        {"question": "Another one, 10/4?", "output": "it is 2.5", "answer": 2.5},
        {"output": "The answer is 7", "target": "Some rationale.\n#### 8"},
    ]
    rc, m, out = run_score(tmp_path, shared_data, "gsm8k", rows)
    assert rc == 0 and m["lines"]["own_gold"] == 3 and m["questions"] == 3
    assert [(r["correct_strict"], r["correct_flexible"]) for r in records(out)] == [(1, 1), (0, 1), (0, 0)]
    # multiple choice with its own options: six options on a five-option task, gold F and a text gold
    rows = [
        {"question": "Pick.", "choices": list("uvwxyz"), "gold": "F", "output": "The answer is (F)."},
        {"question": "Pick.\n(A) red\n(B) blue", "gold": "blue", "output": "The answer is (B)."},
        {
            "question": "Pick again.",
            "options": ["A) red", "B) blue"],
            "gold": 0,
            "output": "(B) I think. The answer is (B)",
        },
    ]
    rc, m, out = run_score(tmp_path, shared_data, "aqua", rows)
    assert rc == 0 and [r["gold"] for r in records(out)] == ["F", "B", "A"]
    assert [r["correct_strict"] for r in records(out)] == [True, True, False]


def test_unmatched_lines_are_listed_and_counted(tmp_path, shared_data, capsys):
    gsm = get_task("gsm8k", data_dir=str(shared_data)).load()[:2]
    rows = [
        {"id": gsm[0].id, "output": f"The answer is {gsm[0].answer}"},
        {"question": gsm[1].question, "output": "The answer is 0"},
        {"question": "What is the airspeed of an unladen swallow?", "output": "x"},
        {"id": "no-such-id", "output": "x"},
    ]
    rc, m, out = run_score(tmp_path, shared_data, "gsm8k", rows)
    assert rc == 0 and m["questions"] == 2
    assert m["lines"] == {"own_gold": 0, "id": 1, "exact": 1, "tolerant": 0, "unmatched": 2, "bad": 0}
    listed = [json.loads(line) for line in (out / "unmatched.jsonl").read_text().splitlines()]
    assert [u["line"].rsplit(":", 1)[1] for u in listed] == ["3", "4"]
    printed = capsys.readouterr().out
    assert "1 by id, 1 exact, 0 tolerant, 2 unmatched" in printed and "unmatched.jsonl" in printed


def lm_eval_line(doc_id: int, question: str, answer: str, resps: list, **extra) -> dict:
    """One line as lm-eval's EvaluationTracker.save_results_samples writes it (generate_until, gsm8k-style)."""
    prompt = f"Question: {question}\nAnswer:"
    line = {
        "doc_id": doc_id,
        "doc": {"question": question, "answer": answer},
        "target": answer,
        "arguments": {"gen_args_0": {"arg_0": prompt, "arg_1": {"until": ["Question:"], "do_sample": False}}},
        "resps": resps,
        "filtered_resps": [resps[0][0] if resps and isinstance(resps[0], list) else None],
        "filter": "strict-match",
        "metrics": ["exact_match"],
        "doc_hash": "0" * 64,
        "prompt_hash": "1" * 64,
        "target_hash": "2" * 64,
        "exact_match": 0.0,
    }
    line.update(extra)
    return line


def test_lm_eval_samples_file(tmp_path, shared_data, capsys):
    gsm = get_task("gsm8k", data_dir=str(shared_data)).load()[:2]
    raw = [ex.meta["raw_answer"] for ex in gsm]
    rows = [
        lm_eval_line(0, gsm[0].question, raw[0], [[f"She sells them. The answer is {gsm[0].answer}."]]),
        lm_eval_line(1, gsm[1].question, raw[1], [["The answer is 1.", f"#### {gsm[1].answer}", "no idea"]]),
    ]
    src = tmp_path / "samples_gsm8k_2026-11-28T03-00-00.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored"
    assert main(["score", "--task", "gsm8k", str(src), "--out", str(out), "--data-dir", str(shared_data)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["format"] == "lm-eval" and m["lines"]["own_gold"] == 2 and m["samples"] == 4
    recs = records(out)
    assert [(r["id"], r["sample"], r["gold"]) for r in recs] == [
        ("doc-0", 0, gsm[0].answer), ("doc-1", 0, gsm[1].answer), ("doc-1", 1, gsm[1].answer), ("doc-1", 2, gsm[1].answer)
    ]  # fmt: skip
    assert [r["correct_strict"] for r in recs] == [True, False, True, False]
    # an lm-eval file of another layout, and a log-likelihood task's responses: one line each, exit 2
    for bad, needle in (
        ({"doc_id": 0, "doc": {}, "resps": [["x"]]}, "no field target"),
        (lm_eval_line(0, "q", "A", [[[-1.5, False]], [[-0.2, True]]]), "log-likelihood"),
    ):
        src.write_text(json.dumps(bad) + "\n")
        capsys.readouterr()
        assert (
            main(["score", "--task", "gsm8k", str(src), "--out", str(tmp_path / "o2"), "--data-dir", str(shared_data)])
            == 2
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{src.name}:1" in err[0] and needle in err[0], err
        assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize(
    "task, bad, needle",
    [
        ("gsm8k", {"question": "q", "output": "The answer is 3", "gold": "three-ish"}, "cannot be read as an answer"),
        ("aqua", {"question": "Pick. (A) x (B) y", "output": "(A)", "gold": "D"}, "not one of the line's 2 options"),
        ("strategyqa", {"question": "q", "output": "yes", "gold": "maybe"}, "cannot be read"),
        ("gsm8k", {"question": "q", "gold": "3"}, "no output text"),
    ],
)
def test_bad_lines_stop_or_are_skipped(tmp_path, shared_data, capsys, task, bad, needle):
    gold, output = {
        "gsm8k": ("2", "The answer is 2"),
        "aqua": ("B", "The answer is (B)"),
        "strategyqa": ("yes", "The answer is yes"),
    }[task]
    good = [{"question": "x?", "output": output, "gold": gold}]
    rc, _, out = run_score(tmp_path, shared_data, task, [good[0], bad])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "outs.jsonl:2" in err[0] and needle in err[0], err
    assert not out.exists()
    rc, m, out = run_score(tmp_path, shared_data, task, [good[0], bad], "--skip-bad-lines")
    assert rc == 0 and m["samples"] == 1 and m["lines"]["bad"] == 1 and m["accuracy_strict"]["mean"] == 100.0
    (skipped,) = [json.loads(line) for line in (out / "bad_lines.jsonl").read_text().splitlines()]
    assert skipped["line"].endswith("outs.jsonl:2") and needle in skipped["error"]
