"""RLOO over hard / soft / fuzzy CoT (Butt et al., arXiv 2509.19170): the trajectory log-probability against a
hand computation, leave-one-out advantages, replayed rollouts, gradients, exact resume, bad input."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from latentcot.cli.main import main
from latentcot.methods import build_method
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.objectives.rloo import kl_k3, policy_loss, rewards_from_scores, rloo_advantages
from latentcot.training.distributed import split_global_batch
from latentcot.training.loop import TrainConfig, train
from latentcot.training.rollout import GAUSS, TOKEN, RolloutRecord, replay

TINY = ["tiny-gpt2", "tiny-llama"]


def _rloo(model: str = "tiny-llama", seed: int = 0, **settings):
    torch.manual_seed(seed)
    m, tok = load_model(model)
    base = {"group_size": 3, "prompts_per_step": 2, "max_think_steps": 5, "max_answer_tokens": 4, "think_end": "is"}
    return build_method("rloo", {**base, **settings}, Backbone(m, tok, model))


# --- the trajectory log-probability by hand -------------------------------------------------------------------
class ToyLM(nn.Module):
    """hidden_t = input_t (no mixing), tied head: logits_t = h_t E^T. Small enough to compute by hand."""

    def __init__(self, E: torch.Tensor) -> None:
        super().__init__()
        self.emb = nn.Embedding.from_pretrained(E.clone(), freeze=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.emb

    def get_output_embeddings(self):
        return lambda h: h @ self.emb.weight.T

    def forward(self, inputs_embeds, *_, **__):
        return SimpleNamespace(hidden_states=(inputs_embeds,), logits=inputs_embeds[:, -1:] @ self.emb.weight.T)


E_TOY = [[1.0, 0.0], [0.0, 1.0], [0.5, -0.5]]  # V=3, d=2


def _hand(mode: str, tau: float, sigma: float, temp: float) -> float:
    """Prompt = token 0. soft/fuzzy: fed h1, h2 (Gaussian choices), then answer token 2 sampled after h2.
    hard: fed tokens 1 then 2 (both sampled), the answer token 0 sampled after them."""

    def logits(h):
        return [sum(a * b for a, b in zip(h, e)) for e in E_TOY]

    def softmax(z, t):
        m = max(z)
        ex = [math.exp((v - m) / t) for v in z]
        return [v / sum(ex) for v in ex]

    def log_softmax(z, t, i):
        return math.log(softmax(z, t)[i])

    if mode == "hard":
        seq = [E_TOY[0], E_TOY[1], E_TOY[2]]
        return log_softmax(logits(seq[0]), temp, 1) + log_softmax(logits(seq[1]), temp, 2) + log_softmax(logits(seq[2]), temp, 0)
    h = [E_TOY[0], [0.3, 0.9], [-0.2, 0.4]]
    total = 0.0
    for t in (1, 2):
        p = softmax(logits(h[t - 1]), tau)
        mean = [sum(p[v] * E_TOY[v][j] for v in range(3)) for j in range(2)]
        total += -sum((h[t][j] - mean[j]) ** 2 for j in range(2)) / (2 * sigma**2)
    return total + log_softmax(logits(h[2]), temp, 2)


@pytest.mark.parametrize("mode,tau", [("soft", 0.5), ("fuzzy", 1e-4), ("hard", 1.0)])
def test_trajectory_log_prob_matches_hand_computation(mode, tau):
    toy = ToyLM(torch.tensor(E_TOY))
    backbone = SimpleNamespace(model=toy, forward=toy.forward, device=torch.device("cpu"),
                               tokenizer=SimpleNamespace(pad_token_id=0))
    sigma, temp = 0.7, 0.8
    if mode == "hard":
        rec = RolloutRecord([0], fed=[1, 2], choices=[(0, TOKEN, 1), (1, TOKEN, 2), (2, TOKEN, 0)])
    else:
        rec = RolloutRecord([0], fed=[torch.tensor([0.3, 0.9]), torch.tensor([-0.2, 0.4]), 2],
                            choices=[(0, GAUSS, -1), (1, GAUSS, -1), (2, TOKEN, 2)])
    # a second, longer row (padding) must not change the first row's value
    other = RolloutRecord([0, 1, 2], fed=[1], choices=[(0, TOKEN, 1)])
    out = replay(backbone, 1.0, [rec, other], mode, tau, sigma, temp)
    assert out.logp[0].item() == pytest.approx(_hand(mode, tau, sigma, temp), rel=1e-5, abs=1e-5)
    assert out.choice_row.tolist() == [0, 0, 0, 1]


# --- advantages, rewards, loss ---------------------------------------------------------------------------------
def test_rloo_advantages_hand_computation_and_zero_sum():
    r = torch.tensor([[100.0, 10.0, 0.0], [0.0, 0.0, 0.0], [10.0, 100.0, 100.0]])
    adv = rloo_advantages(r)
    expected = torch.tensor([[100 - 5.0, 10 - 50.0, 0 - 55.0], [0.0, 0.0, 0.0], [10 - 100.0, 100 - 55.0, 100 - 55.0]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(adv.sum(1), torch.zeros(3), atol=1e-5, rtol=0)
    norm = rloo_advantages(r, normalize=True)
    torch.testing.assert_close(norm, expected / expected.std(unbiased=False))
    torch.testing.assert_close(norm.sum(1), torch.zeros(3), atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        rloo_advantages(torch.tensor([[1.0], [2.0]]))


def test_leave_one_pair_out_advantages_hand_computation_and_zero_sum():
    """antithetic: samples (0, 1), (2, 3), ... are pairs; each baseline is the group's mean outside the pair."""
    r = torch.tensor([[100.0, 0.0, 10.0, 100.0], [0.0, 10.0, 0.0, 0.0]])
    adv = rloo_advantages(r, pairs=True)
    expected = torch.tensor([[100 - 55.0, 0 - 55.0, 10 - 50.0, 100 - 50.0], [0 - 0.0, 10 - 0.0, 0 - 5.0, 0 - 5.0]])
    torch.testing.assert_close(adv, expected)
    six = torch.tensor([[100.0, 0.0, 10.0, 100.0, 0.0, 100.0]])
    adv6 = rloo_advantages(six, pairs=True)  # sample 4's baseline: (100 + 0 + 10 + 100) / 4
    assert adv6[0, 4].item() == pytest.approx(0.0 - 52.5) and adv6[0, 0].item() == pytest.approx(100 - 52.5)
    for a in (adv, adv6):
        torch.testing.assert_close(a.sum(1), torch.zeros(a.shape[0]), atol=1e-4, rtol=0)
    for bad in (torch.ones(1, 2), torch.ones(1, 5)):
        with pytest.raises(ValueError):
            rloo_advantages(bad, pairs=True)


