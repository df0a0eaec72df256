"""Crash safety by fault injection: a run killed at any file-system call resumes to the uninterrupted result.

Every write, fsync, rename and unlink of a run goes through the primitives of `latentcot.atomic`. `Faults`
wraps them, counts the calls, and at call number k "kills" the run: that call fails (a write writes half its
bytes first) and so does every later one, as if the process were gone. The test then resumes with a fresh
method, exactly as a new process would, and compares the outcome bit for bit with an uninterrupted run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from latentcot import atomic
from latentcot.decoding.sampling import GenerationConfig
from latentcot.errors import CheckpointError
from latentcot.eval.runner import REJECTED, SAMPLES, evaluate, read_samples
from latentcot.methods import build_method
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.training import loop
from latentcot.training.checkpoint import repair_checkpoint
from latentcot.training.loop import TrainConfig, train


class Killed(BaseException):
    """A kill: not an Exception, so no `except Exception` in the code under test can swallow it."""


class Faults:
    """Counts the file-system primitives; from call `at` on, every one of them fails (the process is dead)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: int | None = None) -> None:
        self.calls = 0
        self.at = at
        self.log: list[str] = []
        for name in ("_write", "_fsync", "_replace", "_unlink", "_rmdir"):
            monkeypatch.setattr(atomic, name, self._wrap(name, getattr(atomic, name)))

    def _wrap(self, name, real):
        def call(*args):
            self.calls += 1
            self.log.append(name)
            if self.at is not None and self.calls >= self.at:
                if name == "_write" and self.calls == self.at:
                    fd, data = args
                    real(fd, bytes(data)[: len(data) // 2])  # a torn write: half the bytes reach the disk
                raise Killed(f"killed at call {self.calls} ({name})")
            return real(*args)

        return call


def _method():
    torch.manual_seed(0)
    model, tok = load_model("tiny-gpt2")
    return build_method("cot_sft", {}, Backbone(model, tok, "tiny-gpt2"))


CFG = TrainConfig(lr=1e-3, max_steps=4, train_batch_size=2, grad_accum=1, save_every=1, log_every=1, warmup_steps=1)


def _log_rows(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "peak_rss_mib")} for r in rows]


def _train(out: Path, task, examples):
    return train(_method(), task, examples, CFG, out, seed=3, progress=False)


def test_training_killed_at_every_file_operation_resumes_bit_identical(tmp_path, arith_task, monkeypatch):
    examples = arith_task.load("train")
    ref = tmp_path / "ref"
    saves: list[tuple[int, int]] = []  # (first, last) call number of each save_checkpoint
    with monkeypatch.context() as m:
        counter = Faults(m)
        real_save = loop.save_checkpoint

        def save(*args, **kwargs):
            first = counter.calls + 1
            real_save(*args, **kwargs)
            saves.append((first, counter.calls))

        m.setattr(loop, "save_checkpoint", save)
        _train(ref, arith_task, examples)
    total = counter.calls
    assert total > 40 and counter.log.count("_replace") >= 2 * CFG.max_steps  # every save renames at least twice
    want_weights = (ref / "trainable.safetensors").read_bytes()
    want_log = _log_rows(ref)
    assert [r["step"] for r in want_log] == [1, 2, 3, 4]
    # every call of the second save (the first that replaces a checkpoint), then a spread over all the others
    assert len(saves) == CFG.max_steps
    inside = set(range(saves[1][0], saves[1][1] + 1))
    points = sorted(inside | set(random.Random(0).sample(sorted(set(range(1, total + 1)) - inside), 12)))
    for k in points:
        out = tmp_path / f"k{k}"
        with monkeypatch.context() as m:
            Faults(m, at=k)
            with pytest.raises(Killed):
                _train(out, arith_task, examples)
        _train(out, arith_task, examples)  # the resumed process
        assert (out / "trainable.safetensors").read_bytes() == want_weights, f"kill at call {k}"
        assert _log_rows(out) == want_log, f"kill at call {k}: the log repeats or loses a step"
        left = sorted(p.name for p in out.iterdir())
        assert left == sorted(p.name for p in ref.iterdir()), f"kill at call {k} left {left}"


def test_a_kill_while_resuming_from_a_kill_still_resumes(tmp_path, arith_task, monkeypatch):
    """Two kills in a row (the second during the repair or the resumed training) still end bit-identical."""
    examples = arith_task.load("train")
    ref = tmp_path / "ref"
    _train(ref, arith_task, examples)
    want = (ref / "trainable.safetensors").read_bytes()
    for first, second in ((20, 1), (22, 3), (25, 9), (31, 2)):
        out = tmp_path / f"k{first}-{second}"
        for at in (first, second):
            with monkeypatch.context() as m:
                Faults(m, at=at)
                with pytest.raises(Killed):
                    _train(out, arith_task, examples)
        _train(out, arith_task, examples)
        assert (out / "trainable.safetensors").read_bytes() == want, (first, second)


