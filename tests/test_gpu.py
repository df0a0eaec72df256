"""GPU checks (skipped without CUDA; `scripts/gpu_check.sh` runs them): the bf16 engine against HF generate, and a
DDP smoke run under `latentcot train --launch` on every visible GPU. Models are built here (no files, no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
ROOT = Path(__file__).resolve().parents[1]


def _bf16_llama():
    from latentcot.models.backbone import Backbone
    from latentcot.models.tiny import build_tiny, tiny_model

    _, tok = tiny_model("tiny-llama")
    model = build_tiny("llama", len(tok), d=256, layers=4, heads=4).to("cuda", torch.bfloat16)
    return Backbone(model, tok, "random-llama-bf16")


def test_bf16_engine_greedy_equals_hf_generate():
    """One prompt at a time (no padding: bf16 kernels differ with the batch shape), 24 greedy tokens, EOS ignored."""
    from latentcot.decoding.engine import Engine
    from latentcot.decoding.sampling import GenerationConfig
    from latentcot.models.splice import tokens

    bb = _bf16_llama()
    eng = Engine(bb)
    gen = GenerationConfig(max_new_tokens=24, ignore_eos=True)
    agree = 0
    questions = ["What is 2+3?", "Name three colours.", "A longer question about trains and their speed?", "Hi"]
    for q in questions:
        ids = bb.encode(bb.chat_prompt(q))
        ours = eng.generate_rows([[tokens(ids)]], gen)[0].token_ids
        with torch.no_grad():
            ref = bb.model.generate(torch.tensor([ids], device="cuda"), max_new_tokens=24, min_new_tokens=24,
                                    do_sample=False, pad_token_id=bb.tokenizer.pad_token_id)[0, len(ids):].tolist()
        agree += ours == ref
    assert agree == len(questions)


def test_lean_model_call_is_bitwise_hfs_forward_on_cuda():
    """The engine's lean model call (`models/fastpath.py`) against HF's forward on CUDA in bf16: a padded prefill and
    four cached steps, logits compared with torch.equal at every step."""
    from latentcot.decoding.engine import Engine
    from latentcot.models import fastpath
    from latentcot.models.splice import splice, tokens

    bb = _bf16_llama()
    assert fastpath.plan(bb.model) is not None
    rows = [[tokens(bb.encode(bb.chat_prompt(q)))] for q in ["What is 2+3?", "A longer question about trains?"]]
    logits = {}
    for fast in (False, True):
        eng = Engine(bb)
        eng.fast = fast
        state = eng.prefill(splice(rows, bb.embed, bb.tokenizer.pad_token_id or 0, "left"))
        seen = [state.logits.clone()]
        for t in range(4):
            state = eng.step_tokens(state, torch.full((2,), 5 + t, device="cuda"))
            seen.append(state.logits.clone())
        logits[fast] = seen
    assert all(torch.equal(a, b) for a, b in zip(logits[False], logits[True]))


def test_ddp_smoke_bf16(tmp_path):
    """`latentcot train --launch configs/accelerate/ddp.yaml` on every GPU, bf16 autocast, 3 steps: finishes, states
    the global batch, the main process writes finite trainable weights."""
    from safetensors.torch import load_file

    n = torch.cuda.device_count()
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "latentcot", "train", "--method", "cot_sft", "--model", "tiny-llama", "--task",
           "pointer_chase", "--no-progress", "--out", str(out), "max_steps=3", f"global_batch_size={4 * n}",
           "mixed_precision=bf16", "lr=1e-3", "--launch", str(ROOT / "configs/accelerate/ddp.yaml"),
           "--num-processes", str(n)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"global batch {4 * n} = 4 per device x 1 accumulation x {n} processes" in res.stderr
    weights = load_file(str(out / "trainable.safetensors"))
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    assert json.loads((out / "train_summary.json").read_text())["processes"] == n
