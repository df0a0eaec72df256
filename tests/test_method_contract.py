"""The shared method contract (STYLE.md "Tests", tier 2) over EVERY registered method x both tiny models
(GPT-2: absolute positions, no chat template; Llama: rotary, ChatML template).

Generation: runs; greedy is deterministic; a left-padded batch gives the same tokens as each example alone,
greedy and sampled (per-row seeds). Methods that train: finite loss; gradients only on trainable parameters;
frozen weights unchanged after an optimizer step; the step changes the trainable ones; trainable weights saved
and loaded into a freshly built method give identical greedy outputs.

Methods are built from `cls.smoke_settings(model)`. A method that needs a task of its own (e.g. a synthetic
task with its own tokenizer) defines `classmethod smoke_task(model) -> Task`; its `load("train")[:2]` (two prompts of different lengths) is used
instead of the small arithmetic task below. New methods are covered as soon as they are registered.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest
import torch

from latentcot.decoding.sampling import GenerationConfig, RowRandom, row_seed
from latentcot.methods import METHODS, _register_all, build_method, method_class
from latentcot.methods.base import Method, generate_batched
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.tasks.base import Example, Extracted, Task
from latentcot.training.checkpoint import load_weights, save_weights
from latentcot.training.loop import TrainConfig, make_optimizer

TINY = ["tiny-gpt2", "tiny-llama"]
GREEDY = GenerationConfig(max_new_tokens=4)
SAMPLED = GenerationConfig(max_new_tokens=4, temperature=1.0)




class SumsTask(Task):
    """Multi-step sums with rationales and steps, in memory: the contract does not depend on data files."""

    name = "contract_sums"
    splits = ("train", "test")
    train_split = "train"
    instruction = "Add the numbers step by step."

    def load(self, split: str | None = None) -> list[Example]:
        rows = [(2, 3), (12, 30, 4, 20), (7, 1, 1)]
        out = []
        for i, nums in enumerate(rows):
            steps, acc = [], nums[0]
            for n in nums[1:]:
                steps.append(f"{acc}+{n}={acc + n}")
                acc += n
            q = "+".join(map(str, nums)) + "=?"
            out.append(Example(f"{split}-{i}", q, str(acc), "\n".join(steps), tuple(steps)))
        return out

    def extract(self, text: str) -> Extracted:
        nums = re.findall(r"-?\d+", text)
        m = re.search(r"The answer is (-?\d+)", text)
        return Extracted(m.group(1) if m else None, nums[-1] if nums else None)

    def is_equivalent(self, pred: str | None, gold: str) -> bool:
        return pred is not None and pred.strip() == gold.strip()


def _names() -> list[str]:
    _register_all()
    return METHODS.names()


def _build(name: str, model: str, seed: int = 0) -> Method:
    cls = method_class(name)
    torch.manual_seed(seed)  # trainable inits differ between seeds: save -> load must carry everything
    m, tok = load_model(model)
    return build_method(name, cls.smoke_settings(model), Backbone(m, tok, model))


def _task_and_examples(name: str, model: str) -> tuple[Task, list[Example]]:
    cls = method_class(name)
    task = cls.smoke_task(model) if hasattr(cls, "smoke_task") else SumsTask()
    return task, task.load(task.train_split or task.default_split)[:2]


def _ids(outs) -> list[list[int]]:
    return [list(o.token_ids) for o in outs]


def _rand(examples: Sequence[Example], device) -> RowRandom:
    return RowRandom([row_seed(7, ex.id, 0) for ex in examples], device)


CASES = [pytest.param(n, m, id=f"{n}-{m}") for n in _names() for m in TINY]


@pytest.mark.parametrize("name,model", CASES)
def test_generation_contract(name, model):
    method = _build(name, model)
    task, examples = _task_and_examples(name, model)
    dev = method.backbone.device
    first = generate_batched(method, examples, task, GREEDY, None)
    assert len(first) == len(examples)
    assert all(o.decode_steps >= 1 and o.prefill_tokens > 0 for o in first)
    assert _ids(generate_batched(method, examples, task, GREEDY, None)) == _ids(first), "greedy is not deterministic"
    alone = [generate_batched(method, [ex], task, GREEDY, None)[0].token_ids for ex in examples]
    assert _ids(first) == alone, "greedy output depends on the left-padded batch"
    # Sampling: the shortest prompt (the most left padding in the batch) alone draws the same tokens.
    sampled = generate_batched(method, examples, task, SAMPLED, _rand(examples, dev))
    short = min(range(len(examples)), key=lambda i: len(task.prompt(examples[i])))
    alone = generate_batched(method, [examples[short]], task, SAMPLED, _rand([examples[short]], dev))
    assert sampled[short].token_ids == alone[0].token_ids, "sampled output depends on the batch, not only on the seed"


@pytest.mark.parametrize("name,model", CASES)
def test_training_contract(name, model, tmp_path):
    method = _build(name, model)
    if not method.trains:
        pytest.skip(f"{name} is training-free with its smoke settings")
    task, examples = _task_and_examples(name, model)
    method.train()
    method.begin_step(0, 10)
    out = method.loss(examples, task)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss), f"loss {out.loss}"
    out.loss.backward()
    trainable = dict(method.trainable_parameters())
    assert trainable, "a training method needs trainable parameters"
    for n, p in method.named_parameters():
        if n not in trainable:
            assert p.grad is None, f"frozen parameter {n} got a gradient"
    with_grad = {n for n, p in trainable.items() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    assert with_grad, "no trainable parameter received a gradient"

    frozen = {n: p.detach().clone() for n, p in method.named_parameters() if n not in trainable}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    make_optimizer(method, TrainConfig(lr=1e-2)).step()
    for n, p in method.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen parameter {n} changed"
    changed = {n for n, p in trainable.items() if not torch.equal(p, before[n])}
    assert with_grad <= changed, f"parameters with gradients did not move: {sorted(with_grad - changed)[:3]}"

    method.eval()
    ref = generate_batched(method, examples, task, GREEDY, None)
    path = tmp_path / "trainable.safetensors"
    save_weights(method.trainable_state_dict(), path)
    fresh = _build(name, model, seed=1)
    fresh.load_trainable_state_dict(load_weights(path), str(path))
    for n, p in fresh.trainable_parameters():
        assert torch.equal(p.detach().cpu(), method.trainable_state_dict()[n].cpu()), n
    assert _ids(generate_batched(fresh, examples, task, GREEDY, None)) == _ids(ref), "save -> load changed outputs"