def test_repair_restores_the_newest_complete_checkpoint(tmp_path, arith_task):
    """The states the issue met by hand: no checkpoint/ but a set-aside old one (the run must not start over),
    and a half-deleted checkpoint.old beside a good checkpoint (it must not block the next save)."""
    examples = arith_task.load("train")
    out = tmp_path / "run"
    train(_method(), arith_task, examples, CFG, out, seed=3, progress=False, stop_after=2)
    ckpt = out / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    ckpt.rename(out / "checkpoint.old")  # killed right after setting the old one aside
    assert repair_checkpoint(ckpt) and json.loads((ckpt / "state.json").read_text()) == state
    assert not (out / "checkpoint.old").exists()
    half = out / "checkpoint.old"  # killed while deleting the old one
    half.mkdir()
    (half / "rng.safetensors").write_bytes(b"x")
    summary = train(_method(), arith_task, examples, CFG, out, seed=3, progress=False)
    assert summary["steps"] == CFG.max_steps and not half.exists()
    (ckpt / "state.json").unlink()  # damaged by hand: an error naming it, never a silent restart from step 0
    with pytest.raises(CheckpointError, match="state.json"):
        train(_method(), arith_task, examples, CFG, out, seed=3, progress=False)


def _eval(out: Path, task, method):
    gen = GenerationConfig(max_new_tokens=6, temperature=0.8, num_samples=2)
    return evaluate(method, task, task.load("test")[:5], gen, [0, 1], out, batch_size=3, progress=False)


def _records(out: Path) -> list[dict]:
    recs = [{k: v for k, v in r.items() if k != "seconds"} for r in read_samples(out / SAMPLES)]
    return sorted(recs, key=lambda r: (r["id"], r["seed"], r["sample"]))


def _metrics(out: Path) -> dict:
    m = json.loads((out / "metrics.json").read_text())
    return {k: v for k, v in m.items() if "second" not in k}


def test_evaluation_killed_at_every_file_operation_resumes_identical(tmp_path, arith_task, monkeypatch):
    model, tok = load_model("tiny-gpt2")
    method = build_method("cot", {}, Backbone(model, tok, "tiny-gpt2"))
    ref = tmp_path / "ref"
    with monkeypatch.context() as m:
        counter = Faults(m)
        _eval(ref, arith_task, method)
    want, want_metrics = _records(ref), _metrics(ref)
    assert len(want) == 5 * 2 * 2
    for k in range(1, counter.calls + 1):
        out = tmp_path / f"k{k}"
        with monkeypatch.context() as m:
            Faults(m, at=k)
            with pytest.raises(Killed):
                _eval(out, arith_task, method)
        _eval(out, arith_task, method)
        assert _records(out) == want, f"kill at call {k}"
        assert _metrics(out) == want_metrics, f"kill at call {k}"
        lines = (out / SAMPLES).read_text().splitlines()
        assert len(lines) == len(want), f"kill at call {k}: a sample is repeated or lost"
        assert not [p for p in out.iterdir() if atomic.TMP_MARK in p.name], f"kill at call {k} left a temporary"


def test_a_bad_line_in_the_middle_is_set_aside_not_used_to_truncate(tmp_path, arith_task, caplog):
    model, tok = load_model("tiny-gpt2")
    method = build_method("cot", {}, Backbone(model, tok, "tiny-gpt2"))
    out = tmp_path / "run"
    _eval(out, arith_task, method)
    lines = (out / SAMPLES).read_text().splitlines(keepends=True)
    damaged = lines[:7] + ["{not json\n", lines[7][:30] + "\n"] + lines[8:]  # line 8 garbage, line 9 cut short
    (out / SAMPLES).write_text("".join(damaged))
    recs = read_samples(out / SAMPLES)
    assert len(recs) == len(lines) - 1  # only the damaged record is missing; the 12 after it are kept
    assert "line 8, 9" in caplog.text and REJECTED in caplog.text
    side = [json.loads(x) for x in (out / REJECTED).read_text().splitlines()]
    assert [r["line"] for r in side] == [8, 9] and side[0]["text"] == "{not json"
    _eval(out, arith_task, method)  # redoes that one record only
    assert len((out / SAMPLES).read_text().splitlines()) == len(lines)
