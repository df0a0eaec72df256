"""The RLOO recipes under recipes/ (rloo_smollm2, rloo_cot_vs_answer, rloo_pointer_chase, rloo_eval,
rloo_paired_base): their options, tables and replays on tiny models or hand-made logs."""

from __future__ import annotations

import math

import pytest

from latentcot.cli.main import main


def test_smollm2_recipe_bad_mode_settings_are_one_line_exit_2(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "recipes" / "rloo_smollm2.py"
    out = tmp_path / "run"
    for flag, bad in (("--mode-lr", "soft"), ("--mode-lr", "fuzzy=1e-5"), ("--mode-lr", "soft=fast"),
                      ("--mode-steps", "soft=2.5"), ("--mode-seeds", "soft=0,x"), ("--mode-seeds", "soft="),
                      ("--mode-seeds", "soft=1,1"), ("--mode-seeds", "hard=0")):
        r = subprocess.run([sys.executable, str(script), "--out", str(out), "--modes", "soft", flag, bad],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and flag in r.stderr, r.stderr
    assert not out.exists()


def test_smollm2_recipe_settings_the_method_refuses_are_one_line_exit_2(tmp_path):
    """A setting `latentcot train` would refuse (micro_batch not a multiple of group_size, group_size < 2, an unknown
    setting) ends the recipe as the CLI ends: one line naming the field, exit 2, nothing written."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "recipes" / "rloo_smollm2.py"
    out = tmp_path / "run"
    for extra, field in ((["--set", "model=tiny-llama", "micro_batch=3"], "micro_batch"),
                         (["--group-size", "1", "--set", "model=tiny-llama"], "group_size"),
                         (["--set", "model=tiny-llama", "no_such_setting=1"], "no_such_setting")):
        r = subprocess.run([sys.executable, str(script), "--out", str(out), "--modes", "soft", "--steps", "1",
                            "--no-eval", *extra], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and field in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
    assert not out.exists()


def test_smollm2_recipe_mode_seeds_pick_each_modes_runs(tmp_path, monkeypatch):
    """--mode-seeds hard=1 with --seeds 0 2: soft runs seeds 0 and 2, hard only seed 1 (training faked: each run's
    log is written by hand, so the table's rows and numbers are known)."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    monkeypatch.syspath_prepend(str(recipes))
    spec = importlib.util.spec_from_file_location("rloo_smollm2_recipe", recipes / "rloo_smollm2.py")
    rec = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rec)
    trained = []

    def fake_train(values, out, progress=False):
        trained.append((values["rollout_mode"], values["run.seed"]))
        out.mkdir(parents=True)
        base = 10 * values["run.seed"] + (50 if values["rollout_mode"] == "hard" else 0)
        rows = [{"step": i + 1, "reward": base + i, "accuracy": 1.0, "all_equal_groups": 0.5, "cot_len": 3.0,
                 "step_s": 1.0} for i in range(values["train.max_steps"])]
        (out / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return {}

    monkeypatch.setattr(rec, "train", fake_train)
    out = tmp_path / "runs"
    monkeypatch.setattr(sys, "argv", ["rloo_smollm2.py", "--out", str(out), "--modes", "soft", "hard", "--seeds", "0",
                                      "2", "--mode-seeds", "hard=1", "--steps", "4", "--no-eval"])
    rec.main()
    assert trained == [("soft", 0), ("soft", 2), ("hard", 1)]
    table = (out / "rloo_table.md").read_text().splitlines()[2:]
    assert [row.split(" | ")[:2] for row in table] == [["| soft", "0"], ["| soft", "2"], ["| hard", "1"]]
    assert [row.split(" | ")[4] for row in table] == ["0.0 / 1.0 / 2.0 / 3.0", "20.0 / 21.0 / 22.0 / 23.0",
                                                      "60.0 / 61.0 / 62.0 / 63.0"]
    assert (out / "rloo_curves.png").is_file()


def test_cot_vs_answer_recipe_counts_by_hand(tmp_path):
    """recipes/rloo_cot_vs_answer.py on hand-made held-out samples: accuracy, CoT all right, answer | CoT right."""
    import importlib.util
    import json
    from pathlib import Path

    from latentcot.tasks import get_task

    spec = importlib.util.spec_from_file_location("cva", Path(__file__).resolve().parents[1] / "recipes" / "rloo_cot_vs_answer.py")
    cva = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cva)
    exs = get_task("pointer_chase", k=4, answer_hops=1, num_train=4000).load("valid")[:4]
    cot = [" ".join(e.steps) for e in exs]
    wrong = "n0" if exs[1].answer != "n0" else "n1"
    bad_cot = " ".join(["n0" if exs[2].steps[0] != "n0" else "n1", *exs[2].steps[1:]])
    outs = [f"{cot[0]} #### {exs[0].answer}",   # all right
            f"{cot[1]} #### {wrong}",           # CoT right, answer wrong
            f"{bad_cot} #### {exs[2].answer}",  # CoT wrong, answer right
            f"{cot[3]} #### #### {exs[3].question.split()[-1]}"]  # CoT right, the start node after the last marker
    f = tmp_path / "samples.jsonl"
    f.write_text("\n".join(json.dumps({"id": e.id, "output": o}) for e, o in zip(exs, outs)) + "\n")
    got = cva.stats(f, {e.id: e for e in exs})
    starts = [e.question.split()[-1] for e in exs]
    assert [e.answer == s for e, s in zip(exs, starts)] == [False, True, True, True]  # this split's first 4 questions
    # rows answered right: 0, 2, 3; CoT right: 0, 1, 3 (answer right in 0, 3); answered with the start node: 2, 3
    assert got == {"acc": 75.0, "cot": 75.0, "answer_given_cot": pytest.approx(200 / 3), "start": 50.0}


def test_pointer_chase_recipe_sft_only_evaluates_the_start_model_and_stops(tmp_path):
    """--sft-only: the start model is trained and evaluated in each mode (OUT/start-MODE), and no RL run is made."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "recipes" / "rloo_pointer_chase.py"
    out = tmp_path / "pc"
    r = subprocess.run([sys.executable, str(script), "--out", str(out), "--k", "2", "--answer-hops", "1",
                        "--sft-steps", "2", "--eval-limit", "4", "--modes", "hard", "fuzzy", "--sft-only"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [x for x in r.stdout.splitlines() if x.startswith("start model")]
    assert [x.split(",")[1].split(":")[0].strip() for x in lines] == ["hard", "fuzzy"]
    assert (out / "sft" / "train_summary.json").is_file()
    assert (out / "start-fuzzy" / "eval_step0" / "metrics.json").is_file()
    assert not list(out.glob("rloo-*")) and not (out / "rloo_table.md").exists()


def test_six_mode_recipe_table_follows_the_samples_and_ood_nll_ignores_batching(tmp_path):
    """recipes/rloo_eval.py: one row per model and mode; greedy accuracy, pass@1 and pass@n are those of the
    evaluation's own samples (pass@1 = share of right samples, pass@n with n samples = share of questions with one
    right); the OOD NLL does not depend on how many rows share a forward (right padding is masked out); two runs of
    the same rollout mode keep an entropy profile each."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from latentcot.eval.runner import read_samples

    script = Path(__file__).resolve().parents[1] / "recipes" / "rloo_eval.py"
    run = tmp_path / "run"
    assert main(["train", "--method", "rloo", "--model", "tiny-gpt2", "--task", "pointer_chase", "--no-progress",
                 "--out", str(run), "rollout_mode=soft", "group_size=2", "prompts_per_step=2", "max_steps=1",
                 "max_cot_tokens=4", "max_answer_tokens=3"]) == 0
    shutil.copytree(run, tmp_path / "again")
    tables = []
    for ood_batch, runs in (("1", [run]), ("3", [run, tmp_path / "again"])):
        out = tmp_path / f"eval{ood_batch}"
        r = subprocess.run([sys.executable, str(script), *map(str, runs), "--limit", "3", "--samples", "4", "--modes",
                            "hard", "soft", "--batch-size", "8", "--ood-task", "pointer_chase", "--ood-settings", "k=2",
                            "--ood-limit", "5", "--ood-batch-size", ood_batch, "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        got = json.loads((out / "six_modes.json").read_text())
        rows = got["rows"]
        tags = ["base"] + [x.name for x in runs]
        assert [(x["model"].split(" ")[0], x["mode"]) for x in rows] == [
            (t if t == "base" else "rloo-soft", m) for t in tags for m in ("hard", "soft")]
        assert sorted(got["entropy_profiles"]) == sorted(f"{t} / {m}" for t in tags for m in ("hard", "soft"))
        for x in rows:
            tag = "base" if x["model"] == "base" else x["model"].split("(")[1].rstrip(")")
            greedy = read_samples(out / tag / f"{x['mode']}-greedy" / "samples.jsonl")
            sampled = read_samples(out / tag / f"{x['mode']}-sample" / "samples.jsonl")
            assert len(greedy) == 3 and len(sampled) == 12
            assert x["greedy"] == pytest.approx(100 * sum(s["correct_strict"] for s in greedy) / 3)
            assert x["pass@1"] == pytest.approx(100 * sum(s["correct_strict"] for s in sampled) / 12)
            right = {s["id"] for s in sampled if s["correct_strict"]}
            assert x["pass@4"] == pytest.approx(100 * len(right) / 3)
        tables.append(rows)
        assert (out / "entropy_profile.png").stat().st_size > 0
    for a, b in zip(tables[0], tables[1][:4], strict=True):
        assert math.isfinite(a["ood_nll"]) and a["ood_nll"] == pytest.approx(b["ood_nll"], rel=1e-5)


def test_paired_base_replays_the_runs_own_training_stream(tmp_path):
    """recipes/rloo_paired_base.py rolls out a run's prompts with its noise seeds under other weights. On a run whose
    weights never moved (a random tiny model earns reward 0 everywhere, so every advantage and gradient is 0) the
    start weights are the weights of every step, so each replayed step must give the run's logged mean entropy and
    CoT length (continuous, prompt- and noise-dependent); the same run with another seed in its config is another
    stream, which the script's step-1 check refuses."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from latentcot.analysis.rl import read_log

    script = Path(__file__).resolve().parents[1] / "recipes" / "rloo_paired_base.py"
    run = tmp_path / "run"
    assert main(["train", "--method", "rloo", "--model", "tiny-gpt2", "--task", "pointer_chase", "--no-progress",
                 "--out", str(run), "rollout_mode=soft", "group_size=4", "prompts_per_step=2", "max_steps=3",
                 "max_cot_tokens=6", "max_answer_tokens=4", "log_every=1"]) == 0
    logged = read_log(run / "train_log.jsonl")[0]
    assert [r["step"] for r in logged] == [1, 2, 3] and all(r["grad_norm"] == 0.0 for r in logged)
    assert len({round(r["entropy"], 6) for r in logged}) == 3  # three different prompt sets and noise draws
    r = subprocess.run([sys.executable, str(script), str(run), "--out", str(tmp_path / "base")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in (tmp_path / "base" / "paired.jsonl").read_text().splitlines()]
    assert [g["step"] for g in got] == [1, 2, 3]
    for g, want in zip(got, logged):
        assert g["replay_entropy"] == pytest.approx(want["entropy"], rel=1e-6)
        assert (g["replay_cot_len"], g["replay_reward"]) == (want["cot_len"], want["reward"])
    other = tmp_path / "other"
    shutil.copytree(run, other)
    cfg = (other / "train_config.yaml").read_text()
    assert "\n  seeds:\n  - 0\n" in cfg
    (other / "train_config.yaml").write_text(cfg.replace("\n  seeds:\n  - 0\n", "\n  seeds:\n  - 7\n", 1))
    r = subprocess.run([sys.executable, str(script), str(other), "--out", str(tmp_path / "bad")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "not the run's training stream" in r.stderr, r.stderr
    # A run that rolled out in micro-batches (one prompt's group each) logged the rows-weighted mean of their logs;
    # the replay rolls out in the same micro-batches (on smollm2 a soft rollout of 8 rows and one of 16 can part in
    # a sampled token; this tiny model's cannot, so here only the chunked path is checked against the log). With 5
    # training prompts the run's third step starts a second epoch after its first micro-batch: the replay walks the
    # training loop's own data order (BatchStream) across it.
    mb = tmp_path / "mb"
    assert main(["train", "--method", "rloo", "--model", "tiny-gpt2", "--task", "pointer_chase", "--no-progress",
                 "--out", str(mb), "rollout_mode=soft", "group_size=4", "prompts_per_step=2", "max_steps=3",
                 "max_cot_tokens=6", "max_answer_tokens=4", "log_every=1", "micro_batch=4", "train_limit=5"]) == 0
    assert [r["epoch"] for r in read_log(mb / "train_log.jsonl")[0]] == [0, 0, 1]
    r = subprocess.run([sys.executable, str(script), str(mb), "--out", str(tmp_path / "mb-base")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in (tmp_path / "mb-base" / "paired.jsonl").read_text().splitlines()]
    for g, want in zip(got, read_log(mb / "train_log.jsonl")[0], strict=True):
        assert g["replay_entropy"] == pytest.approx(want["entropy"], rel=1e-6)
        assert (g["replay_cot_len"], g["replay_reward"]) == (want["cot_len"], want["reward"])
    for bad in (["--every", "0"], ["--window", "-1"]):
        r = subprocess.run([sys.executable, str(script), str(run), "--out", str(tmp_path / "never"), *bad],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and bad[0] in r.stderr, r.stderr
    assert not (tmp_path / "never").exists()


def test_recipes_check_every_runs_settings_before_the_first_trains(tmp_path):
    """A setting refused for a later run (here the hard run's lr, the second mode; in the pointer-chase recipe any
    RLOO setting, checked before its cot_sft start model trains) ends the recipe with one line and exit 2 before
    anything is trained or written."""
    import subprocess
    import sys
    from pathlib import Path

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    for script, args, field in (
        ("rloo_smollm2.py", ["--modes", "soft", "hard", "--mode-lr", "hard=-1", "--steps", "1", "--no-eval",
                             "--set", "model=tiny-llama"], "lr"),
        ("rloo_pointer_chase.py", ["--modes", "hard", "--sft-steps", "1", "--steps", "1", "--set", "no_such_key=1"],
         "no_such_key"),
    ):
        out = tmp_path / script
        r = subprocess.run([sys.executable, str(recipes / script), "--out", str(out), *args],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr[-2000:]
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{script}: error: ") and field in lines[0], r.stderr[-2000:]
        assert not out.exists()


def test_analysis_recipes_name_a_run_without_results_in_one_line(tmp_path):
    """rloo_cot_vs_answer.py on a folder with no held-out evaluation and compare_runs.py on one with no samples: one
    error line naming the folder, exit 2, no traceback and no table."""
    import subprocess
    import sys
    from pathlib import Path

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    empty = tmp_path / "empty"
    empty.mkdir()
    for script, args in (("rloo_cot_vs_answer.py", [str(empty)]), ("compare_runs.py", [str(empty), str(empty)])):
        r = subprocess.run([sys.executable, str(recipes / script), *args], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr[-2000:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{script}: error: ") and str(empty) in lines[0], r.stderr
