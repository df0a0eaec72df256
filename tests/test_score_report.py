"""`latentcot score` and `latentcot report`, in process: accuracies of hand-made outputs, pass@k / sc@k with
several samples, one-line errors for bad input, and a report over real (tiny-model) run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentcot.cli.main import main
from latentcot.tasks import get_task


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def gsm8k(shared_data: Path):
    examples = get_task("gsm8k", data_dir=str(shared_data)).load()[:3]
    return examples


def score(tmp_path: Path, shared_data: Path, rows: list, *extra: str) -> tuple[int, dict | None]:
    src = write_jsonl(tmp_path / "outs.jsonl", rows)
    out = tmp_path / "scored"
    rc = main(["score", "--task", "gsm8k", str(src), "--out", str(out), "--data-dir", str(shared_data), *extra])
    metrics = json.loads((out / "metrics.json").read_text()) if rc == 0 else None
    return rc, metrics


def test_score_by_id_and_question(tmp_path, shared_data, gsm8k, capsys):
    a, b, c = gsm8k
    rows = [
        {"id": a.id, "output": f"16 - 3 - 4 = 9 eggs.\nThe answer is ${a.answer}."},  # strict and flexible right
        {"question": "  " + b.question.replace(" ", "  ") + "\n", "response": "So it is 999. The answer is 999."},
        {"id": c.id, "completion": f"... so the total is {c.answer}"},  # no answer phrase: flexible only
    ]
    rc, m = score(tmp_path, shared_data, rows)
    assert rc == 0
    assert m["questions"] == 3 and m["samples"] == 3 and m["task"] == "gsm8k"
    assert m["accuracy_strict"]["mean"] == pytest.approx(100 / 3)
    assert m["accuracy_flexible"]["mean"] == pytest.approx(200 / 3)
    assert "generated_tokens" not in m and "seconds_per_question" not in m  # not given: left out, not zero
    recs = [json.loads(line) for line in (tmp_path / "scored" / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == [a.id, b.id, c.id]
    assert [(r["pred_strict"], r["pred_flexible"]) for r in recs] == [
        (a.answer, a.answer),
        ("999", "999"),
        (None, c.answer),
    ]
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "accuracy_strict 33.33" in out[0] and "accuracy_flexible 66.67" in out[0]


def test_score_several_samples_pass_and_sc(tmp_path, shared_data, gsm8k):
    a, b, _ = gsm8k
    # a: 4 samples, 1 right (last); the vote is 5 (2x) -> wrong. b: 4 samples, 2 right; the vote is the gold.
    outs_a = ["The answer is 5.", "The answer is 5.", "The answer is 7.", f"The answer is {a.answer}."]
    outs_b = [f"The answer is {b.answer}.", "The answer is 1.", f"The answer is {b.answer}.0", "no idea"]
    rows = [{"id": a.id, "sample": i, "text": t, "generated_tokens": 10 + i} for i, t in enumerate(outs_a)]
    rows += [{"id": b.id, "output": t, "generated_tokens": 20} for t in outs_b]  # samples numbered in file order
    rc, m = score(tmp_path, shared_data, rows)
    assert rc == 0 and m["questions"] == 2 and m["samples"] == 8
    assert m["accuracy_strict"]["mean"] == pytest.approx(100 * 3 / 8)
    assert set(k for k in m if k.startswith(("pass@", "sc@"))) == {
        f"{kind}@{k}_{mode}" for kind in ("pass", "sc") for k in (1, 4) for mode in ("strict", "flexible")
    }  # k = 1, the samples per question, and 4/8/... below it, as `latentcot eval` picks them
    assert m["pass@1_strict"]["mean"] == pytest.approx(100 * (1 / 4 + 2 / 4) / 2)
    assert m["sc@1_strict"]["mean"] == pytest.approx(50.0)  # first samples: a wrong, b right
    assert m["pass@4_strict"]["mean"] == pytest.approx(100.0)
    assert m["sc@4_strict"]["mean"] == pytest.approx(50.0)
    assert m["generated_tokens"]["mean"] == pytest.approx((10 + 11 + 12 + 13 + 4 * 20) / 8)
    assert "decode_steps" not in m


def test_score_seeds_give_mean_and_std(tmp_path, shared_data, gsm8k):
    a, b, _ = gsm8k
    rows = [
        {"id": a.id, "seed": 0, "output": f"The answer is {a.answer}"},
        {"id": b.id, "seed": 0, "output": f"The answer is {b.answer}"},
        {"id": a.id, "seed": 1, "output": f"The answer is {a.answer}"},
        {"id": b.id, "seed": 1, "output": "The answer is 0"},
    ]
    rc, m = score(tmp_path, shared_data, rows)
    assert rc == 0 and m["seeds"] == [0, 1]
    assert m["accuracy_strict"] == {"mean": pytest.approx(75.0), "std": pytest.approx(25.0)}


@pytest.mark.parametrize(
    "rows, needle",
    [
        ([{"id": "test-0", "output": "The answer is 1"}, "{not json"], "outs.jsonl:2"),
        ([{"id": "test-0", "output": "x"}, {"id": "no-such-id", "output": "x"}, "--strict-match"], "'no-such-id'"),
        ([{"question": "What is the airspeed of an unladen swallow?", "output": "x"}], "unladen swallow"),
        ([{"question": "What is the airspeed of an unladen swallow?", "output": "x"}, "--strict-match"], "unladen"),
        ([{"id": "test-0", "answer": "x"}], "no output text"),
        ([{"output": "The answer is 3"}], "no 'id' or 'question'"),
        ([{"id": "test-0", "output": "a"}, {"id": "test-0", "sample": 0, "output": "b"}], "second output"),
        (["[1, 2]"], "outs.jsonl:1"),
        ([""], "holds no outputs"),
    ],
)
def test_score_bad_input_is_one_line_exit_2(tmp_path, shared_data, capsys, rows, needle):
    flags = [r for r in rows if isinstance(r, str) and r.startswith("--")]
    rc, _ = score(tmp_path, shared_data, [r for r in rows if r not in flags], *flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("latentcot score: error:") and needle in err[0], err


def test_score_unreadable_file(tmp_path, shared_data, capsys):
    missing = tmp_path / "nope.jsonl"
    rc = main(["score", "--task", "gsm8k", str(missing), "--out", str(tmp_path / "o"), "--data-dir", str(shared_data)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nope.jsonl" in err[0]


def eval_run(out: Path, data: Path, *settings: str) -> None:
    argv = ["eval", "--method", "cot", "--model", "tiny-llama", "--task", "gsm8k", "--limit", "2"]
    argv += ["--out", str(out), "--data-dir", str(data), "--no-progress", "max_new_tokens=4", *settings]
    assert main(argv) == 0


def files_of(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def refused(capsys, rc: int, needle: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("latentcot score: error:") and needle in err[0], err


def test_score_refuses_an_eval_run_s_directory(tmp_path, shared_data, gsm8k, capsys):
    ev = tmp_path / "ev"
    eval_run(ev, shared_data)
    before = files_of(ev)
    src = write_jsonl(tmp_path / "outs.jsonl", [{"id": gsm8k[0].id, "output": f"The answer is {gsm8k[0].answer}"}])
    capsys.readouterr()
    rc = main(["score", "--task", "gsm8k", str(src), "--out", str(ev), "--data-dir", str(shared_data)])
    refused(capsys, rc, "holds an evaluation run")
    assert files_of(ev) == before  # config.yaml, samples.jsonl, metrics.json byte for byte


def test_score_refuses_a_training_run_s_directory(tmp_path, shared_data, gsm8k, capsys):
    trained = tmp_path / "trained"
    (trained / "checkpoint").mkdir(parents=True)
    (trained / "train_config.yaml").write_text("run:\n  method: cot_sft\n")
    (trained / "checkpoint" / "state.json").write_text("{}")
    before = files_of(trained)
    src = write_jsonl(tmp_path / "outs.jsonl", [{"id": gsm8k[0].id, "output": "The answer is 1"}])
    rc = main(["score", "--task", "gsm8k", str(src), "--out", str(trained), "--data-dir", str(shared_data)])
    refused(capsys, rc, "holds a training run")
    assert files_of(trained) == before


def test_score_again_with_the_same_settings_and_not_with_others(tmp_path, shared_data, gsm8k, capsys):
    a = gsm8k[0]
    rows = [{"id": a.id, "output": f"The answer is {a.answer}"}, {"id": "no-such-id", "output": "x"}]
    rc, first = score(tmp_path, shared_data, rows)
    out = tmp_path / "scored"
    written = files_of(out)
    assert rc == 0 and set(written) == {"config.yaml", "samples.jsonl", "metrics.json", "unmatched.jsonl"}
    rc, again = score(tmp_path, shared_data, rows)  # the same command: scored again in place, the same files
    assert rc == 0 and again == first and files_of(out) == written
    capsys.readouterr()
    src = str(tmp_path / "outs.jsonl")
    rc = main(["score", "--task", "svamp", src, "--out", str(out), "--data-dir", str(shared_data)])
    refused(capsys, rc, "run.task: 'gsm8k' there, 'svamp' now")
    assert files_of(out) == written
    for command in ("eval", "train"):  # nor do eval and train take a score run's directory
        method = "cot" if command == "eval" else "cot_sft"
        rc = main([command, "--method", method, "--model", "tiny-gpt2", "--task", "gsm8k", "--out", str(out),
                   "--data-dir", str(shared_data), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "holds a score run" in err[0], err
        assert files_of(out) == written


def test_a_score_run_of_the_first_scorer_is_scored_again(tmp_path, shared_data, gsm8k):
    """A score directory written before config.yaml recorded the format and --strict-match takes the same command."""
    import yaml

    rows = [{"id": gsm8k[0].id, "output": f"The answer is {gsm8k[0].answer}"}]
    rc, first = score(tmp_path, shared_data, rows)
    cfg = tmp_path / "scored" / "config.yaml"
    old = yaml.safe_load(cfg.read_text())
    del old["score"]["format"], old["score"]["strict_match"]
    cfg.write_text(yaml.safe_dump(old))
    rc, again = score(tmp_path, shared_data, rows)
    assert rc == 0 and again == first


def test_evaluate_refuses_a_seed_given_twice(tmp_path, arith_task):
    """The library call refuses what `seeds=0,0` on the command line is refused for: every record would be written
    twice. Nothing is written."""
    from latentcot.decoding.sampling import GenerationConfig
    from latentcot.errors import ConfigError
    from latentcot.eval.runner import evaluate
    from latentcot.methods import build_method
    from latentcot.models.backbone import Backbone
    from latentcot.models.loading import load_model

    m = build_method("cot", {}, Backbone(*load_model("tiny-gpt2"), "tiny-gpt2"))
    with pytest.raises(ConfigError, match="seeds: each seed once, got 0, 1, 0"):
        evaluate(m, arith_task, arith_task.load("test")[:2], GenerationConfig(max_new_tokens=2), [0, 1, 0],
                 tmp_path / "e", progress=False)
    assert not (tmp_path / "e").exists()


def test_report_two_runs_and_a_scored_one(tmp_path, shared_data, gsm8k, capsys):
    r1, r2, r3 = tmp_path / "greedy", tmp_path / "sampled", tmp_path / "scored"
    eval_run(r1, shared_data)
    eval_run(r2, shared_data, "num_samples=2", "temperature=0.7", "seeds=0,1")
    a = gsm8k[0]
    src = write_jsonl(tmp_path / "other_system.jsonl", [{"id": a.id, "output": f"The answer is {a.answer}"}])
    assert main(["score", "--task", "gsm8k", str(src), "--out", str(r3), "--data-dir", str(shared_data)]) == 0
    capsys.readouterr()

    out = tmp_path / "report"
    assert main(["report", str(r1), str(r2), str(r3), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    md = (out / "report.md").read_text()
    png = out / "accuracy_vs_steps.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3  # header, rule, one row per run
    header = [c.strip() for c in table[0].strip("|").split("|")]
    for col in ("method", "model", "task", "questions", "strict acc", "flexible acc", "pass@2_strict", "sc@2_flexible",
                "gen. tokens", "decode steps", "s / question", "questions / s"):  # fmt: skip
        assert col in header, col
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")] for r in table[2:]}
    assert rows["greedy"][1:4] == ["cot", "tiny-llama", "gsm8k"] and rows["greedy"][4] == "2"
    assert rows["scored"][1] == "other_system" and rows["scored"][5] == "100.00"
    assert rows["greedy"][header.index("pass@2_strict")] == "-"
    assert rows["sampled"][header.index("decode steps")] != "-"
    assert rows["scored"][header.index("decode steps")] == "-"
    assert "greedy" in printed and "report.md" in printed


def test_report_missing_metrics_names_the_dir(tmp_path, capsys):
    (tmp_path / "half_run").mkdir()
    rc = main(["report", str(tmp_path / "half_run"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "half_run/metrics.json" in err[0]


def test_report_of_a_training_run_says_to_evaluate_it(tmp_path, capsys):
    trained = tmp_path / "sft"
    trained.mkdir()
    (trained / "train_config.yaml").write_text("run:\n  method: cot_sft\n")
    rc = main(["report", str(trained), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{trained} is a training run: evaluate it" in err[0]
    assert f"weights={trained}" in err[0] and not (tmp_path / "r").exists()
