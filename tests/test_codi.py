"""CODI: distillation losses against hand-computed values, the anchor and teacher text, the loss's parts,
batch-invariant generation, bad settings, and the probe (library and CLI)."""

from __future__ import annotations

import json

import pytest
import torch

from latentcot.analysis.probe import probe_thoughts, step_hit_rate
from latentcot.decoding.sampling import GenerationConfig
from latentcot.errors import ConfigError
from latentcot.methods import build_method
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.objectives.distill import distill_l1, distill_smooth_l1_std
from latentcot.tasks import get_task
from latentcot.tasks.base import Example

MODEL = "scratch-gpt2-d32-l2:pointer_chase"


def _codi(**settings):
    torch.manual_seed(0)
    return build_method("codi", {"num_thoughts": 3, **settings}, Backbone(*load_model(MODEL)))


def _task():
    return get_task("pointer_chase", k=3, num_train=16, num_test=8, num_valid=0)


# teacher / student hidden states: L=2 layers, B=1 row, d=2
T = torch.tensor([[[0.0, 2.0]], [[1.0, 3.0]]])
S = torch.tensor([[[1.0, 0.0]], [[1.0, 3.5]]])


def test_distill_l1_hand_computed() -> None:
    # layer 0: mean(|1-0|, |0-2|) = 1.5; layer 1: mean(0, 0.5) = 0.25; mean over layers = 0.875
    assert distill_l1(T, S).item() == pytest.approx(0.875)


def test_distill_smooth_l1_std_hand_computed() -> None:
    # smooth-L1 (beta 1): |d| >= 1 -> |d| - 0.5, else 0.5 d^2.
    # layer 0: diffs 1, 2 -> 0.5, 1.5 -> mean 1.0; std([0, 2]) = sqrt(2) -> 0.70711
    # layer 1: diffs 0, 0.5 -> 0, 0.125 -> mean 0.0625; std([1, 3]) = sqrt(2) -> 0.04419
    expected = (1.0 / 2**0.5 + 0.0625 / 2**0.5) / 2
    assert distill_smooth_l1_std(T, S).item() == pytest.approx(expected, rel=1e-6)


def test_distill_teacher_is_detached() -> None:
    t, s = T.clone().requires_grad_(True), S.clone().requires_grad_(True)
    for fn in (distill_l1, distill_smooth_l1_std):
        t.grad = s.grad = None
        fn(t, s).backward()
        assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        distill_l1(T, S[:, :, :1])


def test_default_distill_is_official_smooth_l1_std_over_all_hidden_states() -> None:
    """The loss's distill term against an independent computation: plain HF forwards (input_ids for the teacher, a
    cache-less loop of embeddings for the student, as the official code feeds them), smooth-L1 / teacher std
    averaged over every hidden_states entry, the embedding output included."""
    m, task = _codi(), _task()
    assert m.cfg.distill_loss == "smooth_l1_std"
    m.eval()
    ex = task.load("train")[0]
    model, embed = m.backbone.model, m.backbone.model.get_input_embeddings()
    prompt = m.prompt_ids(ex, task)
    r, a, y = m.pieces(ex, task)
    with torch.no_grad():
        t_out = model(input_ids=torch.tensor([prompt + r + a + y]), output_hidden_states=True)
        t_pos = len(prompt) + len(r) + len(a) - 1  # the last anchor token
        seq = embed(torch.tensor([prompt + [m.bot_id]]))  # (1, P+1, d)
        for _ in range(3):
            h = model(inputs_embeds=seq, output_hidden_states=True).hidden_states[-1][:, -1]  # (1, d)
            seq = torch.cat([seq, m.projection(h)[:, None]], dim=1)
        seq = torch.cat([seq, embed(torch.tensor([[m.eot_id] + a + y]))], dim=1)
        s_out = model(inputs_embeds=seq, output_hidden_states=True)
        s_pos = len(prompt) + 1 + 3 + 1 + len(a) - 1
        entries = len(t_out.hidden_states)
        assert entries == 3  # 2 blocks + the embedding output
        per = [torch.nn.functional.smooth_l1_loss(s_out.hidden_states[j][0, s_pos], t_out.hidden_states[j][0, t_pos])
               / t_out.hidden_states[j][0, t_pos].std() for j in range(entries)]
        expected = float(sum(per) / entries)
        logs = m.loss([ex], task).logs
    assert logs["distill"] == pytest.approx(expected, rel=1e-4)
    assert float(sum(per[1:]) / (entries - 1)) != pytest.approx(expected, rel=1e-3)  # blocks only would differ