def test_mirrored_row_random_negates_the_leaders_normals_only_in_lockstep():
    from latentcot.decoding.sampling import RowRandom

    plain, mirror = RowRandom([11, 12, 13, 14]), RowRandom([11, 12, 13, 14]).mirror([(0, 1), (2, 3)])
    a, b = plain.normal(5), mirror.normal(5)
    torch.testing.assert_close(b[[0, 2]], a[[0, 2]], rtol=0, atol=0)  # leaders: their own streams, unchanged
    torch.testing.assert_close(b[[1, 3]], -a[[0, 2]], rtol=0, atol=0)
    sub = mirror.select([1, 2, 3])  # row 0 has stopped: its follower draws its own noise again
    c = sub.normal(5)
    torch.testing.assert_close(c[2], -c[1], rtol=0, atol=0)
    assert not torch.equal(c[0].abs(), c[1].abs())
    # uniforms: every row its own stream (a follower's as if its mirrored normals had not been drawn)
    fresh, own = RowRandom([11, 12]).mirror([(0, 1)]), RowRandom([11, 12])
    fresh.normal(4)
    torch.randn(4, generator=own.streams[0].other_draw())  # only the leader drew its noise
    torch.testing.assert_close(fresh.uniform(3), torch.stack([own.streams[0].draw((3,)), own.streams[1].draw((3,))]),
                               rtol=0, atol=0)
    for bad in ([(0, 1), (1, 2)], [(1, 2), (0, 1)], [(0, 0)], [(0, 2), (1, 2)]):
        with pytest.raises(ValueError):
            RowRandom([1, 2, 3]).mirror(bad)


