"""recipes/*.yaml: every recipe parses, names only settings that exist and says what the paper and its users
report; --smoke swaps in tiny models; bad recipes end with one line and exit 2. The slow test runs every recipe
with --smoke (train, then evaluate the trained weights), so a recipe never rots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from latentcot.cli.main import main
from latentcot.methods import METHODS, _register_all
from latentcot.pipeline import SMOKE, resolve, use_trained_weights

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
FILES = sorted(RECIPES.glob("*.yaml"))
# The paper settings issue 17 asks for: each must exist.
REQUIRED = {
    "softcot_llama8b_gsm8k", "softcot_qwen7b_gsm8k", "softcot_pp_llama8b_gsm8k", "coconut_gpt2_gsm8k_aug",
    "coconut_gpt2_prosqa", "codi_gpt2_gsm8k_aug", "codi_llama1b_gsm8k_aug", "soft_thinking_gumbel_qwq32b_math500",
    "rloo_llama3b_gsm8k",
}


def _data(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _skip_unregistered(path: Path) -> None:
    _register_all()
    method = _data(path)["run"]["method"]
    if method not in METHODS.names():
        pytest.skip(f"{path.name}: method {method!r} is not registered yet")


def test_the_required_recipes_exist():
    assert REQUIRED <= {f.stem for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_recipe_parses_and_names_only_existing_settings(path):
    _skip_unregistered(path)
    res = resolve({}, str(path))
    data = _data(path)
    for section in ("run", "method", "train", "generation", "task"):
        for key, value in (data.get(section) or {}).items():  # every key landed where it was written
            got = getattr(getattr(res, section), key)
            assert got == value or (isinstance(value, list) and list(got) == value), f"{section}.{key}"
    small = resolve({}, str(path), smoke=True)
    assert small.run.model.startswith("tiny-") and small.run.out.endswith("-smoke")
    assert small.train.max_steps == SMOKE["train.max_steps"] and small.run.limit == SMOKE["limit"]


@pytest.mark.parametrize("path", [f for f in FILES if f.stem in REQUIRED], ids=lambda p: p.stem)
def test_recipe_says_what_the_paper_and_users_report(path):
    data = _data(path)
    meta = data["recipe"]
    for key in ("paper", "arxiv", "setting", "models", "paper_number", "users_number", "hardware", "time_estimate",
                "official_settings"):
        assert meta.get(key), f"recipe.{key} missing"
    assert "our_number" in meta
    for which in ("paper_number", "users_number"):
        assert "value" in meta[which] and meta[which].get("note"), f"{which}: a value (or null) and a note"
        assert meta[which]["value"] is None or isinstance(meta[which]["value"], (int, float))
    src = meta["users_number"].get("source")
    assert src is None or src.startswith("https://github.com/")
    est = meta["time_estimate"]
    assert est.get("one_gpu") and est.get("eight_gpus") and "estimate" in est.get("note", "")
    assert meta["models"]["backbone"] == data["run"]["model"], "the hub id the run loads is the one documented"
    if "assistant" in meta["models"]:
        assert meta["models"]["assistant"] == data["method"]["assistant"]


def test_smoke_layers_and_the_command_line_wins(tmp_path):
    path = RECIPES / "softcot_pp_llama8b_gsm8k.yaml"
    res = resolve({}, str(path), smoke=True)
    assert (res.run.model, res.method.assistant, res.method.num_chains) == ("tiny-llama", "tiny-gpt2", 2)
    assert res.method.chain_token_ids == [] and res.run.dtype == "float32"
    res = resolve({"num_chains": "3", "run.limit": "5", "out": str(tmp_path)}, str(path), smoke=True)
    assert res.method.num_chains == 3 and res.run.limit == 5 and res.run.out == str(tmp_path)
    assert res.recipe["arxiv"] == "2505.11484" and "recipe" not in res.to_dict()


def test_eval_takes_the_weights_a_recipe_trained(tmp_path):
    path = RECIPES / "softcot_llama8b_gsm8k.yaml"
    res = resolve({"out": str(tmp_path)}, str(path), smoke=True)
    use_trained_weights(res)
    assert res.run.weights is None  # nothing trained yet
    (tmp_path / "trainable.safetensors").write_bytes(b"")
    use_trained_weights(res)
    assert res.run.weights == str(tmp_path)
    res = resolve({"out": str(tmp_path), "weights": "elsewhere"}, str(path), smoke=True)
    use_trained_weights(res)
    assert res.run.weights == "elsewhere"
    plain = resolve({"method": "softcot", "out": str(tmp_path)})  # not a recipe: never implicit
    use_trained_weights(plain)
    assert plain.run.weights is None


def _bad_recipe(tmp_path: Path, edit) -> Path:
    data = _data(RECIPES / "softcot_llama8b_gsm8k.yaml")
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("case,needle", [
    ("setting", "num_thoughtz"), ("section", "methd"), ("model", "not-a-model"), ("recipe", "recipe"),
])
def test_bad_recipe_one_line_exit_2(tmp_path, capsys, case, needle):
    def edit(d):
        if case == "setting":
            d["method"]["num_thoughtz"] = 3
        elif case == "section":
            d["methd.num_thoughts"] = 3
        elif case == "model":
            d["run"]["model"] = "not-a-model"
        else:
            d["recipe"] = "a string, not a mapping"

    path = _bad_recipe(tmp_path, edit)
    out = tmp_path / "o"
    argv = ["eval", "--config", str(path), "--out", str(out), "--no-progress", "assistant=tiny-gpt2", "limit=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_recipe_runs_with_smoke(path, tmp_path, shared_data):
    _skip_unregistered(path)
    out = tmp_path / path.stem
    common = ["--config", str(path), "--smoke", "--out", str(out), "--no-progress", "--data-dir", str(shared_data)]
    trains = resolve({}, str(path)).run.method != "soft_thinking"
    if trains:
        assert main(["train", *common]) == 0
        assert (out / "trainable.safetensors").is_file()
    assert main(["eval", *common]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["questions"] == SMOKE["limit"]
    if trains and "recipe" in _data(path):  # a file with a recipe: block evaluates what its train line trained
        assert yaml.safe_load((out / "config.yaml").read_text())["run"]["weights"] == str(out)


def test_compare_runs_all_samples_paired_standard_error_by_hand(tmp_path):
    """recipes/compare_runs.py --all-samples: per-question pass rates over every sample and seed, the mean
    difference and its paired standard error, against a hand computation."""
    import importlib.util
    import subprocess
    import sys

    path = Path(__file__).resolve().parents[1] / "recipes" / "compare_runs.py"
    spec = importlib.util.spec_from_file_location("compare_runs", path)
    cr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cr)
    right = {"a": {"q1": [1, 0, 0, 0], "q2": [1, 1, 0, 0], "q3": [0, 0, 0, 0]},   # rates 1/4, 1/2, 0
             "b": {"q1": [1, 1, 1, 0], "q2": [1, 1, 0, 0], "q3": [1, 0, 0, 0], "q4": [1, 1, 1, 1]}}  # q4 only in B
    for run, rows in right.items():
        (tmp_path / run).mkdir()
        recs = [{"id": q, "seed": i // 2, "sample": i % 2, "correct_strict": bool(c)}  # two seeds x two samples
                for q, cs in rows.items() for i, c in enumerate(cs)]
        (tmp_path / run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    a, b = (cr.pass_rate_by_question(tmp_path / r, "strict") for r in "ab")
    assert a == {"q1": 0.25, "q2": 0.5, "q3": 0.0} and b["q1"] == 0.75 and b["q4"] == 1.0
    got = cr.paired(a, b)
    # common q1..q3: A (25 + 50 + 0) / 3 = 25, B (75 + 50 + 25) / 3 = 50; differences 50, 0, 25 (mean 25),
    # sample variance ((25^2 + 25^2 + 0) / 2) = 625, standard error sqrt(625 / 3)
    assert got == pytest.approx({"n": 3, "a": 25.0, "b": 50.0, "diff": 25.0, "se": (625 / 3) ** 0.5})
    out = subprocess.run([sys.executable, str(path), str(tmp_path / "a"), str(tmp_path / "b"), "--all-samples"],
                         capture_output=True, text=True, check=True).stdout
    assert "3 common questions" in out and "A 25.0, B 50.0" in out and "+25.0 points" in out and "14.4" in out
    # Questions held fixed: p (1 - p) / (n - 1) per question and run, n = 4: A 3/16 / 3, 1/4 / 3, 0;
    # B 3/16 / 3, 1/4 / 3, 3/16 / 3; sum 17/48; sqrt(17/48) / 3 questions = 0.1984 -> 19.8 points.
    sa, sb = (cr.samples_by_question(tmp_path / r, "strict") for r in "ab")
    assert cr.fixed_question_se(sa, sb) == pytest.approx(100 * (17 / 48) ** 0.5 / 3)
    assert "held fixed (their samples' noise only) 19.8 = 1.3 standard errors" in out
    # One sample for a question: its binomial variance cannot be estimated, so no fixed-question error.
    assert cr.fixed_question_se({"q1": [True]}, {"q1": [False, True]}) is None


def test_compare_runs_several_runs_mean_and_versus_by_hand(tmp_path):
    """recipes/compare_runs.py --all-samples with several B runs: one line each, then the mean of B - A over the runs
    with its standard error over runs; --versus pairs runs one to one; bad combinations exit 2 with one line."""
    import subprocess
    import sys

    path = Path(__file__).resolve().parents[1] / "recipes" / "compare_runs.py"
    # two questions, four samples each (one seed); pass rates (q1, q2) per run
    rates = {"a": (1, 1), "b1": (2, 2), "b2": (1, 3), "b3": (0, 1), "c1": (1, 1), "c2": (2, 2), "c3": (2, 1)}
    for run, (n1, n2) in rates.items():
        (tmp_path / run).mkdir()
        recs = [{"id": q, "seed": 0, "sample": i, "correct_strict": i < n} for q, n in (("q1", n1), ("q2", n2))
                for i in range(4)]
        (tmp_path / run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))

    def run(*names, extra=()):
        return subprocess.run([sys.executable, str(path), *(str(tmp_path / n) for n in names), "--all-samples", *extra],
                              capture_output=True, text=True)

    out = run("a", "b1", "b2", "b3", extra=["--versus", *(str(tmp_path / c) for c in ("c1", "c2", "c3"))])
    assert out.returncode == 0, out.stderr
    # pass@1: A 25; B1 50, B2 50, B3 12.5 -> B - A = +25, +25, -12.5: mean 12.5, sample sd
    # sqrt((12.5^2 + 12.5^2 + 25^2) / 2) = sqrt(468.75), standard error sqrt(468.75 / 3) = 12.5
    assert f"{tmp_path / 'b3'}: 2 common questions" in out.stdout and "B - A -12.5 points" in out.stdout
    assert ("over 3 runs, B - A: mean +12.5 points, standard error over runs 12.5 (per run: +25.0, +25.0, -12.5; "
            "2 of 3 above 0)") in out.stdout
    # C - A = 0, +25, +12.5; run by run (B - A) - (C - A) = +25, 0, -25: mean 0, sd 25, standard error 25 / sqrt(3)
    assert "over 3 runs, C - A: mean +12.5 points" in out.stdout
    assert ("over 3 runs, (B - A) - (C - A), run by run: mean +0.0 points, standard error over runs 14.4 (per run: "
            "+25.0, +0.0, -25.0; 1 of 3 above 0)") in out.stdout
    one = run("a", "b1", extra=["--versus", str(tmp_path / "c2")])  # one pair: (50 - 25) - (50 - 25) = 0
    assert one.returncode == 0 and ("over 1 run, (B - A) - (C - A), run by run: mean +0.0 points, no standard error "
                                    "from one run (per run: +0.0; 0 of 1 above 0)") in one.stdout, one.stdout
    bad = run("a", "b1", "b2", extra=["--versus", str(tmp_path / "c1")])
    assert bad.returncode == 2 and "--versus takes as many runs as B (2), got 1" in bad.stderr
    bad = subprocess.run([sys.executable, str(path), str(tmp_path / "a"), str(tmp_path / "b1"), str(tmp_path / "b2")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "several B runs and --versus need --all-samples" in bad.stderr


def test_compare_runs_by_draw_counts_samples_by_hand(tmp_path):
    """recipes/compare_runs.py --by-draw: samples matched by (question, seed, sample), counted by hand; a sample in
    one run only is left out, and thinking texts are compared only where both records carry one."""
    import subprocess
    import sys

    path = Path(__file__).resolve().parents[1] / "recipes" / "compare_runs.py"
    a = [("q1", 0, 0, True, "x"), ("q1", 0, 1, False, "y"), ("q2", 0, 0, True, None), ("q2", 1, 0, False, "z"),
         ("q3", 0, 0, True, "w")]  # q3 only in A
    b = [("q1", 0, 0, True, "x"), ("q1", 0, 1, True, "y2"), ("q2", 0, 0, False, "t"), ("q2", 1, 0, False, "z")]
    for run, rows in (("a", a), ("b", b)):
        (tmp_path / run).mkdir()
        recs = [{"id": q, "seed": s, "sample": k, "correct_strict": c, **({"extra": {"thinking_text": t}} if t else {})}
                for q, s, k, c, t in rows]
        (tmp_path / run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = subprocess.run([sys.executable, str(path), str(tmp_path / "a"), str(tmp_path / "b"), "--by-draw"],
                         capture_output=True, text=True, check=True).stdout
    # matched: (q1,0,0) both right, same text; (q1,0,1) only B, texts differ; (q2,0,0) only A, A has no text;
    # (q2,1,0) neither, same text. Same outcome 2 of 4; texts in both: 3, of which the same: 2.
    assert ("4 samples in both runs (strict, matched by question, seed and sample): right in both 1, only A 1, "
            "only B 1, neither 1; the same outcome in 2 (50.0%); same thinking text in 2 of the 3 that record one") in out
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "samples.jsonl").write_text(json.dumps({"id": "q9", "seed": 0, "sample": 0,
                                                              "correct_strict": True}) + "\n")
    bad = subprocess.run([sys.executable, str(path), str(tmp_path / "a"), str(tmp_path / "c"), "--by-draw"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "share no (question, seed, sample)" in bad.stderr
