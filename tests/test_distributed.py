"""Training under `accelerate launch`: two CPU processes (DDP over gloo) end with the trainable weights one process
gets at the same global batch; bad launches are one-line errors with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentcot.cli.main import main
from latentcot.methods import build_method
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.training.distributed import split_global_batch

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--method", "cot_sft", "--model", "tiny-gpt2", "--task", "pointer_chase", "--no-progress",
         "lr=3e-4", "max_grad_norm=1.0", "train_limit=32", "save_every=1", "log_every=1"]


def _launch(out: Path, *settings: str, processes: int = 2) -> subprocess.CompletedProcess:
    """`latentcot train --launch configs/accelerate/ddp.yaml --num-processes 2 ...` in a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "latentcot", *TRAIN, "--out", str(out), *settings,
           "--launch", str(ROOT / "configs/accelerate/ddp.yaml"), "--num-processes", str(processes)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "trainable.safetensors"))


def test_two_process_ddp_equals_one_process_at_the_same_global_batch(tmp_path):
    """global 8 = 2 per device x grad_accum 2 x 2 processes vs 4 x 2 x 1: same weights after 3 steps (1e-6)."""
    settings = ["global_batch_size=8", "grad_accum=2", "max_steps=3"]
    assert main(TRAIN + ["--out", str(tmp_path / "one"), *settings]) == 0
    res = _launch(tmp_path / "two", *settings)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "global batch 8 = 2 per device x 2 accumulation x 2 processes" in res.stderr
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) > 0
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-6, rtol=0, msg=k)
    init = build_method("cot_sft", {}, Backbone(*load_model("tiny-gpt2"), "tiny-gpt2")).trainable_state_dict()
    assert max(float((one[k] - init[k]).abs().max()) for k in one) > 1e-4  # training moved the weights
    assert [p.name for p in (tmp_path / "two").glob("*.safetensors")] == ["trainable.safetensors"]


@pytest.mark.parametrize("global_batch,accum,world,expect", [(8, 2, 2, (2, 8)), (0, 1, 4, (3, 12)), (12, 1, 4, (3, 12))])
def test_split_global_batch(global_batch, accum, world, expect):
    assert split_global_batch(global_batch, 3, accum, world) == expect


def test_global_batch_that_does_not_split_over_the_processes_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")  # as under a 4-process launch
    assert main(TRAIN + ["--out", str(tmp_path / "bad"), "global_batch_size=6", "max_steps=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "global_batch_size" in err and "4 processes" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad" / "checkpoint").exists()


@pytest.mark.parametrize("content,needle", [
    (None, "does not exist"),
    ("distributed_type: [MULTI_GPU\n", "not valid YAML (line"),
    ("distributed_type: MULTI_GPU\nnum_processes: two\n", "num_processes 'two'"),
    ("distributed_type: PARALLEL\nnum_processes: 2\n", "distributed_type 'PARALLEL'"),
])
def test_missing_or_malformed_accelerate_config(content, needle, tmp_path, capsys):
    cfg = tmp_path / "acc.yaml"
    if content is not None:
        cfg.write_text(content)
    out = tmp_path / "run"
    assert main(TRAIN + ["--out", str(out), "--launch", str(cfg), "max_steps=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "--launch" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_launch_refuses_a_process_count_that_does_not_divide_the_global_batch(tmp_path, capsys):
    out = tmp_path / "run"
    argv = TRAIN + ["--out", str(out), "--launch", str(ROOT / "configs/accelerate/ddp.yaml"), "--num-processes", "4",
                    "global_batch_size=6", "max_steps=1"]
    assert main(argv) == 2
    assert "global_batch_size: 6 examples per optimizer step do not split over 4 processes" in capsys.readouterr().err
    assert not out.exists()


def test_shipped_accelerate_configs_are_valid():
    from latentcot.training.launch import read_accelerate_config

    kinds = {p.stem: read_accelerate_config(str(p))["distributed_type"] for p in (ROOT / "configs/accelerate").glob("*.yaml")}
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}


def _train_in_process(tmp_path, name, method="cot_sft", **settings):
    from latentcot.tasks import get_task
    from latentcot.training.loop import TrainConfig, train

    m = build_method(method, {"max_stage": 1, "thoughts_per_step": 1, "pad_latent_to_max": True}
                     if method == "coconut" else {}, Backbone(*load_model("tiny-llama"), "tiny-llama"))
    task = get_task("pointer_chase")
    cfg = TrainConfig(lr=1e-3, max_steps=2, train_batch_size=2, max_grad_norm=0, **settings)
    train(m, task, task.load("train")[:8], cfg, tmp_path / name, progress=False)
    return m


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    a = _train_in_process(tmp_path, "plain")
    b = _train_in_process(tmp_path, "ckpt", gradient_checkpointing=True)
    from latentcot.latent.rollout import checkpointing_on

    assert checkpointing_on(b.backbone.model) and not checkpointing_on(a.backbone.model)
    for (n, p), (_, q) in zip(a.trainable_parameters(), b.trainable_parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=n)


def test_gradient_checkpointing_is_refused_for_cached_rollouts(tmp_path):
    from latentcot.errors import ConfigError

    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        _train_in_process(tmp_path, "coconut", method="coconut", gradient_checkpointing=True)


def test_bf16_mixed_precision_trains_on_one_process(tmp_path):
    """bf16 autocast through accelerate: the step runs, the loss is close to fp32's, the weights stay fp32."""
    import json as _json

    a = _train_in_process(tmp_path, "fp32")
    b = _train_in_process(tmp_path, "bf16", mixed_precision="bf16")
    la = _json.loads((tmp_path / "fp32" / "train_summary.json").read_text())["loss"]
    lb = _json.loads((tmp_path / "bf16" / "train_summary.json").read_text())["loss"]
    assert abs(la - lb) < 0.05 * la and la != lb  # autocast really ran in bf16, and stayed close
    assert all(p.dtype == torch.float32 for _, p in b.trainable_parameters())
    assert a.trainable_parameters()


@pytest.mark.slow  # two more launches (~1 min each on 2 cores)
def test_softcot_under_ddp_syncs_only_the_projection_and_resumes(tmp_path):
    """SoftCoT (frozen assistant and backbone, trainable projection) under 2-process DDP: the same weights as one
    process; only the projection is saved; a second launch of the same command with more steps resumes from the
    checkpoint and ends where an uninterrupted 4-step single-process run ends."""
    soft = ["--method", "softcot", "assistant=tiny-gpt2", "num_thoughts=2", "num_thoughts_train=3", "global_batch_size=4"]
    argv = [a for a in TRAIN if a not in ("--method", "cot_sft", "--model", "tiny-gpt2")] + ["--model", "tiny-llama"]
    assert main(argv + soft + ["--out", str(tmp_path / "one"), "max_steps=4"]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    launch = ["--launch", str(ROOT / "configs/accelerate/ddp.yaml"), "--num-processes", "2"]
    for steps in (2, 4):  # the second launch resumes at step 2
        res = subprocess.run([sys.executable, "-m", "latentcot", *argv, *soft, "--out", str(tmp_path / "two"),
                              f"max_steps={steps}", *launch], env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stderr and "at step 2" in res.stderr
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert one.keys() == two.keys() and all(k.startswith("projection.") for k in one)
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-6, rtol=0, msg=k)