@pytest.mark.parametrize("mode", ["soft", "fuzzy"])
def test_antithetic_rollouts_feed_mirrored_noise_around_each_rows_own_mean(mode, arith_task):
    """Partners feed mean + eps and mean' - eps at every CoT step both take; at the first step the means are equal
    (same prompt), so the two inputs are mirror images around it. The rest of the rollout is unchanged."""
    m = _rloo("tiny-llama", rollout_mode=mode, group_size=4, antithetic=True, max_think_steps=6)
    examples = arith_task.load("train")[:2]
    rows, outs, recs = m.rollout_rows(examples, arith_task, keep_means=True)
    checked = 0
    for lead, follow in ((0, 1), (2, 3), (4, 5), (6, 7)):
        a, b = recs[lead], recs[follow]
        ga = [a.fed[pos] for pos, k, _ in a.choices if k == GAUSS]
        gb = [b.fed[pos] for pos, k, _ in b.choices if k == GAUSS]
        if ga and gb:
            torch.testing.assert_close(a.means[0], b.means[0])
        for t in range(min(len(ga), len(gb))):
            torch.testing.assert_close(gb[t] - b.means[t], -(ga[t] - a.means[t]), rtol=0, atol=1e-5)
            checked += 1
    assert checked >= 4
    plain = _rloo("tiny-llama", rollout_mode=mode, group_size=4, max_think_steps=6)
    _, _, base = plain.rollout_rows(examples, arith_task, keep_means=True)
    for lead in (0, 2, 4, 6):  # leaders roll out exactly as without antithetic pairs
        assert len(base[lead].fed) == len(recs[lead].fed)
        for x, y in zip(base[lead].fed, recs[lead].fed):
            assert (torch.equal(x, y) if torch.is_tensor(x) else x == y)


def test_rewards_loss_and_kl():
    scores = [{"correct_strict": True, "pred_strict": "3"}, {"correct_strict": False, "pred_strict": "4"},
              {"correct_strict": False, "pred_strict": None}]
    assert rewards_from_scores(scores).tolist() == [100.0, 10.0, 0.0]
    assert rewards_from_scores(scores, 1.0, 0.5, -1.0).tolist() == [1.0, 0.5, -1.0]
    with pytest.raises(ValueError):
        rewards_from_scores(scores, correct=float("nan"))
    # the flexible extraction decides when asked: a right last number without "The answer is" earns the reward
    flex = [{"correct_strict": False, "pred_strict": None, "correct_flexible": True, "pred_flexible": "3"},
            {"correct_strict": False, "pred_strict": None, "correct_flexible": False, "pred_flexible": "4"},
            {"correct_strict": False, "pred_strict": None, "correct_flexible": False, "pred_flexible": None}]
    assert rewards_from_scores(flex).tolist() == [0.0, 0.0, 0.0]
    assert rewards_from_scores(flex, match="flexible").tolist() == [100.0, 10.0, 0.0]
    with pytest.raises(ValueError):
        rewards_from_scores(flex, match="loose")
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    loss = policy_loss(logp, torch.tensor([2.0, -2.0]))
    assert loss.item() == pytest.approx(-(2 * -1.0 + -2 * -2.0) / 2)
    loss.backward()
    assert logp.grad.tolist() == [-1.0, 1.0]
    assert kl_k3(torch.tensor([-1.0]), torch.tensor([-1.0])).item() == 0.0
    assert kl_k3(torch.tensor([-1.0]), torch.tensor([-2.0])).item() == pytest.approx(math.exp(-1) + 1 - 1)