def test_teacher_text_drops_last_step_and_cuts_at_anchor() -> None:
    m, task = _codi(), _task()
    ex = task.load("train")[0]
    r, a, y = m.pieces(ex, task)
    dec = m.backbone.tokenizer.convert_ids_to_tokens
    assert dec(r) == list(ex.steps[:-1]) and dec(a) == ["####"] and dec(y) == [ex.answer, "<|eos|>"]
    r_full, _, _ = _codi(drop_last_step=False).pieces(ex, task)
    assert dec(r_full) == list(ex.steps)


def test_missing_anchor_names_field_and_example() -> None:
    m, task = _codi(distill_anchor="The answer is"), _task()
    ex = task.load("train")[0]
    with pytest.raises(ConfigError, match=f"distill_anchor.*{ex.id}"):
        m.loss([ex], task)


@pytest.mark.parametrize("bad", [{"num_thoughts": 0}, {"num_thoughts": -2}, {"distill_loss": "l2"}, {"beta": -1.0},
                                 {"distill_anchor": " "}, {"thought_norm": "unit"}])
def test_bad_settings(bad: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        _codi(**bad)


def test_thought_norm_embedding_rescales_the_projection_output() -> None:
    """thought_norm=embedding: the projection's output, direction kept, at the mean embedding-row norm (by hand);
    the default is the projection's output as it is."""
    m = _codi(thought_norm="embedding")
    h = torch.randn(3, m.backbone.hidden_size)
    with torch.no_grad():
        v = m.projection(h)
        rows = m.backbone.model.get_input_embeddings().weight
        torch.testing.assert_close(m.to_input(h), v / v.norm(dim=-1, keepdim=True) * rows.norm(dim=-1).mean())
        plain = _codi()
        torch.testing.assert_close(plain.to_input(h), plain.projection(h))


@pytest.mark.parametrize("distill", ["l1", "smooth_l1_std"])
def test_loss_parts_and_gradients(distill: str) -> None:
    m, task = _codi(distill_loss=distill, beta=2.0).train(), _task()
    out = m.loss(task.load("train")[:4], task)
    logs = out.logs
    assert logs["loss"] == pytest.approx(logs["ce_student"] + 2.0 * logs["distill"] + logs["ce_teacher"], rel=1e-5)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.projection.parameters())
    assert m.projection.net[0].weight.grad.abs().sum() > 0  # the student's thoughts feed the loss


def test_only_the_student_answer_trains_the_projection_when_teacher_and_distill_are_off() -> None:
    m, task = _codi(beta=0.0, gamma=0.0).train(), _task()
    out = m.loss(task.load("train")[:2], task)
    assert out.loss.item() == pytest.approx(out.logs["ce_student"], rel=1e-6)


def test_generation_left_padded_equals_alone() -> None:
    m, task = _codi().eval(), _task()
    exs = [Example("a", "n3 n0 n2 n1 ? n0", "n1"), Example("b", "n1 n0 ? n1", "n1")]
    gen = GenerationConfig(max_new_tokens=4)
    outs = m.generate(exs, task, gen, None)
    for ex, o in zip(exs, outs):
        assert o.latent_steps == 3
        alone = m.generate([ex], task, gen, None)[0]
        assert alone.token_ids == o.token_ids and alone.decode_steps == o.decode_steps


def test_probe_rows_and_cli(tmp_path) -> None:
    m, task = _codi().eval(), _task()
    exs = task.load("test")[:3]
    rows = probe_thoughts(m, task, exs, top_k=4, batch_size=2)
    assert len(rows) == 3 and all(len(r["thoughts"]) == 3 and len(r["thoughts"][0]) == 4 for r in rows)
    probs = [t["prob"] for t in rows[0]["thoughts"][0]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert len(step_hit_rate(rows)) == 3
    from latentcot.cli.main import main

    rc = main(["probe", "--method", "coconut", "--model", MODEL, "--task", "pointer_chase", "--limit", "2",
               "--out", str(tmp_path), "--no-progress", "max_stage=2", "k=2", "num_test=4"])
    assert rc == 0
    data = json.loads((tmp_path / "probe.json").read_text())
    assert len(data["rows"]) == 2 and len(data["rows"][0]["thoughts"]) == 2
    assert main(["probe", "--method", "cot_sft", "--model", MODEL, "--task", "pointer_chase", "--limit", "1",
                 "--out", str(tmp_path), "k=2", "num_test=4"]) == 2
