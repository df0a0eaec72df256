"""Controlled generation (soft thinking, soft tokens, RLOO rollouts) reads the device once per step at most, and the
packed read gives the same numbers as reading each tensor on its own."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import latentcot
from latentcot.decoding.controllers import ThinkingController
from latentcot.decoding.engine import Engine
from latentcot.decoding.sampling import GenerationConfig, RowRandom, row_seed
from latentcot.methods import build_method
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.training.rollout import RecordingController
from test_soft import _examples, _Task  # the same questions and stand-in task as the soft-method tests

PACKAGE = str(Path(latentcot.__file__).parent) + os.sep  # reads made by the package's own code are counted
CPU_ONLY = {"_cpu_read"}  # sampling's reads on CPU-only paths (no device copy; an accelerator never takes them)
READS = ("tolist", "item", "__int__", "__float__", "__bool__", "__index__")  # the ways a tensor's values reach Python


class _Reads:
    """Counts reads of tensor values made by latentcot's own code, and the reads inside each call of the
    controller's `inputs` and of `Engine.step`."""

    def __init__(self, monkeypatch, controller: type = ThinkingController) -> None:
        self.n = 0
        self.per_inputs: list[int] = []
        self.in_steps = 0
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(getattr(torch.Tensor, name)))
        inputs, step = controller.inputs, Engine.step

        def counted_inputs(ctrl, *a, **kw):
            before = self.n
            out = inputs(ctrl, *a, **kw)
            self.per_inputs.append(self.n - before)
            return out

        def counted_step(eng, *a, **kw):
            before = self.n
            out = step(eng, *a, **kw)
            self.in_steps += self.n - before
            return out

        monkeypatch.setattr(controller, "inputs", counted_inputs)
        monkeypatch.setattr(Engine, "step", counted_step)

    def _counted(self, fn):
        def wrapper(t, *a, **kw):
            code = sys._getframe(1).f_code
            if code.co_filename.startswith(PACKAGE) and code.co_name not in CPU_ONLY:
                self.n += 1
            return fn(t, *a, **kw)

        return wrapper


def _outputs(outs) -> list[tuple]:
    return [(o.text, o.token_ids, o.soft_steps, o.finish_reason, o.extra) for o in outs]


CASES = [
    ("soft_thinking", {"randomness": "none", "max_think_steps": 6}),
    ("soft_thinking", {"randomness": "gumbel", "max_think_steps": 6, "cold_stop_entropy": 5.526, "cold_stop_steps": 2}),
    ("soft_tokens", {"token_mode": "soft", "max_think_steps": 6}),
    ("soft_tokens", {"token_mode": "fuzzy", "max_think_steps": 6}),
    ("soft_tokens", {"token_mode": "hard", "max_think_steps": 6}),
]


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("name,settings", CASES)
def test_one_device_read_per_controlled_step(model, name, settings, monkeypatch):
    """With the reads packed (what a GPU gets), each step reads the device at most once and the outputs equal
    those of reading every tensor on its own (the CPU's path, which copies nothing)."""
    m, tok = load_model(model)
    method = build_method(name, settings, Backbone(m, tok, model))
    gen = GenerationConfig(max_new_tokens=5, temperature=0.8)

    def run():
        return method.generate(_examples(), _Task(), gen, RowRandom([row_seed(1, f"q{i}", 0) for i in range(3)]))

    plain = _outputs(run())
    monkeypatch.setattr(ThinkingController, "pack_reads", True)
    reads = _Reads(monkeypatch)
    packed = _outputs(run())
    assert packed == plain
    assert len(reads.per_inputs) >= 8  # thinking steps, forced marker tokens and sampled answer tokens
    assert max(reads.per_inputs) == 1 and reads.in_steps == 0
    if name == "soft_thinking" and settings["randomness"] == "gumbel":
        assert any(o[4]["think_stop"] == "cold_stop" for o in plain)  # rows changed phase at different steps


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_rloo_rollout_reads_the_device_once_per_step(mode, arith_task, monkeypatch):
    """The recording controller takes the step's top-1 ids and entropies from the controller's one read."""
    def roll():
        torch.manual_seed(0)
        m, tok = load_model("tiny-llama")
        settings = {"group_size": 3, "prompts_per_step": 2, "max_think_steps": 5, "max_answer_tokens": 4,
                    "think_end": "is", "rollout_mode": mode}
        method = build_method("rloo", settings, Backbone(m, tok, "tiny-llama"))
        rows, outs, recs = method.rollout_rows(arith_task.load("train")[:2], arith_task)
        return [(o.text, o.token_ids) for o in outs], [(r.choices, r.entropies, r.cot_steps) for r in recs]

    plain = roll()
    monkeypatch.setattr(ThinkingController, "pack_reads", True)
    reads = _Reads(monkeypatch, RecordingController)
    assert roll() == plain
    assert len(reads.per_inputs) >= 5 and max(reads.per_inputs) == 1 and reads.in_steps == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name,settings", [CASES[1], CASES[2]])
def test_one_device_read_per_controlled_step_on_cuda(name, settings, monkeypatch):
    """On a GPU the packed read is the default: one device-to-host copy per step, the same samples as on the CPU
    up to the kernels' rounding (so only the read count is asserted)."""
    m, tok = load_model("tiny-llama")
    method = build_method(name, settings, Backbone(m.to("cuda"), tok, "tiny-llama"))
    reads = _Reads(monkeypatch)
    gen = GenerationConfig(max_new_tokens=5, temperature=0.8)
    method.generate(_examples(), _Task(), gen, RowRandom([row_seed(1, f"q{i}", 0) for i in range(3)], "cuda"))
    assert len(reads.per_inputs) >= 8 and max(reads.per_inputs) == 1 and reads.in_steps == 0
