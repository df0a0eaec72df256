"""Coconut and its pause control: cached latent stepping == full recompute (generation and training), the
curriculum schedule, resume exactness, bad settings. Tiny from-scratch models (d=32, 2 layers), GPT-2 and Llama."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from latentcot.errors import ConfigError
from latentcot.methods import build_method
from latentcot.methods.coconut import Curriculum, rollout, split_rationale, without_first_steps
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.models.splice import splice, tokens, vectors
from latentcot.objectives.lm import lm_loss
from latentcot.tasks import get_task
from latentcot.tasks.base import Example
from latentcot.training.loop import TrainConfig, train

MODEL = "scratch-{arch}-d32-l2:pointer_chase"


def _method(name: str = "coconut", arch: str = "gpt2", **settings):
    torch.manual_seed(0)
    return build_method(name, {"max_stage": 2, **settings}, Backbone(*load_model(MODEL.format(arch=arch))))


def _task(k: int = 2):
    return get_task("pointer_chase", k=k, num_train=64, num_test=8, num_valid=0)


def _uneven() -> list[Example]:
    """Two questions of different lengths (exercises padding)."""
    return [
        Example("a", "n3 n0 n2 n1 ? n0", "n1", "n3 n1", ("n3", "n1")),
        Example("b", "n1 n0 ? n1", "n1", "n0 n1", ("n0", "n1")),
    ]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cached_latent_steps_equal_full_forward(arch: str) -> None:
    """Logits after N cached latent steps == one forward over the spliced [prompt, <bot>, h1..hN] (left padded)."""
    m = _method(arch=arch).eval()
    task, exs, n = _task(), _uneven(), 3
    state = m.engine.prefill(m.splice_rows([m.prefix(ex, task) for ex in exs]), want_hidden=True)
    fed = []
    for _ in range(n):
        fed.append(state.hidden.clone())
        state = m.engine.step(state, state.hidden, want_hidden=True)
    rows = [m.prefix(ex, task) + [vectors(torch.stack([h[b] for h in fed]), name="thoughts")] for b, ex in enumerate(exs)]
    full = splice(rows, m.backbone.embed, 0, "left")  # (B, T+N, d)
    with torch.no_grad():
        out = m.backbone.model(inputs_embeds=full.inputs_embeds, attention_mask=full.attention_mask,
                               position_ids=full.position_ids, output_hidden_states=True)
    torch.testing.assert_close(state.logits, out.logits[:, -1].float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(state.hidden, out.hidden_states[-1][:, -1], atol=1e-5, rtol=1e-4)


def _at_embedding_norm(m, h: torch.Tensor) -> torch.Tensor:
    """Hand computation of `thought_norm=embedding`: h scaled to the mean norm of the input-embedding rows."""
    rows = m.backbone.model.get_input_embeddings().weight
    return h / h.norm(dim=-1, keepdim=True) * rows.norm(dim=-1).mean()


def _naive_loss(m, task, ex: Example, n: int, target: list[int], feed=None) -> tuple[torch.Tensor, int]:
    """The official-code way: a full forward over the whole sequence for every latent step (no cache); `feed`
    maps the last hidden state to the next input (default: itself, as the official code)."""
    bb = m.backbone
    pre = splice([m.prefix(ex, task)], bb.embed, 0, "right").inputs_embeds[0]  # (P, d)
    seq = pre
    for _ in range(n):
        out = bb.model(inputs_embeds=seq[None], output_hidden_states=True)
        h = out.hidden_states[-1][0, -1:]  # (1, d)
        seq = torch.cat([seq, feed(m, h) if feed else h], dim=0)  # (P+j+1, d)
    suffix = splice([[tokens([m.eot_id]), tokens(target, labels=True)]], bb.embed, 0, "right")
    full = torch.cat([seq, suffix.inputs_embeds[0]], dim=0)[None]  # (1, P+n+S, d)
    labels = torch.cat([torch.full((seq.shape[0],), -100), suffix.labels[0]])[None]
    logits = bb.model(inputs_embeds=full).logits
    count = int((labels[:, 1:] != -100).sum())
    return lm_loss(logits, labels) * count, count


@pytest.mark.parametrize(("arch", "thought_norm"), [("gpt2", "none"), ("llama", "none"), ("gpt2", "embedding")])
def test_training_rollout_equals_naive_recompute_with_gradients(arch: str, thought_norm: str) -> None:
    """KV-cached training rollout (mixed thought counts in one right-padded batch) == per-row full recompute:
    same loss, same gradients (so gradients do flow through the cache into earlier latent passes); with
    thought_norm=embedding the recompute rescales by hand, gradients flowing into the embedding rows too."""
    m = _method(arch=arch, thought_norm=thought_norm).train()
    task, exs, counts = _task(), _uneven(), [1, 3]
    targets = [m.target_ids(ex, task) for ex in exs]
    ro = rollout(m.backbone, [m.prefix(ex, task) for ex in exs], counts, m.to_input,
                 [[tokens([m.eot_id]), tokens(t, labels=True)] for t in targets])
    loss = lm_loss(ro.out.logits, ro.suffix.labels)
    params = [p for _, p in m.trainable_parameters()]
    grads = torch.autograd.grad(loss, params)
    feed = _at_embedding_norm if thought_norm == "embedding" else None
    parts = [_naive_loss(m, task, ex, n, t, feed) for ex, n, t in zip(exs, counts, targets)]
    naive = sum(s for s, _ in parts) / sum(c for _, c in parts)
    naive_grads = torch.autograd.grad(naive, params)
    torch.testing.assert_close(loss, naive, atol=1e-5, rtol=1e-5)
    for g, h in zip(grads, naive_grads):
        torch.testing.assert_close(g, h, atol=1e-5, rtol=1e-4)


def test_curriculum_schedule_table() -> None:
    cur = Curriculum(thoughts_per_step=2, max_stage=3, stage_steps=5)
    assert [cur.stage_at(s, 30) for s in range(22)] == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5 + [4] * 2
    assert [s for s in range(1, 30) if cur.stage_changes(s, 30)] == [5, 10, 15, 20]
    table = cur.table(20, ("a", "b", "c", "d"))
    assert [(r["stage"], r["first_step"], r["last_step"], r["thoughts"], r["remaining"]) for r in table] == [
        (0, 0, 4, 0, ["a", "b", "c", "d"]),
        (1, 5, 9, 2, ["b", "c", "d"]),
        (2, 10, 14, 4, ["c", "d"]),
        (3, 15, 19, 6, ["d"]),
    ]
    even = Curriculum(thoughts_per_step=1, max_stage=3, start_stage=1, final_stage=False)  # split the run evenly
    assert [even.stage_at(s, 9) for s in range(9)] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    with_final = Curriculum(thoughts_per_step=1, max_stage=3, start_stage=1)
    assert [with_final.stage_at(s, 8) for s in range(8)] == [1, 1, 2, 2, 3, 3, 4, 4]


def test_gsm8k_schedule_c2_three_stages_then_all_steps_removed() -> None:
    """GSM8K's official settings (c=2, max_latent_stage=3, 3 epochs per stage, 25 epochs, pad_latent_to_max): after
    stage 3 every remaining step goes, 6 thoughts stay. One epoch = one step here."""
    cur = Curriculum(thoughts_per_step=2, max_stage=3, stage_steps=3)
    five = ("s1", "s2", "s3", "s4", "s5")
    table = cur.table(25, five)
    assert [(r["stage"], r["first_step"], r["last_step"], r["thoughts"], r["remaining"], r["final"]) for r in table] == [
        (0, 0, 2, 0, list(five), False),
        (1, 3, 5, 2, ["s2", "s3", "s4", "s5"], False),
        (2, 6, 8, 4, ["s3", "s4", "s5"], False),
        (3, 9, 11, 6, ["s4", "s5"], False),
        (4, 12, 24, 6, [], True),  # the final stage: s4 and s5 are no longer written as text
    ]
    # the method: a 5-step and a 2-step problem, trained at the final stage (step 12)
    m = _method(max_stage=3, thoughts_per_step=2, stage_steps=3, pad_latent_to_max=True)
    m.begin_step(12, 25)
    task = _task()
    long = Example("long", "n3 n0 n2 n1 ? n0", "n1", "n3 n1 n0 n3 n1", ("n3", "n1", "n0", "n3", "n1"))
    short = Example("short", "n1 n0 ? n1", "n1", "n0 n1", ("n0", "n1"))
    for ex in (long, short):
        n, target = m.plan(ex, task)
        assert n == 6 and m.backbone.decode(target).split() == ["####", ex.answer]
    m.begin_step(9, 25)  # stage 3: the 5-step problem keeps its last two steps as text
    n, target = m.plan(long, task)
    assert n == 6 and m.backbone.decode(target).split() == ["n3", "n1", "####", "n1"]
    assert m.eval_thoughts == 6


def test_max_stage_beyond_the_rationales_needs_pad_latent_to_max(tmp_path) -> None:
    from latentcot.cli.main import main

    out = tmp_path / "run"
    rc = main(["train", "--method", "coconut", "--model", "scratch-gpt2-d32-l1:pointer_chase", "--task",
               "pointer_chase", "--out", str(out), "--no-progress", "k=2", "num_train=32", "max_stage=3",
               "max_steps=1", "train_batch_size=4"])
    assert rc == 2 and not out.exists()  # one line, nothing written
    m = _method(max_stage=3, pad_latent_to_max=True)
    m.check_train_examples(_task(k=2).load("train"), _task(k=2))  # padding: allowed


def test_mixing_draws_earlier_stages_deterministically() -> None:
    cur = Curriculum(thoughts_per_step=1, max_stage=4, stage_steps=10, mix_prob=0.5)
    draws = [cur.sample_stage(35, 100, f"q{i}") for i in range(400)]
    assert draws == [cur.sample_stage(35, 100, f"q{i}") for i in range(400)]  # depends on (step, id) only
    assert set(draws) <= {0, 1, 2, 3} and 0.4 < draws.count(3) / 400 < 0.75  # 3 = current stage (+ 1/3 of mixes)
    assert Curriculum(1, 4, stage_steps=10).sample_stage(35, 100, "q") == 3


def test_begin_step_resets_optimizer_at_stage_changes() -> None:
    m = _method(max_stage=2, stage_steps=3)
    assert [m.begin_step(s, 9) for s in range(9)] == [False, False, False, True, False, False, True, False, False]
    m = _method(max_stage=2, stage_steps=3, reset_optimizer=False)
    assert not any(m.begin_step(s, 9) for s in range(9))


def test_rationale_cut_keeps_separators() -> None:
    ex = Example("g", "q", "7", "3*2=6\n6+1=7", ("3*2=6", "6+1=7"))
    assert split_rationale(ex, 1) == ("3*2=6", "6+1=7")
    assert without_first_steps(ex, 2, "max_stage", True).rationale is None
    assert without_first_steps(ex, 0, "max_stage", True) is ex


def test_loss_drops_rationale_steps_per_stage() -> None:
    m, task = _method(max_stage=2, stage_steps=2), _task()
    ex = task.load("train")[0]
    for step, stage in ((0, 0), (2, 1), (4, 2)):
        m.begin_step(step, 6)
        n, target = m.plan(ex, task)
        assert n == stage
        text = m.backbone.decode(target)
        assert text.split() == list(ex.steps[stage:]) + ["####", ex.answer]
    out = m.loss(task.load("train")[:4], task)
    assert torch.isfinite(out.loss) and out.logs["stage"] == 2


def test_thought_norm_embedding_rescales_what_generation_feeds() -> None:
    """to_input keeps h's direction at the mean embedding-row norm (the default feeds h as it is), and the
    cached generation loop feeds exactly that: equal to a hand loop over the engine with the hand rescale."""
    m = _method(thought_norm="embedding").eval()
    rows = m.backbone.model.get_input_embeddings().weight.detach()
    h = torch.randn(3, rows.shape[1]) * torch.tensor([[0.1], [1.0], [30.0]])
    with torch.no_grad():
        out = m.to_input(h)
    torch.testing.assert_close(out.norm(dim=-1), rows.norm(dim=-1).mean().expand(3))
    torch.testing.assert_close(out / out.norm(dim=-1, keepdim=True), h / h.norm(dim=-1, keepdim=True))
    assert _method().to_input(h) is h
    task, exs, n = _task(), _uneven(), 3
    with torch.no_grad():
        start = m.engine.prefill(m.splice_rows([m.prefix(ex, task) for ex in exs]), want_hidden=True)
        got = m.think_steps(start, n)
        state = m.engine.prefill(m.splice_rows([m.prefix(ex, task) for ex in exs]), want_hidden=True)
        for _ in range(n):
            state = m.engine.step(state, _at_embedding_norm(m, state.hidden), want_hidden=True)
        plain = _method().eval().think_steps(
            m.engine.prefill(m.splice_rows([m.prefix(ex, task) for ex in exs]), want_hidden=True), n)
    torch.testing.assert_close(got.logits, state.logits, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got.logits, plain.logits, atol=1e-3)


def test_bad_settings_name_the_field_and_example() -> None:
    for bad in ({"num_thoughts": 0}, {"num_thoughts": -1}, {"thoughts_per_step": 0}, {"max_stage": 0},
                {"mix_prob": 1.0}, {"thought_norm": "unit"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            _method(**bad)
    m, task = _method(max_stage=5, stage_steps=1), _task(k=2)
    m.begin_step(10, 20)  # stage 5 > the 2 steps of every example
    ex = task.load("train")[0]
    with pytest.raises(ConfigError, match=f"max_stage.*{ex.id}"):
        m.loss([ex], task)
    m = _method(max_stage=5, stage_steps=1, pad_latent_to_max=True)
    m.begin_step(10, 20)
    n, target = m.plan(ex, task)
    assert n == 5 and m.backbone.decode(target).split() == ["####", ex.answer]


@pytest.mark.parametrize("name", ["coconut", "pause"])
def test_generation_counts_latent_steps_and_is_batch_invariant(name: str) -> None:
    from latentcot.decoding.sampling import GenerationConfig

    m, task = _method(name, max_stage=2, thoughts_per_step=2).eval(), _task()
    gen = GenerationConfig(max_new_tokens=5)
    exs = _uneven()
    outs = m.generate(exs, task, gen, None)
    for ex, o in zip(exs, outs):
        assert o.latent_steps == 4
        assert o.decode_steps >= 4 + 1 + 1  # thoughts, <eot>, at least one choice
        alone = m.generate([ex], task, gen, None)[0]
        assert alone.token_ids == o.token_ids and alone.decode_steps == o.decode_steps


def test_pause_uses_the_pause_embedding_not_the_hidden_state() -> None:
    m, task = _method("pause"), _task()
    m.begin_step(10, 10)
    out = m.loss(task.load("train")[:4], task)
    out.loss.backward()
    emb = m.backbone.model.get_input_embeddings().weight
    assert torch.isfinite(out.loss) and emb.grad[m.pause_id].abs().sum() > 0


def test_coconut_resume_is_bit_identical(tmp_path) -> None:
    """train(..., stop_after=k) then resume == uninterrupted, across a stage change (optimizer reset) and mixing."""
    task = _task()
    exs = task.load("train")
    cfg = TrainConfig(lr=3e-3, max_steps=6, train_batch_size=4, save_every=0, log_every=0)
    settings = {"max_stage": 2, "stage_steps": 2, "mix_prob": 0.5}
    full = _method(**settings)
    train(full, task, exs, cfg, tmp_path / "full", seed=1, progress=False)
    for stop in (2, 3):
        part = _method(**settings)
        train(part, task, exs, cfg, tmp_path / f"part{stop}", seed=1, progress=False, stop_after=stop)
        resumed = _method(**settings)
        train(resumed, task, exs, cfg, tmp_path / f"part{stop}", seed=1, progress=False)
        a, b = full.trainable_state_dict(), resumed.trainable_state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"resume after step {stop} differs"


def test_smoke_settings_run_on_a_real_benchmark_shape() -> None:
    """Rationales with varying step counts (pad_latent_to_max) on a byte-level tiny model with a chat template."""
    m = build_method("coconut", _method().smoke_settings("tiny-llama"), Backbone(*load_model("tiny-llama")))
    ex = [Example("x", "What is 2+3?", "5", "2+3=5", ("2+3=5",)), Example("y", "What is 4?", "4", None, ())]
    m.begin_step(1, 1)
    from latentcot.tasks.base import Task

    class Plain(Task):
        name = "plain"

    out = m.loss(ex, Plain())
    assert torch.isfinite(out.loss)
    assert dataclasses.asdict(m.cfg)["pad_latent_to_max"] is True


def _recording(m) -> list[torch.Tensor]:
    """Wraps the backbone's forward: the position ids of every call, in order."""
    seen, inner = [], m.backbone.forward

    def forward(embeds, mask, positions, *args, **kwargs):
        seen.append(positions.detach().clone())
        return inner(embeds, mask, positions, *args, **kwargs)

    m.backbone.forward = forward
    return seen


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_thought_stride_positions_equal_in_training_and_generation(stride: int) -> None:
    """thought_stride=s (not in the paper): on a padded batch of uneven prompts, thought j gets position
    P + s*(j+1) - 1 and <eot> P + s*n, both in the training rollout (right padded) and in generation (left padded);
    the logits at <eot> agree between the two and with a full forward over explicit position ids; s=1 (the default)
    is the contiguous P, P+1, ... of the paper."""
    m = _method(**({} if stride == 1 else {"thought_stride": stride})).eval()
    task, exs, n = _task(), _uneven(), m.eval_thoughts
    prompt = [len(m.prompt_ids(ex, task)) + 1 for ex in exs]  # P: prompt and <bot>
    want = [[p + stride * (j + 1) - 1 for j in range(n)] + [p + stride * n] for p in prompt]
    targets = [m.target_ids(ex, task) for ex in exs]
    seen = _recording(m)
    with torch.no_grad():
        ro = rollout(m.backbone, [m.prefix(ex, task) for ex in exs], [n, n], m.to_input,
                     [[tokens([m.eot_id]), tokens(t, labels=True)] for t in targets], stride=m.cfg.thought_stride)
    train_pos = [[int(c[b, 0]) for c in seen[1:n + 2]] for b in range(2)]  # n thought calls, then the suffix's first
    seen.clear()
    with torch.no_grad():
        state = m.latent_state(exs, task)
    assert [c.shape[1] for c in seen[-n:]] == [1] * (n - 1) + [2]  # the last thought and <eot> in one call
    gen_pos = [[int(p) for c in seen[-n:] for p in c[b]] for b in range(2)]  # n thoughts, then <eot>
    assert train_pos == want and gen_pos == want
    torch.testing.assert_close(state.logits, ro.out.logits[:, 0].float(), atol=1e-5, rtol=1e-4)
    bb = m.backbone.model
    for b, ex in enumerate(exs):  # independent: one full forward per row over the fed inputs at those positions
        pre = splice([m.prefix(ex, task)], m.backbone.embed, 0, "right").inputs_embeds[0]
        fed = torch.stack([t[b] for t in ro.thoughts])  # (n, d)
        eot = m.backbone.embed(torch.tensor([m.eot_id]))
        seq = torch.cat([pre, fed, eot])[None]
        pos = torch.tensor([list(range(prompt[b])) + want[b]])
        with torch.no_grad():
            full = bb(inputs_embeds=seq, position_ids=pos).logits[0, -1].float()
        torch.testing.assert_close(state.logits[b], full, atol=1e-5, rtol=1e-4)


def test_thought_stride_default_is_unchanged_and_bad_values_name_the_field() -> None:
    task = _task()
    batch = task.load("train")[:4]
    a, b = _method(), _method(thought_stride=1)
    a.begin_step(3, 10)
    b.begin_step(3, 10)
    assert torch.equal(a.loss(batch, task).loss, b.loss(batch, task).loss)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="thought_stride"):
            _method(thought_stride=bad)
