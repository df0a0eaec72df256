"""The seams: one model call (`Backbone.forward`), `Method.forward` as the trained module, the generation
protocol the Engine implements, and the shared latent / thinking modules beneath the method files."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from latentcot.decoding.backend import GenerationBackend
from latentcot.decoding.engine import Engine
from latentcot.decoding.sampling import GenerationConfig
from latentcot.methods import build_method
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.models.splice import splice, tokens
from latentcot.training.loop import TrainConfig, train

SRC = Path(__file__).resolve().parents[1] / "src" / "latentcot"


def test_backbone_forward_equals_the_hf_call(tiny):
    ids = torch.tensor([tiny.encode("Seams hold the model call in one place.")])
    ref = tiny.model(input_ids=ids, output_hidden_states=True)
    out = tiny.forward(tiny.embed(ids), torch.ones_like(ids), torch.arange(ids.shape[1])[None], want_hidden=True)
    torch.testing.assert_close(out.logits, ref.logits)
    assert len(out.hidden_states) == len(ref.hidden_states)
    last = tiny.forward(input_ids=ids, logits_to_keep=1)
    torch.testing.assert_close(last.logits[:, -1], ref.logits[:, -1])


def test_only_the_backbone_calls_the_hf_model():
    """No library module calls a held HF model directly: every model call goes through Backbone.forward."""
    direct = re.compile(r"\bmodel\(\s*($|input_ids=|inputs_embeds=|\*\*)")  # also a call split over lines
    hits = []
    for path in SRC.rglob("*.py"):
        if path.name == "backbone.py" or path.parent.name == "analysis":  # the lens reads a raw HF model on purpose
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if direct.search(line):
                hits.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    assert not hits, hits


def test_engine_implements_the_generation_protocol(tiny):
    eng = Engine(tiny)
    assert isinstance(eng, GenerationBackend)
    prompts = [tiny.encode(tiny.chat_prompt(q)) for q in ("2+2?", "A longer question here?")]
    gen = GenerationConfig(max_new_tokens=6)
    got = eng.generate_rows([[tokens(p)] for p in prompts], gen)
    ref = eng.generate(eng.prefill(splice([[tokens(p)] for p in prompts], tiny.embed, tiny.tokenizer.pad_token_id or 0)), gen)
    assert [o.token_ids for o in got] == [o.token_ids for o in ref]


def test_training_loop_calls_method_forward(tmp_path, arith_task, monkeypatch):
    """The loop calls the module (`method(batch, task)` -> `Method.forward`), which a DDP wrapper would wrap."""
    model, tok = load_model("tiny-gpt2")
    m = build_method("cot_sft", {}, Backbone(model, tok, "tiny-gpt2"))
    calls = []
    orig = type(m).forward

    def spy(self, batch, task):
        calls.append(len(batch))
        return orig(self, batch, task)

    monkeypatch.setattr(type(m), "forward", spy)
    train(m, arith_task, arith_task.load("train"), TrainConfig(lr=1e-3, max_steps=2, train_batch_size=2, grad_accum=2),
          tmp_path, progress=False)
    assert calls == [2, 2, 2, 2]


def test_shared_modules_are_re_exported_from_the_method_files():
    """Old import paths keep working after the move (the objects are the same)."""
    from latentcot.decoding import controllers
    from latentcot.latent import curriculum, rollout
    from latentcot.methods import coconut, soft_thinking

    assert coconut.Curriculum is curriculum.Curriculum and coconut.rollout is rollout.rollout
    assert soft_thinking.ThinkingController is controllers.ThinkingController
