"""Sharded evaluation: shards merged == a single-process run sample for sample (in-process and with two real
processes), a killed shard resumes without redoing finished samples, a changed shard count is refused."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import latentcot.eval.runner as runner
from latentcot.cli.main import main

BASE = ["eval", "--method", "cot", "--model", "tiny-llama", "--task", "pointer_chase", "--limit", "5", "--no-progress",
        "max_new_tokens=6", "temperature=0.8", "num_samples=2", "seeds=0,1"]
TIMING = ("seconds", "seconds_per_question", "questions_per_second", "tokens_per_second")


def _records(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in (out / "samples.jsonl").read_text().splitlines()]


def _metrics(out: Path) -> dict:
    m = json.loads((out / "metrics.json").read_text())
    return {k: v for k, v in m.items() if k not in TIMING}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(BASE + ["--out", str(out), "batch_size=3"]) == 0
    return out


def test_sharded_in_one_process_equals_single(single, tmp_path):
    out = tmp_path / "sharded"
    assert main(BASE + ["--out", str(out), "num_shards=3", "batch_size=2"]) == 0  # every shard in turn, then merge
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"shard-{i}-of-3" for i in range(3)]
    assert len(_records(single)) == 5 * 2 * 2
    assert _records(out) == _records(single)
    assert _metrics(out) == _metrics(single)


@pytest.mark.slow  # ~30 s of process start-up; the in-process test above checks the same merge in the default suite
def test_two_processes_equal_single(single, tmp_path):
    """Two real processes, one shard each (as a SLURM array or two nodes would run them), started together."""
    out = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "latentcot", *BASE, "--out", str(out), "num_shards=2", f"shard={i}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    assert _records(out) == _records(single)
    assert _metrics(out) == _metrics(single)


def test_killed_shard_resumes_without_redoing_work(single, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    real = runner.generate_batched
    rows: list[int] = []

    def dies_on_third_batch(method, examples, *a, **k):
        if len(rows) == 2:
            raise KeyboardInterrupt  # a kill between two flushed batches
        rows.append(len(examples))
        return real(method, examples, *a, **k)

    monkeypatch.setattr(runner, "generate_batched", dies_on_third_batch)
    # static batches (refill=false): the kill lands between two generate_batched calls
    assert main(BASE + ["--out", str(out), "num_shards=2", "batch_size=2", "refill=false"]) == 130
    assert not (out / "samples.jsonl").exists()  # nothing merged from an unfinished run
    done = sum(rows)
    monkeypatch.setattr(runner, "generate_batched", lambda m, ex, *a, **k: rows.append(len(ex)) or real(m, ex, *a, **k))
    assert main(BASE + ["--out", str(out), "num_shards=2", "batch_size=2", "refill=false"]) == 0
    assert sum(rows) - done == len(_records(single)) - done  # only what was missing was generated
    assert _records(out) == _records(single)


def test_changed_shard_count_is_refused_and_nothing_is_touched(single, tmp_path, capsys):
    out = tmp_path / "count"
    assert main(BASE + ["--out", str(out), "num_shards=2"]) == 0
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    for bad in (["num_shards=3"], ["num_shards=3", "shard=0"]):
        assert main(BASE + ["--out", str(out), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert "num_shards" in err and len(err.splitlines()) == 1
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()} == digest
    assert main(BASE + ["--out", str(single), "num_shards=2"]) == 2  # a single-process run resumed sharded
    assert "num_shards" in capsys.readouterr().err


@pytest.mark.parametrize("env,settings,needle", [
    ({"RANK": "1", "WORLD_SIZE": "2"}, ["num_shards=3"], "processes were launched"),
    ({}, ["num_shards=2", "shard=2"], "shard: must be in [0, num_shards=2)"),
])
def test_bad_shard_settings(env, settings, needle, tmp_path, capsys, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(BASE + ["--out", str(tmp_path / "bad"), *settings]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