# --- the rollout record, replayed ------------------------------------------------------------------------------
@pytest.mark.parametrize("model", TINY)
@pytest.mark.parametrize("mode", ["soft", "fuzzy"])
def test_replayed_means_equal_rollout_means_on_padded_batches(model, mode, arith_task):
    m = _rloo(model, rollout_mode=mode)
    examples = [arith_task.load("train")[i] for i in (0, 7)]  # prompts of different lengths: left padding
    rows, outs, recs = m.rollout_rows(examples, arith_task, keep_means=True)
    assert len({len(r.prompt_ids) for r in recs}) > 1
    rep = m.replay(recs, keep_means=True)
    rollout_means = torch.stack([x for r in recs for x in r.means])  # (K, d)
    assert rollout_means.shape == rep.means.shape and rollout_means.shape[0] > 0
    assert (rollout_means - rep.means).abs().max().item() < 1e-5
    # every row's choices: one Gaussian term per CoT step, then sampled answer tokens
    for r in recs:
        assert sum(k == GAUSS for _, k, _ in r.choices) == r.cot_steps


@pytest.mark.parametrize("model", TINY)
def test_hard_rollout_replays_sampled_tokens(model, arith_task):
    """Hard mode: every choice is a sampled token; the replayed log-probs equal a plain HF forward over the ids."""
    m = _rloo(model, rollout_mode="hard")
    ex = arith_task.load("train")[:2]
    rows, outs, recs = m.rollout_rows(ex, arith_task)
    rep = m.replay(recs)
    model_ = m.backbone.model
    for b, r in enumerate(recs[:3]):
        ids = torch.tensor([r.prompt_ids + [t for t in r.fed]])
        with torch.no_grad():
            lp = torch.log_softmax(model_(input_ids=ids).logits[0].float(), -1)
        start = len(r.prompt_ids) - 1
        want = sum(float(lp[start + pos, tok]) for pos, kind, tok in r.choices)
        assert all(kind == TOKEN for _, kind, _ in r.choices)
        assert rep.logp[b].item() == pytest.approx(want, abs=1e-4)


def test_gradients_flow_through_gaussian_term_to_trainable_weights_only(arith_task):
    m = _rloo("tiny-llama", rollout_mode="soft", lora_r=4)
    rows, outs, recs = m.rollout_rows(arith_task.load("train")[:2], arith_task)
    for r in recs:  # keep only the Gaussian terms
        r.choices = [c for c in r.choices if c[1] == GAUSS]
    assert any(r.choices for r in recs)
    m.train()
    rep = m.replay(recs)
    rep.logp.sum().backward()
    trainable = dict(m.trainable_parameters())
    assert trainable and all("lora" in n for n in trainable)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())
    for n, p in m.named_parameters():
        if n not in trainable:
            assert p.grad is None, n


@pytest.mark.parametrize("model", TINY)
def test_freeze_embeddings_leaves_every_other_gradient_unchanged(model, arith_task):
    """freeze_embeddings changes what trains, not the estimator: on the same rollouts, every other weight gets the
    same gradient as without it, E (and a head tied to it) gets none, and E is no trainable weight."""
    exs = arith_task.load("train")[:2]
    grads = []
    for freeze in (False, True):
        m = _rloo(model, rollout_mode="fuzzy", freeze_embeddings=freeze)
        m.train()
        m.loss(exs, arith_task).loss.backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
        E = m.backbone.model.get_input_embeddings().weight
        assert E.requires_grad is not freeze
        if freeze:
            assert E.grad is None
            assert all(p is not E for _, p in m.trainable_parameters())
    full, frozen = grads
    assert set(full) == set(frozen)
    checked = 0
    for n, g in frozen.items():
        if g is None:
            continue
        assert full[n] is not None and torch.allclose(g, full[n], rtol=1e-5, atol=1e-7), n
        checked += int(g.abs().sum() > 0)
    assert checked > 0, "no gradient to compare"
    embed_like = [n for n in full if full[n] is not None and frozen[n] is None]
    assert embed_like and all("emb" in n or "wte" in n or "lm_head" in n for n in embed_like), embed_like


