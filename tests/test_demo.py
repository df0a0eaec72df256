"""The demo end to end (a tiny smoke variant in CI; `--quick` marked slow), and the from-scratch task models."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from latentcot.demo import DemoSettings, arms, format_table, run_demo
from latentcot.errors import ModelError
from latentcot.models.loading import load_model
from latentcot.models.task_models import parse_alias
from latentcot.tasks import get_task


def test_scratch_alias_parses_and_builds() -> None:
    spec = parse_alias("scratch-llama-d64-l2:pointer_chase2")
    assert (spec.arch, spec.d, spec.layers, spec.heads, spec.task) == ("llama", 64, 2, 4, "pointer_chase2")
    assert parse_alias("scratch-gpt2:pointer_chase").d == 128
    assert parse_alias("scratch-gpt2:pointer_chase2,step_format=sep").task_settings == (("step_format", "sep"),)
    for bad in ("scratch-bert:pointer_chase", "scratch-gpt2-d30-h4:pointer_chase", "scratch-gpt2:"):
        with pytest.raises(ModelError):
            parse_alias(bad)
    with pytest.raises(ModelError, match="synthetic"):
        load_model("scratch-gpt2-d32-l1:gsm8k")


@pytest.mark.parametrize("task_name,opts", [("pointer_chase", {}), ("pointer_chase2", {}), ("pointer_chase2", {"step_format": "pair"}),
                                           ("pointer_chase2", {"step_format": "sep"})])
def test_task_tokenizer_covers_every_word_and_round_trips(task_name: str, opts: dict) -> None:
    model, tok = load_model(f"scratch-gpt2-d32-l1:{task_name}" + "".join(f",{k}={v}" for k, v in opts.items()))
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    task = get_task(task_name, num_test=20, **opts)
    unk = tok.unk_token_id
    for ex in task.load("test"):
        text = f"{ex.question} {task.target(ex)}"
        ids = tok(text)["input_ids"]
        assert unk not in ids and len(ids) == len(text.split())
        assert tok.decode(ids, skip_special_tokens=True) == text  # "####" is not glued to the word before it
    for marker in ("<bot>", "<eot>", "<pause>"):
        assert tok.convert_tokens_to_ids(marker) != unk


def test_demo_arms_share_one_curriculum() -> None:
    s = DemoSettings.full()
    by_name = {a.method: a for a in arms(s, "pointer_chase")}
    assert by_name["coconut"].settings == by_name["pause"].settings
    assert by_name["coconut"].steps == 4 * 150 and by_name["coconut"].init_from == "cot_sft"
    assert by_name["codi"].settings["num_thoughts"] == s.k
    two = {a.method: a for a in arms(s, "pointer_chase2")}
    assert set(two) == set(s.methods["pointer_chase2"]) and two["cot_sft"].steps == 300
    assert two["coconut"].steps == 5 * 150 and two["coconut"].lr == 1e-3 and two["coconut"].settings["stage_schedule"]
    # pointer_chase2 (2-token steps): stage 0 first, thoughts at the embedding norm and two positions apart, and the
    # pause control on the same curriculum; the 1-token task keeps the paper's settings
    assert two["coconut"].settings == {**two["pause"].settings, "thought_norm": "embedding", "thought_stride": 2}
    assert two["pause"].settings["start_stage"] == 0 and two["pause"].steps == 5 * 150
    assert by_name["coconut"].settings["start_stage"] == 1 and "thought_stride" not in by_name["coconut"].settings
    assert s.model("pointer_chase2").endswith(",step_format=pair")


def test_demo_stage0_and_fewer_stages_reach_both_curriculum_arms() -> None:
    from latentcot.latent.curriculum import Curriculum
    from latentcot.methods.coconut import CoconutConfig
    from latentcot.methods.pause import Pause

    s = dataclasses.replace(DemoSettings.full(), latent={}, start_stage=0, max_stage=3, thought_norm="embedding",
                            stage_steps={"pointer_chase2": 250})
    by = {a.method: a for a in arms(s, "pointer_chase2")}
    coconut, pause = by["coconut"], by["pause"]
    assert coconut.settings == {**pause.settings, "thought_norm": "embedding"}
    strided = {a.method: a for a in arms(dataclasses.replace(s, thought_stride=2), "pointer_chase2")}
    assert strided["coconut"].settings == {**coconut.settings, "thought_stride": 2}
    assert strided["pause"].settings == pause.settings
    assert pause.settings["start_stage"] == 0 and pause.settings["max_stage"] == 3
    assert pause.settings["final_stage"] is False  # the 4th step stays text after 3 thoughts
    assert coconut.steps == pause.steps == 4 * 250  # stages 0, 1, 2, 3
    cfg = CoconutConfig(**coconut.settings)
    Pause.Config(**pause.settings)  # both configs take every setting the demo gives them
    table = Curriculum.from_config(cfg).table(coconut.steps, ["a b", "b c", "c d", "d e"])
    assert [(r["stage"], r["thoughts"], r["remaining"], r["first_step"]) for r in table] == [
        (0, 0, ["a b", "b c", "c d", "d e"], 0), (1, 1, ["b c", "c d", "d e"], 250), (2, 2, ["c d", "d e"], 500),
        (3, 3, ["d e"], 750)]
    assert "final_stage" not in {a.method: a for a in arms(dataclasses.replace(s, max_stage=None), "pointer_chase2")}[
        "pause"].settings


def test_demo_smoke_end_to_end_and_reuse(tmp_path) -> None:
    every = ("no_cot_sft", "cot_sft", "coconut", "pause", "codi", "soft_thinking")
    s = DemoSettings(tasks=("pointer_chase2",), k=2, d=32, layers=1, batch=8, sft_steps={"pointer_chase2": 2},
                     methods={"pointer_chase2": every},
                     stage_steps={"pointer_chase": 1, "pointer_chase2": 1}, codi_steps={"pointer_chase": 1,
                     "pointer_chase2": 1}, eval_questions=6, num_train=40)
    rows = run_demo(s, tmp_path, progress=False)
    methods = [r["method"] for r in rows]
    assert methods[:5] == ["no_cot_sft", "cot_sft", "coconut", "pause", "codi"]
    by = {(r["task"], r["method"]): r for r in rows}
    assert by[("pointer_chase2", "coconut")]["latent_steps"] == 2 and by[("pointer_chase2", "codi")]["latent_steps"] == 2
    assert all(0 <= r["accuracy"] <= 100 and r["decode_steps"] > 0 for r in rows)
    for name in ("report.md", "results.json", "accuracy_vs_steps.png"):
        assert (tmp_path / name).is_file()
    assert "| pointer_chase2 | coconut |" in (tmp_path / "report.md").read_text()
    summary = (tmp_path / "pointer_chase2" / "coconut" / "train_summary.json").read_text()
    again = run_demo(s, tmp_path, progress=False)  # everything reused: same numbers, training not redone
    assert [(r["method"], r["accuracy"], r["train_steps"]) for r in again] == [
        (r["method"], r["accuracy"], r["train_steps"]) for r in rows]
    assert (tmp_path / "pointer_chase2" / "coconut" / "train_summary.json").read_text() == summary
    assert format_table(rows).count("\n") == len(rows) + 1
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["k"] == 2
    # A changed setting retrains the arms it touches (and those started from them), never reusing stale runs.
    codi_cfg = tmp_path / "pointer_chase2" / "codi" / "train_config.yaml"
    assert yaml.safe_load(codi_cfg.read_text())["train"]["lr"] == s.codi_lr
    run_demo(dataclasses.replace(s, codi_lr=1e-4), tmp_path, progress=False)
    assert yaml.safe_load(codi_cfg.read_text())["train"]["lr"] == 1e-4
    assert (tmp_path / "pointer_chase2" / "coconut" / "train_summary.json").read_text() == summary
    run_demo(dataclasses.replace(s, codi_lr=1e-4, sft_steps={"pointer_chase2": 3}), tmp_path, progress=False)
    coconut_key = json.loads((tmp_path / "pointer_chase2" / "coconut" / "demo_arm.json").read_text())
    assert coconut_key["train"]["init_from"]["steps"] == 3  # coconut starts from the new cot_sft run, so it ran again
    # Fewer test questions: only the evaluations run again; the trained runs are reused.
    trained = (tmp_path / "pointer_chase2" / "coconut" / "train_summary.json").read_text()
    rows = run_demo(dataclasses.replace(s, codi_lr=1e-4, sft_steps={"pointer_chase2": 3}, eval_questions=4), tmp_path,
                    progress=False)
    assert (tmp_path / "pointer_chase2" / "coconut" / "train_summary.json").read_text() == trained
    metrics = json.loads((tmp_path / "pointer_chase2" / "coconut" / "metrics.json").read_text())
    assert metrics["questions"] == 4 and len(rows) == len(every)


@pytest.mark.slow
def test_demo_quick_cli(tmp_path) -> None:
    from latentcot.cli.main import main

    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert {r["method"] for r in data["rows"]} >= {"no_cot_sft", "cot_sft", "coconut", "pause", "codi"}


def test_plot_labels_never_overlap() -> None:
    from latentcot.demo import label_positions

    # cot_sft and soft_thinking at the same point, coconut and pause one step apart, codi alone
    points = [(11.0, 100.0), (11.0, 100.0), (8.0, 99.2), (8.0, 98.0), (8.0, 20.0), (3.0, 22.0)]
    dx, dy = 2.0, 7.0
    labels = label_positions(points, dx, dy)
    for i in range(len(labels)):
        for j in range(i):
            (xi, yi), (xj, yj) = labels[i], labels[j]
            assert abs(xi - xj) >= dx or abs(yi - yj) >= dy, (i, j)
    assert labels[5][1] == 22.0  # a label with room stays next to its point


def test_worker_progress_follows_the_arms_logs(tmp_path) -> None:
    from latentcot.demo import Arm, ArmBars

    s = DemoSettings(eval_questions=10)
    key = ("pointer_chase", "cot_sft")
    bars = ArmBars(s, tmp_path, {key: Arm("cot_sft", {}, 50)}, enabled=True)
    bars.start(key)
    run = tmp_path / "pointer_chase" / "cot_sft"
    run.mkdir(parents=True)
    (run / "train_log.jsonl").write_text('{"step": 5, "loss": 1.0}\n{"step": 10, "loss": 0.5}\n{"step": 10, "eval": {}}\n')
    bars.update()
    assert bars.bars[key].n == 10
    (run / "samples.jsonl").write_text('{"id": "a"}\n{"id": "b"}\n')
    (run / "train_log.jsonl").write_text('{"step": 50, "loss": 0.1}\n')
    bars.update()
    assert bars.bars[key].n == 52
    bars.close()
    assert not bars.bars
