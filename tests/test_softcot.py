"""SoftCoT (and its baselines' specifics): what trains, where the thoughts go under left padding, N at training
vs evaluation, exact resume, self-consistency, and the errors a user can cause."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentcot.cli.main import main
from latentcot.decoding.sampling import GenerationConfig, RowRandom, row_seed
from latentcot.errors import CheckpointError, ConfigError
from latentcot.eval.runner import evaluate
from latentcot.methods import build_method
from latentcot.methods.base import generate_batched
from latentcot.methods.softcot import PLACEHOLDER, SoftCoT, SoftCoTConfig
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model, prepare_tokenizer
from latentcot.models.splice import find_marker, splice, tokens
from latentcot.models.tiny import build_tiny
from latentcot.models.tokenizers import CHATML_TEMPLATE, byte_level_tokenizer
from latentcot.tasks.base import Example
from latentcot.training.checkpoint import load_weights
from latentcot.training.loop import TrainConfig, train

GEN = GenerationConfig(max_new_tokens=4)




def _backbone(name: str) -> Backbone:
    model, tok = load_model(name)
    return Backbone(model, tok, name)


def _assistant(arch: str, d: int, chat: bool) -> Backbone:
    """A tiny assistant of another architecture / hidden size / template than the backbone."""
    tok = byte_level_tokenizer(chat_template=CHATML_TEMPLATE if chat else None)
    prepare_tokenizer(tok)
    model = build_tiny(arch, len(tok), seed=5, d=d)
    model.requires_grad_(False)
    return Backbone(model, tok, f"tiny-{arch}-d{d}")


def _softcot(backbone: str = "tiny-gpt2", asst: Backbone | None = None, **settings) -> SoftCoT:
    """SoftCoT over tiny models; `asst` is an already built assistant (else `settings["assistant"]` is loaded)."""
    torch.manual_seed(0)
    settings = {"assistant": "tiny-llama", "num_thoughts": 2, "num_thoughts_train": 3, **settings}
    if asst is None:
        return build_method("softcot", settings, _backbone(backbone))
    return SoftCoT(SoftCoTConfig(**settings), _backbone(backbone), assistant=asst)


def test_gradients_reach_only_the_projection(arith_task):
    m = _softcot()
    m.train()
    m.loss(arith_task.load("train")[:3], arith_task).loss.backward()
    names = {n for n, p in m.named_parameters() if p.grad is not None}
    assert names == {"projection.proj.weight", "projection.proj.bias"}
    assert all(float(p.grad.abs().sum()) > 0 for n, p in m.named_parameters() if n in names)
    assert not m.assistant.training  # a frozen feature extractor stays in eval mode (no dropout)


@pytest.mark.parametrize("backbone,asst", [("tiny-gpt2", ("llama", 48, True)), ("tiny-llama", ("gpt2", 40, False))])
def test_thoughts_land_right_under_left_padding(backbone, asst, arith_task):
    """Different hidden sizes and tokenizers/templates; rows of different lengths (left padding)."""
    m = _softcot(backbone, _assistant(*asst))
    assert tuple(m.projection.proj.weight.shape) == (64, asst[1])  # d_a -> d
    examples = [arith_task.load("test")[0], Example("long", "1234+56789+1=?" * 3, "0", "x")]
    n = m.cfg.num_thoughts
    with torch.no_grad():
        thoughts, prefill = m.soft_thoughts(examples, n)  # (B, n, d)
        # Reference: each example alone, positions found by the marker token in its own ids.
        for b, ex in enumerate(examples):
            ids = m.assistant_ids(ex) + [m.marker_id] * n
            alone = splice([[tokens(ids)]], m.assistant.embed, 0)
            h = m.assistant.model(inputs_embeds=alone.inputs_embeds, attention_mask=alone.attention_mask,
                                  position_ids=alone.position_ids, output_hidden_states=True).hidden_states[-1][0]
            want = m.projection(h[find_marker(ids, [m.marker_id])])  # (n, d)
            torch.testing.assert_close(thoughts[b], want, atol=1e-5, rtol=1e-4)
            assert int(prefill[b]) == len(ids)
        # The backbone's batch: the thoughts sit right after the question, before the assistant turn.
        batch = m.splice_rows(m.backbone_rows(examples, arith_task, thoughts))
    assert batch.attention_mask[0, 0] == 0  # the short row is left-padded
    for b, ex in enumerate(examples):
        s, e = batch.spans[b]["thoughts"]
        assert e - s == n
        torch.testing.assert_close(batch.inputs_embeds[b, s:e], thoughts[b])
        before = m.backbone.decode(batch.input_ids[b, :s][batch.attention_mask[b, :s].bool()].tolist())
        after = m.backbone.tokenizer.decode(batch.input_ids[b, e:].tolist())
        assert before.endswith(ex.question)
        assert after == ("<|im_end|>\n<|im_start|>assistant\n" if m.backbone.has_chat_template else "\nAnswer:")
    outs = generate_batched(m, examples, arith_task, GEN, None)
    alone = [generate_batched(m, [ex], arith_task, GEN, None)[0] for ex in examples]
    assert [o.token_ids for o in outs] == [o.token_ids for o in alone]
    # prefill counts both models: the backbone's spliced prompt and the assistant's read
    assert [o.prefill_tokens for o in outs] == (batch.attention_mask.sum(-1) + prefill).tolist()
    assert [o.extra["assistant_prefill_tokens"] for o in outs] == prefill.tolist()


def test_placeholder_is_one_special_token_with_a_fixed_embedding():
    a, b = _softcot(), _softcot()
    tok = a.assistant.tokenizer
    assert tok.encode(PLACEHOLDER, add_special_tokens=False) == [a.marker_id]
    assert PLACEHOLDER not in a.backbone.tokenizer.get_vocab()  # the backbone's vocabulary is untouched
    # frozen and never saved, so it must not depend on the process's random state
    assert torch.equal(a.assistant.embedding_matrix[a.marker_id], b.assistant.embedding_matrix[b.marker_id])


def test_num_thoughts_train_vs_eval(arith_task):
    m = _softcot(num_thoughts=2, num_thoughts_train=5)
    seen = []
    real = m.soft_thoughts

    def spy(examples, n):
        seen.append(n)
        return real(examples, n)

    m.soft_thoughts = spy
    m.train()
    m.loss(arith_task.load("train")[:2], arith_task)
    generate_batched(m, arith_task.load("test")[:2], arith_task, GEN, None)
    assert seen == [5, 2]


def test_options_mlp_lora_and_warning(arith_task, caplog):
    m = _softcot(projection="mlp", backbone_lora_r=2, assistant_lora_r=2)
    names = [n for n, _ in m.trainable_parameters()]
    assert any(n.startswith("projection.net") for n in names)
    assert any(n.startswith("assistant.") and "lora" in n for n in names)
    assert any(n.startswith("backbone.") and "lora" in n for n in names)
    m.train()
    m.loss(arith_task.load("train")[:2], arith_task).loss.backward()
    assert all(p.grad is None for n, p in m.named_parameters() if n not in names)
    with caplog.at_level(logging.WARNING):
        _softcot("tiny-llama", assistant="tiny-gpt2")
    assert "larger than the backbone" in caplog.text


def test_killed_and_resumed_training_is_bit_identical(tmp_path, arith_task):
    examples = arith_task.load("train")
    cfg = TrainConfig(lr=1e-3, max_steps=4, train_batch_size=2, save_every=0, warmup_steps=1, schedule="linear")
    full = _softcot()
    train(full, arith_task, examples, cfg, tmp_path / "full", seed=3, progress=False)
    part = _softcot()
    s = train(part, arith_task, examples, cfg, tmp_path / "part", seed=3, progress=False, stop_after=2)
    assert s["stopped_early"]
    train(_softcot(), arith_task, examples, cfg, tmp_path / "part", seed=3, progress=False)
    a = load_file(str(tmp_path / "full" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "part" / "trainable.safetensors"))
    assert a.keys() == b.keys() == {"projection.proj.weight", "projection.proj.bias"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["projection.proj.weight"], _softcot().projection.proj.weight)  # it trained


def test_self_consistency_with_softcot(tmp_path, arith_task):
    m = _softcot()
    examples = arith_task.load("test")[:2]
    gen = GenerationConfig(max_new_tokens=6, temperature=0.7, num_samples=4)
    metrics = evaluate(m, arith_task, examples, gen, [0], tmp_path, batch_size=8, progress=False)
    recs = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 8 and "sc@4_strict" in metrics and "sc@4_flexible" in metrics and metrics["samples"] == 8
    for ex in examples:
        mine = sorted((r for r in recs if r["id"] == ex.id), key=lambda r: r["sample"])
        assert [r["sample"] for r in mine] == [0, 1, 2, 3]
        assert len({r["output"] for r in mine}) > 1  # distinct seeds, distinct samples
        # each sample depends only on (seed, question, sample), not on the batch it shared
        alone = generate_batched(m, [ex], arith_task, gen, RowRandom([row_seed(0, ex.id, 3)]))[0]
        assert alone.text == mine[3]["output"]


@pytest.mark.parametrize("projection", ["linear", "mlp"])
def test_embedding_norm_init_matches_the_backbone_rows(projection, arith_task):
    plain = _softcot(projection=projection)
    m = _softcot(projection=projection, projection_init="embedding_norm")
    target = float(m.backbone.model.get_input_embeddings().weight.norm(dim=-1).mean())
    probe = Example(id="p", question="", answer="")
    with torch.no_grad():
        before = float(plain.soft_thoughts([probe], 3)[0].norm(dim=-1).mean())
        after = float(m.soft_thoughts([probe], 3)[0].norm(dim=-1).mean())
        # the same seed gives the same init; only the scale of the last layer differs
        q = arith_task.load("test")[:2]
        ratio = m.soft_thoughts(q, 2)[0] / plain.soft_thoughts(q, 2)[0]
    assert after == pytest.approx(target, rel=1e-4)
    assert abs(before - target) > 0.1 * target  # the default init is off scale here, so the test can tell them apart
    assert torch.allclose(ratio, torch.full_like(ratio, target / before), rtol=1e-3)
    with pytest.raises(ConfigError, match="projection_init"):
        SoftCoTConfig(projection_init="xavier")


def test_bad_checkpoints_and_values(tmp_path):
    m = _softcot()
    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in m.trainable_state_dict().items()}, str(good))
    other = _softcot(asst=_assistant("gpt2", 40, False))  # d_a 40, not 64
    with pytest.raises(CheckpointError, match="shape"):
        other.load_trainable_state_dict(load_weights(good), str(good))
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(good.read_bytes()[:-50])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 7 + b"not a safetensors file")
    for bad in (truncated, garbage, tmp_path / "missing.safetensors"):
        with pytest.raises(CheckpointError):
            load_weights(bad)
    for field in ("num_thoughts", "num_thoughts_train"):
        for value in (0, -3):
            with pytest.raises(ConfigError, match=field):
                SoftCoTConfig(**{field: value})
    with pytest.raises(ConfigError, match="projection"):
        build_method("softcot", {"projection": "conv"}, _backbone("tiny-gpt2"))


@pytest.mark.parametrize("what", ["garbage", "shape"])
def test_cli_eval_with_bad_weights_exits_2(tmp_path, capsys, what):
    bad = tmp_path / "bad.safetensors"
    if what == "garbage":
        bad.write_bytes(b"definitely not safetensors")
    else:
        save_file({"projection.proj.weight": torch.zeros(3, 3), "projection.proj.bias": torch.zeros(3)}, str(bad))
    argv = ["eval", "--method", "softcot", "--model", "tiny-gpt2", "--task", "gsm8k", "--limit", "1",
            "--out", str(tmp_path / "o"), "--no-progress", "assistant=tiny-llama", f"weights={bad}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and str(bad) in err
    assert ("safetensors" if what == "garbage" else "shape") in err