def test_kl_to_start_policy_is_zero_at_start(arith_task):
    for settings in ({"lora_r": 4}, {}):
        m = _rloo("tiny-gpt2", rollout_mode="fuzzy", kl_coef=0.1, **settings)
        out = m.loss(arith_task.load("train")[:2], arith_task)
        assert out.logs["kl"] == pytest.approx(0.0, abs=1e-4)
        assert set(out.logs) >= {"reward", "reward_std", "all_equal_groups", "accuracy", "cot_len", "entropy"}


def test_reward_match_picks_the_scorers_extraction(arith_task, monkeypatch):
    """reward_match=flexible rewards what the task's flexible extraction calls correct (and logs that accuracy)."""
    def score(ex, text):  # every output right by the flexible extraction, unanswered by the strict one
        return {"pred_strict": None, "correct_strict": False, "pred_flexible": ex.answer, "correct_flexible": True}

    monkeypatch.setattr(arith_task, "score", score)
    exs = arith_task.load("train")[:2]
    for match, reward in (("strict", 0.0), ("flexible", 100.0)):
        out = _rloo("tiny-gpt2", rollout_mode="hard", reward_match=match).loss(exs, arith_task)
        assert (out.logs["reward"], out.logs["accuracy"]) == (reward, reward)


# --- resume ----------------------------------------------------------------------------------------------------
def _train_tiny(task, out, settings: dict, steps: int, seed: int, stop_after: int | None = None):
    """A tiny-gpt2 rloo run of `steps` steps at lr 1e-3 (constant) into `out` (resumes there); (summary, final
    weights, None when stopped early)."""
    m = _rloo("tiny-gpt2", **settings)
    cfg = m.train_config(TrainConfig(lr=1e-3, max_steps=steps, save_every=0, max_grad_norm=1.0))
    summary = train(m, task, task.load("train"), cfg, out, seed=seed, progress=False, stop_after=stop_after)
    return summary, None if summary.get("stopped_early") else load_file(str(out / "trainable.safetensors"))


