"""The training loop: gradient accumulation equivalence, exact resume, only trainable weights saved."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from latentcot.methods import build_method
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.training.checkpoint import load_weights
from latentcot.training.loop import BatchStream, TrainConfig, epoch_order, lr_factor, train


def _method(name="cot_sft", **settings):
    model, tok = load_model("tiny-gpt2")
    return build_method(name, settings, Backbone(model, tok, "tiny-gpt2"))


def test_grad_accumulation_4x1_equals_1x4(tmp_path, arith_task):
    """One step over 4 examples == 4 accumulated micro-batches of 1 (examples of different lengths): the loop's
    accumulated gradient (left on the parameters after the step) is the same."""
    examples = arith_task.load("train")[:4]
    weights = []
    for bs, accum in ((4, 1), (1, 4)):
        m = _method()
        cfg = TrainConfig(lr=1e-2, max_steps=1, train_batch_size=bs, grad_accum=accum, max_grad_norm=0)
        train(m, arith_task, examples, cfg, tmp_path / f"{bs}x{accum}", seed=0, progress=False)
        weights.append({n: p.grad.clone() for n, p in m.trainable_parameters()})
    assert len({len(arith_task.target(ex)) for ex in examples}) > 1  # unequal lengths: a naive mean of means would differ
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], atol=1e-6, rtol=1e-4, msg=k)


def test_killed_and_resumed_run_is_bit_identical(tmp_path, arith_task):
    examples = arith_task.load("train")
    cfg = TrainConfig(lr=1e-3, max_steps=6, train_batch_size=3, grad_accum=2, save_every=0, warmup_steps=2, schedule="cosine")
    torch.manual_seed(0)
    full = _method()
    train(full, arith_task, examples, cfg, tmp_path / "full", seed=1, progress=False)
    torch.manual_seed(0)
    part = _method()
    s = train(part, arith_task, examples, cfg, tmp_path / "part", seed=1, progress=False, stop_after=3)
    assert s["stopped_early"] and s["steps"] == 3
    first = json.loads((tmp_path / "part" / "checkpoint" / "state.json").read_text())
    assert first["seconds"] > 0 and first["peak_rss_mib"] > 0
    resumed = _method()  # a fresh process would build the method again, then resume from the checkpoint
    summary = train(resumed, arith_task, examples, cfg, tmp_path / "part", seed=1, progress=False)
    # the summary accounts for the whole run, not just the resumed process
    assert summary["seconds"] > first["seconds"] and summary["peak_rss_mib"] >= first["peak_rss_mib"]
    a = load_file(str(tmp_path / "full" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "part" / "trainable.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_frozen_weights_have_no_grad_and_are_not_saved(tmp_path, arith_task):
    m = _method("lora", lora_r=4)
    trainable = dict(m.trainable_parameters())
    assert trainable and all("lora" in n for n in trainable)
    frozen_before = {n: p.clone() for n, p in m.named_parameters() if not p.requires_grad}
    train(m, arith_task, arith_task.load("train"), TrainConfig(lr=1e-2, max_steps=2, train_batch_size=2), tmp_path, progress=False)
    for n, p in m.named_parameters():
        if not p.requires_grad:
            assert p.grad is None and torch.equal(p, frozen_before[n]), n
    saved = load_weights(tmp_path)
    assert set(saved) == set(trainable)
    opt = load_file(str(tmp_path / "checkpoint" / "optimizer.safetensors"))
    # AdamW keeps step, exp_avg and exp_avg_sq for trainable parameters only
    assert len(opt) == 3 * len(trainable)


def test_lr_schedule():
    assert lr_factor(0, 10, 2, "constant") == 0.5
    assert lr_factor(1, 10, 2, "linear") == 1.0
    assert lr_factor(10, 10, 0, "linear") == 0.0
    assert abs(lr_factor(5, 10, 0, "cosine") - 0.5) < 1e-9


def test_batch_stream_walks_the_epochs_as_written_out_by_hand():
    """10 examples, micro-batches of 2 on each of 2 processes (4 per micro-batch), 2 micro-batches per step: step 1
    takes positions 0-3 and 4-7 of epoch 0's permutation, process r the r-th pair of each; the next micro-batch
    would need positions 8-11 of 10, so step 2 starts epoch 1 (the tail 8-9 is dropped). One process with
    micro-batches of 4 sees the two processes' pairs joined. A stream rebuilt from the state after step 1 (what a
    checkpoint records) continues as the uninterrupted one."""
    o0, o1 = epoch_order(10, 0, 3), epoch_order(10, 1, 3)
    assert o0 != o1
    for r in (0, 1):
        s = BatchStream(10, 2, 2, 3, world=2, rank=r)
        assert s.next_step() == [o0[2 * r : 2 * r + 2], o0[4 + 2 * r : 6 + 2 * r]] and (s.epoch, s.pos) == (0, 8)
        resumed = BatchStream(10, 2, 2, 3, world=2, rank=r, epoch=0, pos=8)
        want = [o1[2 * r : 2 * r + 2], o1[4 + 2 * r : 6 + 2 * r]]
        assert s.next_step() == want and resumed.next_step() == want and (s.epoch, s.pos) == (1, 8)
    one = BatchStream(10, 4, 2, 3)
    assert one.next_step() == [o0[0:4], o0[4:8]] and one.next_step() == [o1[0:4], o1[4:8]]


def test_grad_accumulation_4x1_equals_1x4_for_coconut_and_codi(tmp_path, arith_task):
    """Coconut (token-weighted, like cot_sft) and CODI (each term normalised by the step's totals: student tokens,
    teacher tokens, rows): 4 accumulated micro-batches of 1 give the gradient of one batch of 4.

    CODI is checked with distill_loss=l1: smooth_l1_std divides by the teacher's std over the micro-batch's rows
    (as the official code does per batch), which no accumulation can reproduce exactly."""
    examples = arith_task.load("train")[:4]
    cases = {"coconut": {"max_stage": 1, "start_stage": 1, "thoughts_per_step": 2},
             "codi": {"num_thoughts": 2, "distill_loss": "l1", "distill_anchor": "The answer is"}}
    for name, settings in cases.items():
        grads = []
        for bs, accum in ((4, 1), (1, 4)):
            torch.manual_seed(0)
            m = _method(name, **settings)
            cfg = TrainConfig(lr=1e-2, max_steps=1, train_batch_size=bs, grad_accum=accum, max_grad_norm=0)
            train(m, arith_task, examples, cfg, tmp_path / f"{name}-{bs}x{accum}", seed=0, progress=False)
            grads.append({n: p.grad.clone() for n, p in m.trainable_parameters() if p.grad is not None})
        assert grads[0].keys() == grads[1].keys() and grads[0]
        for k in grads[0]:
            torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-4, msg=f"{name}: {k}")


def test_adam_betas_reach_the_optimizer():
    """train.adam_beta1 / adam_beta2 are the optimizer's betas (defaults 0.9 / 0.999, torch's and HF's)."""
    from latentcot.training.loop import make_optimizer

    method = _method()
    assert make_optimizer(method, TrainConfig()).param_groups[0]["betas"] == (0.9, 0.999)
    opt = make_optimizer(method, TrainConfig(adam_beta1=0.99, adam_beta2=0.98))
    assert opt.param_groups[0]["betas"] == (0.99, 0.98)
