"""The command line in-process: every subcommand's --help, eval/train/resume, one-line errors with exit 2."""

from __future__ import annotations

import json

import pytest

from latentcot.cli.main import SUBCOMMANDS, main


@pytest.mark.parametrize("cmd", list(SUBCOMMANDS))
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: latentcot" in capsys.readouterr().out


def test_python_dash_m_entry_point_exists():
    import latentcot.__main__  # noqa: F401


def test_ls(capsys):
    assert main(["ls", "methods"]) == 0
    assert "cot" in capsys.readouterr().out
    assert main(["ls", "models"]) == 0
    out = capsys.readouterr().out
    assert "tiny-gpt2" in out and "tiny-llama" in out


def test_eval_writes_outputs_and_resumes(tmp_path, shared_data, capsys):
    out = tmp_path / "run"
    args = ["eval", "--method", "cot", "--model", "tiny-llama", "--task", "gsm8k", "--limit", "3", "--out", str(out),
            "--data-dir", str(shared_data), "--no-progress", "max_new_tokens=8", "batch_size=2"]
    assert main(args) == 0
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 3
    rec = json.loads(lines[0])
    for key in ("id", "output", "pred_strict", "pred_flexible", "correct_strict", "correct_flexible", "decode_steps",
                "generated_tokens", "prefill_tokens", "seconds"):
        assert key in rec
    assert (out / "config.yaml").is_file() and json.loads((out / "metrics.json").read_text())["questions"] == 3
    # a kill mid-run leaves a torn line: the re-run drops it and redoes that question only
    (out / "samples.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    assert main(args) == 0
    again = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    before = [json.loads(x) for x in lines]
    assert [{**r, "seconds": 0} for r in again] == [{**r, "seconds": 0} for r in before]
    assert main(args[:-2] + ["max_new_tokens=9", "batch_size=2"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_train_then_eval_with_weights(tmp_path, capsys):
    out = tmp_path / "t"
    # settings may sit before, between and after the options
    args = ["train", "max_steps=3", "--method", "cot_sft", "--model", "tiny-gpt2", "train_batch_size=2", "--task",
            "pointer_chase", "--out", str(out), "--no-progress", "lr=1e-3"]
    assert main(args) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["lr"] == pytest.approx(1e-3)
    assert (out / "trainable.safetensors").is_file()
    assert main(["eval", "--method", "cot_sft", "--model", "tiny-gpt2", "--task", "pointer_chase", "--limit", "2",
                 "--out", str(tmp_path / "e"), "--no-progress", f"weights={out}", "max_new_tokens=4"]) == 0


def test_a_finished_training_run_again_keeps_its_summary(tmp_path, capsys):
    """Re-running a finished training resumes at its last step and trains nothing: train_summary.json (loss, lr,
    grad_norm, epoch) stays as the run wrote it, and the command prints the same line."""
    out = tmp_path / "t"
    args = ["train", "--method", "cot_sft", "--model", "tiny-gpt2", "--task", "pointer_chase", "--out", str(out),
            "--no-progress", "max_steps=2", "train_batch_size=2"]
    assert main(args) == 0
    first, said = (out / "train_summary.json").read_text(), capsys.readouterr().out
    assert {"loss", "lr", "grad_norm", "epoch"} <= set(json.loads(first)) and "final loss" in said
    assert main(args) == 0
    assert (out / "train_summary.json").read_text() == first and capsys.readouterr().out == said
    (out / "train_summary.json").unlink()  # killed after the last checkpoint, before the summary: rebuilt from it
    assert main(args) == 0
    again = json.loads((out / "train_summary.json").read_text())
    assert {k: v for k, v in again.items() if k not in ("seconds", "peak_rss_mib")} == {
        k: v for k, v in json.loads(first).items() if k not in ("seconds", "peak_rss_mib")}


def test_eval_with_weights_of_other_settings_names_the_run_s_settings(tmp_path, capsys):
    """Weights trained with other structure settings (a LoRA rank, here) do not fit the method built for the
    evaluation: the one-line error names the settings the run was trained with (from its train_config.yaml)."""
    out = tmp_path / "t"
    assert main(["train", "--method", "lora", "--model", "tiny-llama", "--task", "pointer_chase", "--out", str(out),
                 "--no-progress", "max_steps=1", "train_batch_size=2", "lora_r=2"]) == 0
    assert main(["eval", "--method", "lora", "--model", "tiny-llama", "--task", "pointer_chase", "--limit", "1",
                 "--out", str(tmp_path / "e"), "--no-progress", f"weights={out}", "lora_r=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained with lora_r=2" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "e" / "samples.jsonl").exists()
    assert main(["eval", "--method", "lora", "--model", "tiny-llama", "--task", "pointer_chase", "--limit", "1",
                 "--out", str(tmp_path / "e2"), "--no-progress", f"weights={out}", "lora_r=2",
                 "max_new_tokens=2"]) == 0
    # weights of another method: the error names the method that run trained
    assert main(["eval", "--method", "cot_sft", "--model", "tiny-llama", "--task", "pointer_chase", "--limit", "1",
                 "--out", str(tmp_path / "e4"), "--no-progress", f"weights={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "that run trained method 'lora': evaluate its weights with --method lora" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "e4" / "samples.jsonl").exists()
    (out / "train_config.yaml").write_text("method: [damaged\n")  # no hint then, the weights' own error stands
    assert main(["eval", "--method", "lora", "--model", "tiny-llama", "--task", "pointer_chase", "--limit", "1",
                 "--out", str(tmp_path / "e3"), "--no-progress", f"weights={out}", "lora_r=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not fit" in err and "that run was trained with" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("method,says", [("rloo", "evaluates its start model"), ("cot_sft", "evaluates its start model"),
                                         ("pause", "they are untrained")])
def test_eval_without_weights_says_what_it_evaluated(tmp_path, caplog, method, says):
    """Without weights=, a method whose trainable parts start as the model itself (rloo, the sft family) evaluates
    its start model, which is a base evaluation; one with new parts (pause tokens) evaluates untrained parts. The
    warning says which, in the log and in metrics.json."""
    out = tmp_path / "e"
    assert main(["eval", "--method", method, "--model", "tiny-gpt2", "--task", "pointer_chase", "--limit", "1",
                 "--out", str(out), "--no-progress", "max_new_tokens=2"]) == 0
    warnings = json.loads((out / "metrics.json").read_text())["warnings"]
    assert len(warnings) == 1 and says in warnings[0] and method in warnings[0]
    assert says in caplog.text


def test_library_deprecations_are_not_shown_to_users(tmp_path) -> None:
    """PEFT reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model: a FutureWarning the
    user cannot act on, printed in the middle of `latentcot train --method lora` before the CLI filtered it."""
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["train", "--method", "lora", "--model", "tiny-llama", "--task", "pointer_chase", "--out",
                     str(tmp_path / "t"), "--no-progress", "max_steps=1", "train_batch_size=2"]) == 0
    shown = [str(w.message) for w in seen if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert shown == []
    with warnings.catch_warnings(record=True) as seen:  # GPT-2's Conv1D layers: PEFT's note on fan_in_fan_out
        warnings.simplefilter("always")
        assert main(["train", "--method", "lora", "--model", "tiny-gpt2", "--task", "pointer_chase", "--out",
                     str(tmp_path / "g"), "--no-progress", "max_steps=1", "train_batch_size=2"]) == 0
    assert [str(w.message) for w in seen if "fan_in_fan_out" in str(w.message)] == []


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["eval", "--method", "nope"], "unknown method"),
        (["eval", "--method", "cot", "--model", "tiny-lama"], "did you mean 'tiny-llama'"),
        (["eval", "--method", "cot", "--task", "gsm9k"], "unknown task"),
        (["eval", "--method", "cot", "temperature=-1"], "temperature"),
        (["eval", "--model", "tiny-gpt2", "--method", "cot_sft", "weights=/nonexistent/w.safetensors"], "does not exist"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(argv, needle, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_unknown_arguments_are_still_refused(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--method", "cot", "--bogus", "x=1"])
    assert e.value.code == 2 and "--bogus" in capsys.readouterr().err


def test_bad_weights_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"not safetensors at all")
    assert main(["eval", "--model", "tiny-gpt2", "--method", "cot_sft", f"weights={bad}", "--out", str(tmp_path / "o")]) == 2
    assert "safetensors" in capsys.readouterr().err


def test_transformers_below_the_floor_is_one_line_exit_2(monkeypatch, capsys) -> None:
    from latentcot.cli.main import main
    from latentcot.errors import ConfigError
    from latentcot.models import compat

    with pytest.raises(ConfigError, match="transformers 4.40.2 is older than .*4.56.0"):
        compat.check_transformers("4.40.2")
    for ok in ("4.56.0", "4.57.1", "5.0.0rc1", "5.24.0", "10.0"):
        compat.check_transformers(ok)
    monkeypatch.setattr(compat.metadata, "version", lambda name: "4.40.2")
    assert main(["ls", "methods"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "transformers 4.40.2" in err[0] and "4.56.0" in err[0]


def test_kv_cache_goes_by_the_installed_versions_name_without_warnings(recwarn) -> None:
    """No deprecation warning from any model call of a cached decode (transformers 5.24 renamed past_key_values)."""
    import warnings

    from latentcot.decoding.engine import Engine
    from latentcot.decoding.sampling import GenerationConfig
    from latentcot.models.backbone import Backbone
    from latentcot.models.loading import load_model
    from latentcot.models.splice import splice, tokens

    for alias in ("tiny-gpt2", "tiny-llama"):
        bb = Backbone(*load_model(alias), alias)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any warning fails the test
            eng = Engine(bb)
            state = eng.prefill(splice([[tokens(bb.encode("ab"))]], bb.embed, 0, "left"))
            eng.generate(state, GenerationConfig(max_new_tokens=3))
    from importlib import metadata

    from latentcot.models.compat import _version_tuple, cache_name

    new = _version_tuple(metadata.version("transformers")) >= (5, 24)
    assert cache_name() == ("cache" if new else "past_key_values")  # reading the other name logs a warning


def test_train_limit_option_limits_the_training_examples(tmp_path):
    """`latentcot train --limit N` trains on the first N training examples: the setting train_limit=N."""
    from latentcot.config import load_yaml

    base = ["train", "--method", "cot_sft", "--model", "tiny-gpt2", "--task", "pointer_chase", "max_steps=1",
            "train_batch_size=2", "--no-progress"]
    assert main([*base, "--limit", "3", "--out", str(tmp_path / "a")]) == 0
    assert load_yaml(str(tmp_path / "a" / "train_config.yaml"))["train"]["train_limit"] == 3
    assert main([*base, "train_limit=3", "--out", str(tmp_path / "b")]) == 0
    a, b = (tmp_path / d / "trainable.safetensors" for d in "ab")
    assert a.read_bytes() == b.read_bytes()