def _changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_killed_and_resumed_rloo_run_is_bit_identical(tmp_path, arith_task, mode):
    settings = {"rollout_mode": mode, "group_size": 2, "prompts_per_step": 2, "micro_batch": 2}
    cfg = _rloo("tiny-gpt2", **settings).train_config(TrainConfig(max_steps=4))
    assert (cfg.train_batch_size, cfg.grad_accum) == (1, 2)
    _, a = _train_tiny(arith_task, tmp_path / "full", settings, 4, seed=1)
    s, _ = _train_tiny(arith_task, tmp_path / "part", settings, 4, seed=1, stop_after=2)
    assert s["stopped_early"]
    _, b = _train_tiny(arith_task, tmp_path / "part", settings, 4, seed=1)
    assert _changed(a, _rloo("tiny-gpt2", **settings).trainable_state_dict()), "training changed nothing"
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_rloo_run_extended_at_a_constant_lr_equals_a_longer_run(tmp_path, arith_task):
    """A finished 2-step run resumed with max_steps=4 (constant lr, no warmup: rloo reads the step count for nothing
    else) ends with the same weights as a 4-step run from the start: how the README's 128-step soft runs continued
    the 64-step ones."""
    settings = {"rollout_mode": "soft", "group_size": 4, "prompts_per_step": 2, "micro_batch": 4}
    # with seed 2, steps 1, 2 and 3 have mixed rewards (step 0 none), so both halves train
    _, a = _train_tiny(arith_task, tmp_path / "long", settings, 4, seed=2)
    _, two = _train_tiny(arith_task, tmp_path / "ext", settings, 2, seed=2)
    _, b = _train_tiny(arith_task, tmp_path / "ext", settings, 4, seed=2)
    assert _changed(two, _rloo("tiny-gpt2", **settings).trainable_state_dict()), "the first part trained nothing"
    assert _changed(two, b), "the extension trained nothing"
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("model", TINY)
def test_gradient_checkpointing_gives_an_rloo_step_the_same_loss_and_gradients(tmp_path, arith_task, model):
    """`train.gradient_checkpointing=true` (the README's way to fit 2 x 32 on smollm2 in less memory) recomputes the
    policy's replay in backward: the same rollouts, loss, KL and (to float rounding) gradients as without it."""
    from latentcot.latent.rollout import checkpointing_on

    settings = {"rollout_mode": "soft", "group_size": 4, "prompts_per_step": 2, "micro_batch": 4, "kl_coef": 0.5}
    runs = {}
    for on in (False, True):
        m = _rloo(model, **settings)
        cfg = m.train_config(TrainConfig(lr=1e-3, max_steps=1, max_grad_norm=0, gradient_checkpointing=on))
        train(m, arith_task, arith_task.load("train"), cfg, tmp_path / str(on), seed=5, progress=False)  # mixed rewards
        assert checkpointing_on(m.backbone.model) == on
        log = json.loads((tmp_path / str(on) / "train_log.jsonl").read_text().splitlines()[0])
        runs[on] = (m, log)
    (a, log_a), (b, log_b) = runs[False], runs[True]
    for key in ("reward", "loss", "logp", "kl", "cot_len"):
        assert log_b[key] == pytest.approx(log_a[key], rel=1e-5, abs=1e-6), key
    grads = [(n, p.grad, q.grad) for (n, p), (_, q) in zip(a.trainable_parameters(), b.trainable_parameters())]
    assert any(g is not None and g.abs().sum() > 0 for _, g, _ in grads), "no gradient to compare"
    for n, ga, gb in grads:
        assert (ga is None) == (gb is None), n
        if ga is not None:
            torch.testing.assert_close(gb, ga, atol=1e-6, rtol=1e-4, msg=n)


# --- bad input -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting,field", [
    ("group_size=1", "group_size"),
    ("noise_scale=0", "noise_scale"),
    ("soft_tau=-1", "soft_tau"),
    ("fuzzy_tau=0", "fuzzy_tau"),
    ("reward_correct=nan", "reward_correct"),
    ("micro_batch=3", "micro_batch"),
    ("rollout_mode=sharp", "rollout_mode"),
    ("reward_match=loose", "reward_match"),
    ("freeze_embeddings=true lora_r=4", "freeze_embeddings"),
    ("global_batch_size=4", "global_batch_size"),
    ("antithetic=true", "antithetic"),
    ("antithetic=true group_size=4 rollout_mode=hard", "antithetic"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, setting, field):
    out = tmp_path / "run"
    args = ["train", "--method", "rloo", "--model", "tiny-gpt2", "--task", "pointer_chase", "--out", str(out),
            "--no-progress", "group_size=2", "prompts_per_step=2", "max_steps=1", *setting.split()]
    if setting.startswith("fuzzy"):
        args.append("rollout_mode=fuzzy")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0], err
    assert not out.exists()


def test_global_batch_size_is_accepted_only_as_the_groups_give_it():
    from latentcot.errors import ConfigError

    m = _rloo("tiny-gpt2", group_size=2, prompts_per_step=4, micro_batch=4)
    derived = m.train_config(TrainConfig(max_steps=1))
    assert (derived.train_batch_size, derived.grad_accum) == (2, 2)
    same = m.train_config(TrainConfig(max_steps=1, global_batch_size=4))  # 4 prompts per step: what the groups give
    assert (same.train_batch_size, same.grad_accum) == (2, 2)
    assert split_global_batch(same.global_batch_size, same.train_batch_size, same.grad_accum, 1) == (2, 4)
    with pytest.raises(ConfigError, match="global_batch_size.*prompts_per_step=4"):
        m.train_config(TrainConfig(max_steps=1, global_batch_size=8))


