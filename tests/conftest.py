"""Shared fixtures: tiny models, the benchmark data directory, a small in-memory task."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.tasks.base import Example, Extracted, Task

TINY = ["tiny-gpt2", "tiny-llama"]


def data_dir() -> Path | None:
    """../shared/data beside the repository, or $LATENTCOT_DATA."""
    env = os.environ.get("LATENTCOT_DATA")
    p = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return p if p.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    p = data_dir()
    if p is None:
        pytest.skip("benchmark data not found: set LATENTCOT_DATA or put shared/data beside the repository")
    return p


@pytest.fixture(params=TINY)
def tiny(request) -> Backbone:
    model, tok = load_model(request.param)
    return Backbone(model, tok, request.param)


class ArithTask(Task):
    """A few two-number sums with rationales: enough for method contracts without data files."""

    name = "tiny_arith"
    splits = ("train", "test")
    train_split = "train"
    instruction = "Add the numbers."

    def load(self, split: str | None = None) -> list[Example]:
        out = []
        for i in range(8):
            a, b = i + 1, 2 * i + 3
            out.append(
                Example(id=f"{split}-{i}", question=f"{a}+{b}=?", answer=str(a + b), rationale=f"{a} plus {b} is {a + b}.", steps=(f"{a}+{b}={a + b}",))
            )
        return out

    def extract(self, text: str) -> Extracted:
        import re

        nums = re.findall(r"-?\d+", text)
        return Extracted(nums[-1] if nums else None, nums[-1] if nums else None)

    def is_equivalent(self, pred: str | None, gold: str) -> bool:
        return pred is not None and pred.strip() == gold.strip()


@pytest.fixture
def arith_task() -> ArithTask:
    return ArithTask()


@pytest.fixture(autouse=True)
def _quiet_torch_threads():
    # One thread: tiny models gain nothing from a second, and on a loaded machine its spinning costs 10x.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
