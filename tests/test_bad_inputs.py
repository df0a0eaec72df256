"""A corpus of bad inputs across the command line, YAML, data files, checkpoints/weights and output paths.

Each case runs `latentcot` in-process and must end with exit status 2, exactly one line on stderr naming the
problem (no traceback), and the working directory byte for byte as it was: nothing written, nothing removed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latentcot.cli.main import main

RUN = ["--model", "tiny-gpt2", "--task", "pointer_chase", "--no-progress"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Files the cases point at: configs, data, a finished training run, a finished evaluation, models."""
    w = tmp_path_factory.mktemp("bad")
    (w / "good.yaml").write_text("method: cot\nmax_new_tokens: 4\n")
    (w / "broken.yaml").write_text("method: cot\nmax_new_tokens: [4\n")
    (w / "list.yaml").write_text("- method\n- cot\n")
    (w / "unknown.yaml").write_text("method: cot\nmax_new_tokns: 4\n")
    (w / "negative.yaml").write_text("method: cot_sft\ntrain:\n  max_steps: -5\n")
    (w / "badtype.yaml").write_text("method: cot\ngeneration:\n  temperature: hot\n")
    (w / "afile").write_text("x")
    (w / "not.safetensors").write_bytes(b"not safetensors at all")
    (w / "emptydir").mkdir()
    (w / "modeldir").mkdir()
    (w / "modeldir" / "config.json").write_text("{}")
    good = {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"}
    for name, row in (("badjson", None), ("emptyq", {**good, "question": "  "}), ("wordgold", {**good, "answer": "#### eighteen"})):
        d = w / name / "gsm8k"
        d.mkdir(parents=True)
        lines = [json.dumps(good)] * 2 + (["{not json"] if row is None else [json.dumps(row)])
        (d / "test.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["train", "--method", "cot_sft", *RUN, "--out", str(w / "trained"), "max_steps=2", "lr=1e-3",
                 "train_batch_size=2", "save_every=1"]) == 0
    assert main(["eval", "--method", "cot", *RUN, "--limit", "2", "--out", str(w / "evaluated"), "max_new_tokens=4"]) == 0
    shutil.copytree(w / "evaluated", w / "cutconfig")
    text = (w / "cutconfig" / "config.yaml").read_text()
    cut = text.rfind("\n", 0, len(text) // 2) + 1  # at a line start: the damage never merges into a value
    (w / "cutconfig" / "config.yaml").write_text(text[:cut] + "  - [unclosed\n")
    shutil.copytree(w / "trained", w / "nostate")
    (w / "nostate" / "checkpoint" / "state.json").unlink()
    return w


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


# (argv, a piece of the one-line message). "{w}" is the work directory.
CASES = [
    # command line
    (["eval", *RUN], "needs a method"),
    (["train", *RUN], "needs a method"),
    (["eval", "--method", "nope", *RUN], "unknown method"),
    (["eval", "--method", "cot", "--model", "tiny-lama", "--task", "pointer_chase"], "tiny-llama"),
    (["eval", "--method", "cot", "--model", "tiny-gpt2", "--task", "gsm9k"], "unknown task"),
    (["eval", "--method", "cot", *RUN, "temperature=-1"], "temperature"),
    (["eval", "--method", "cot", *RUN, "max_new_tokens=0"], "max_new_tokens"),
    (["eval", "--method", "cot", *RUN, "num_samples=100000000"], "num_samples: at most"),
    (["eval", "--method", "cot", *RUN, "num_samples=-1"], "num_samples"),
    (["eval", "--method", "cot", *RUN, "--limit", "-1"], "limit"),
    (["eval", "--method", "cot", *RUN, "batch_size=0"], "batch_size"),
    (["eval", "--method", "cot", *RUN, "top_p=2"], "top_p"),
    (["eval", "--method", "cot", *RUN, "seeds=a,b"], "seeds"),
    (["eval", "--method", "cot", *RUN, "seeds=1,2,1"], "seeds: seed 1 is given twice"),
    (["eval", "--method", "cot", *RUN, "seed=-3"], "seed"),
    (["eval", "--method", "cot", *RUN, "max_new_tokns=4"], "unknown config key"),
    (["eval", "--method", "cot", *RUN, "oops"], "expected key=value"),
    (["eval", "--method", "cot", *RUN, "device=tpu"], "device"),
    (["eval", "--method", "coconut", *RUN, "thought_stride=0"], "thought_stride"),
    (["eval", "--method", "coconut", *RUN, "thought_stride=two"], "thought_stride"),
    (["eval", "--method", "cot", *RUN, "dtype=float8"], "dtype"),
    (["train", "--method", "cot_sft", *RUN, "max_steps=-5"], "max_steps: must be >= 0"),
    (["train", "--method", "cot_sft", *RUN, "save_every=-3"], "save_every: must be >= 0"),
    (["train", "--method", "cot_sft", *RUN, "lr=nan"], "lr"),
    (["train", "--method", "cot_sft", *RUN, "grad_accum=0"], "grad_accum"),
    (["train", "--method", "cot", *RUN], "training-free"),
    (["eval", "--method", "cot", *RUN, "max_new_tokens=5000"], "positions"),
    (["eval", "--method", "codi", *RUN, "num_thoughts=100000"], "num_thoughts"),
    # YAML files
    (["eval", *RUN, "--config", "{w}/missing.yaml"], "does not exist"),
    (["eval", *RUN, "--config", "{w}/broken.yaml"], "not valid YAML"),
    (["eval", *RUN, "--config", "{w}/list.yaml"], "mapping"),
    (["eval", *RUN, "--config", "{w}/unknown.yaml"], "max_new_tokns"),
    (["train", *RUN, "--config", "{w}/negative.yaml"], "max_steps"),
    (["eval", *RUN, "--config", "{w}/badtype.yaml"], "temperature"),
    (["eval", "--method", "cot", *RUN, "--limit", "2", "--out", "{w}/cutconfig", "max_new_tokens=4"], "damaged"),
    # data files
    (["eval", "--method", "cot", "--model", "tiny-gpt2", "--task", "gsm8k", "--data-dir", "{w}/badjson"], "line 3"),
    (["eval", "--method", "cot", "--model", "tiny-gpt2", "--task", "gsm8k", "--data-dir", "{w}/emptyq"], "empty question"),
    (["eval", "--method", "cot", "--model", "tiny-gpt2", "--task", "gsm8k", "--data-dir", "{w}/wordgold"], "eighteen"),
    (["eval", "--method", "cot", "--model", "tiny-gpt2", "--task", "gsm8k", "--data-dir", "{w}/nowhere"], "no benchmark data"),
    (["eval", "--method", "cot", *RUN, "split=nope"], "no split"),
    (["eval", "--method", "cot", *RUN, "offset=100000000"], "empty"),
    (["demo", "--tasks", "pointer_chase2,nosuch", "--out", "{w}/demo"], "unknown task 'nosuch'"),
    # settings a method checks only on its first batch: the config written before it is removed again
    (["eval", "--method", "assist_cot", *RUN, "--limit", "1", "hint_tokens=100000"], "longer than the model's context"),
    (["train", "--method", "softcot", *RUN, "max_steps=1", "num_thoughts_train=3000"], "assistant prompt"),
    (["train", "--method", "codi", *RUN, "max_steps=1", "distill_anchor=zzzz"], "distill_anchor"),
    # checkpoints and weights
    (["eval", "--method", "cot_sft", *RUN, "weights={w}/nowhere.safetensors"], "does not exist"),
    (["eval", "--method", "cot_sft", *RUN, "weights={w}/not.safetensors"], "safetensors"),
    (["eval", "--method", "cot_sft", *RUN, "weights={w}/emptydir"], "does not exist"),
    (["eval", "--method", "cot_sft", "--model", "tiny-llama", "--task", "pointer_chase", "weights={w}/trained"], "trained"),
    (["train", "--method", "cot_sft", *RUN, "--out", "{w}/trained", "max_steps=2", "lr=5e-2", "train_batch_size=2"],
     "train.lr"),
    (["train", "--method", "cot_sft", *RUN, "--out", "{w}/trained", "max_steps=2", "lr=1e-3", "train_batch_size=2",
      "seed=7"], "'seed' is ambiguous"),
    (["train", "--method", "cot_sft", *RUN, "--out", "{w}/trained", "max_steps=2", "lr=1e-3", "train_batch_size=2",
      "run.seed=7"], "set run.seed=0 to resume"),
    (["train", "--method", "cot_sft", *RUN, "max_steps=2", "adam_beta1=1.0"], "adam_beta1"),
    (["train", "--method", "cot_sft", *RUN, "max_steps=2", "weight_decay=-1"], "weight_decay: must be >= 0"),
    # LoRA settings (PEFT would refuse them only once the model is loaded, or take a bad one silently)
    (["train", "--method", "lora", *RUN, "max_steps=2", "lora_dropout=2"], "lora_dropout: must be in [0, 1)"),
    (["eval", "--method", "lora", *RUN, "lora_dropout=-0.5"], "lora_dropout"),
    (["train", "--method", "lora", *RUN, "max_steps=2", "lora_alpha=0"], "lora_alpha: must be > 0"),
    (["eval", "--method", "softcot", *RUN, "lora_dropout=3", "assistant_lora_r=2"], "lora_dropout"),
    (["eval", "--method", "rloo", *RUN, "lora_dropout=1", "lora_r=2"], "lora_dropout"),
    (["train", "--method", "lora", *RUN, "max_steps=2", "lora_r=0"], "lora_r: must be >= 1"),
    (["train", "--method", "lora", *RUN, "max_steps=2", "lora_targets=nosuchmodule"],
     "lora_targets: nosuchmodule names no module of model tiny-gpt2"),
    (["eval", "--method", "softcot", *RUN, "assistant_lora_r=2", "lora_targets=ln_1"], "lora_targets"),
    (["train", "--method", "cot_sft", *RUN, "--out", "{w}/nostate", "max_steps=2", "lr=1e-3", "train_batch_size=2"],
     "state.json"),
    (["eval", "--method", "cot", *RUN, "--limit", "2", "--out", "{w}/evaluated", "max_new_tokens=5"], "max_new_tokens"),
    # models
    (["eval", "--method", "cot", "--model", "{w}/emptydir", "--task", "pointer_chase"], "no config.json"),
    (["eval", "--method", "cot", "--model", "{w}/modeldir", "--task", "pointer_chase"], "safetensors"),
    # output paths
    (["eval", "--method", "cot", *RUN, "--out", "{w}/afile"], "existing file"),
    (["eval", "--method", "cot", *RUN, "--out", "{w}/afile/run"], "is a file"),
    (["train", "--method", "cot_sft", *RUN, "--out", "{w}/afile"], "existing file"),
    (["report", "{w}/evaluated", "--out", "{w}/afile/report"], "afile"),
    (["score", "--task", "pointer_chase", "{w}/nowhere.jsonl", "--out", "{w}/x"], "nowhere.jsonl"),
]


@pytest.mark.parametrize("argv,needle", CASES, ids=[f"{i:02d}-{c[0][0]}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, needle, work, capsys, monkeypatch):
    monkeypatch.chdir(work)  # a default output directory would land here and be caught
    argv = [a.replace("{w}", str(work)) for a in argv]
    if "--out" not in argv and argv[0] in ("eval", "train"):
        argv += ["--out", str(work / "fresh")]
    before = _snapshot(work)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert needle.replace("{w}", str(work)) in err, err
    assert _snapshot(work) == before, "a failed run changed the working directory"


def test_device_that_is_not_there(work, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = work / "fresh"
    assert main(["eval", "--method", "cot", *RUN, "device=cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU" in err and not out.exists()


def test_broken_pipe_is_one_line(capsys, monkeypatch):
    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", Closed())
    assert main(["ls", "tasks"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken pipe" in err


def test_ctrl_c_is_one_line_and_130_in_the_cli_and_in_scripts(capsys, monkeypatch):
    """Ctrl-C: the CLI (whose runs resume) says so in one line and returns 130; a script run through
    `cli.common.run_script` exits 130 with one line, naming itself, and says "resume" only when asked."""
    from latentcot.cli import ls_cmd
    from latentcot.cli.common import run_script

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ls_cmd, "run", stop)
    assert main(["ls", "tasks"]) == 130
    assert capsys.readouterr().err.strip() == "latentcot ls: interrupted; re-run the same command to resume"
    monkeypatch.setattr(sys, "argv", ["bench/some_bench.py"])
    for resumable, line in ((False, "some_bench.py: interrupted"),
                            (True, "some_bench.py: interrupted; re-run the same command to resume")):
        with pytest.raises(SystemExit) as e:
            run_script(stop, resumable=resumable)
        assert e.value.code == 130 and capsys.readouterr().err.strip() == line


def test_corpus_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("argv, says", [
    (["bench/soft_step.py", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["bench/rl.py", "--model", "no/such/dir"], "model 'no/such/dir'"),
    (["bench/throughput.py", "--batch-sizes", "8,x"], "argument --batch-sizes: expected whole numbers >= 1"),
    (["bench/soft_step.py", "--batch", "0"], "argument --batch: expected a whole number >= 1, got 0"),
    (["bench/decode.py", "--shape", "64,2"], "argument --shape: expected three numbers"),
    (["bench/coconut.py", "--demo-dir", "no/such/dir"], "--demo-dir no/such/dir: no such folder"),
    (["bench/prepack.py", "--rows", "8,0"], "argument --rows: expected whole numbers >= 1"),
])
def test_a_bench_given_a_bad_setting_says_so_in_one_line_exit_2(argv, says):
    """A bench's bad input (an unknown model, a bad number) is one error line and exit 2, as in the CLI (argparse
    prints its usage above its line), not a traceback after the load check."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root / "bench")])}
    proc = subprocess.run([sys.executable, *argv], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{Path(argv[0]).name}: error: ") and says in last, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
@pytest.mark.parametrize("argv", [
    ["bench/vllm_decode.py"], ["bench/throughput.py", "--vllm", "on"],
    ["bench/throughput.py", "--vllm-python", "no/such/python"],
    ["bench/throughput.py", "--vllm-python", sys.executable],
])
def test_a_bench_asked_for_vllm_without_it_is_one_line_exit_2(argv):
    """Issue 14's bad input: a benchmark asked for vLLM where it does not import says so in one line, before any
    model is loaded or measured."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root / "bench")])}
    proc = subprocess.run([sys.executable, *argv], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "vllm" in lines[0].lower() and "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("argv, says", [
    (["recipes/codi_pointer_chase.py", "--quick", "--lr", "-1"], "pointer_chase/codi: lr: must be > 0, got -1.0"),
    (["recipes/codi_pointer_chase.py", "--eval-every", "-3"], "argument --eval-every: expected a whole number >= 0"),
    (["recipes/demo_study.py", "--stage-lr", "0"], "pointer_chase2/coconut: lr: must be > 0, got 0.0"),
    (["recipes/demo_study.py", "--methods", "cot_sft,bogus"], "--methods: unknown arm(s) ['bogus']"),
])
def test_the_demo_recipes_check_every_arm_before_the_first_trains(argv, says, tmp_path):
    """The CODI and demo-study recipes: a bad setting for a later arm is one line and exit 2 before the start model
    trains, and nothing is written."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, *argv, "--out", str(out)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{Path(argv[0]).name}: error: ") and says in last, proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