# --- the word-problem task and the RL diagnostics ----------------------------------------------------------------
def test_word_arith_answers_follow_their_rationale_and_splits_are_disjoint():
    from latentcot.tasks import get_task

    task = get_task("word_arith", num_train=300, num_valid=50, num_test=50)
    splits = {s: task.load(s) for s in ("train", "valid", "test")}
    assert [len(v) for v in splits.values()] == [300, 50, 50]
    assert task.load("test") == splits["test"]  # deterministic
    qs = [{ex.question for ex in v} for v in splits.values()]
    assert not (qs[0] & qs[1] or qs[0] & qs[2] or qs[1] & qs[2])
    for ex in splits["train"]:
        assert ex.rationale.rstrip(".").split("= ")[-1] == ex.answer and int(ex.answer) >= 0
        assert task.score(ex, f"{ex.rationale}\nThe answer is {ex.answer}.")["correct_strict"]
    assert {len(ex.steps) for ex in splits["train"]} == {1, 2}


def test_gold_nll_equals_the_sft_loss_and_entropy_profile(arith_task):
    from latentcot.analysis.rl import entropy_profile, gold_nll
    from latentcot.models.splice import tokens

    m = _rloo("tiny-gpt2")
    examples = arith_task.load("test")[:4]
    rows = [[tokens(m.prompt_ids(ex, arith_task)), tokens(m.target_ids(ex, arith_task, True), labels=True)]
            for ex in examples]
    with torch.no_grad():
        want = m.sft_loss(rows).loss.item()
    assert gold_nll(m, arith_task, examples, batch_size=3) == pytest.approx(want, rel=1e-5)
    recs = [{"extra": {"entropy": [1.0, 2.0, 3.0]}}, {"extra": {"entropy": [3.0]}}, {"output": "no extra"}]
    assert entropy_profile(recs) == [2.0, 2.0, 3.0]


def test_pointer_chase_recipe_gauss_ablation_stops_only_the_gaussian_gradient(arith_task, monkeypatch):
    """--ablate-gauss-grad (a diagnostic): the Gaussian terms keep their values but pass no gradient; token terms do."""
    import importlib.util
    import sys
    from pathlib import Path

    import latentcot.training.rollout as rollout

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    monkeypatch.syspath_prepend(str(recipes))
    monkeypatch.setattr(rollout, "soft_step_log_density", rollout.soft_step_log_density)  # restored after the test
    spec = importlib.util.spec_from_file_location("rpc", recipes / "rloo_pointer_chase.py")
    rpc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rpc)
    m = _rloo("tiny-gpt2", rollout_mode="soft")
    _, _, recs = m.rollout_rows(arith_task.load("train")[:2], arith_task)
    m.train()
    before = m.replay(recs)
    rpc.ablate_gauss_grad()
    after = m.replay(recs)
    assert torch.allclose(before.choice_logp, after.choice_logp)
    kinds = torch.tensor([k == GAUSS for r in recs for _, k, _ in r.choices])
    assert kinds.any() and (~kinds).any()
    params = [p for _, p in m.trainable_parameters()]
    for rep, gauss_grad in ((before, True), (after, False)):
        g = torch.autograd.grad(rep.choice_logp[kinds].sum(), params, allow_unused=True, retain_graph=True) \
            if rep.choice_logp[kinds].requires_grad else [None]
        assert any(x is not None and x.abs().sum() > 0 for x in g) is gauss_grad
        t = torch.autograd.grad(rep.choice_logp[~kinds].sum(), params, allow_unused=True)
        assert any(x is not None and x.abs().sum() > 0 for x in t)
    sys.modules.pop("rloo_common", None)
