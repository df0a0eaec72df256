"""SoftCoT++: the InfoNCE term against a hand computation, K distinct thought sets per question at batch >= 2,
the majority vote and its per-chain metrics, reuse of SoftCoT weights, and the errors a user can cause."""

from __future__ import annotations

import json
import math

import pytest
import torch

from latentcot.cli.main import main
from latentcot.decoding.engine import RowOutput
from latentcot.decoding.sampling import GenerationConfig, RowRandom, row_seed
from latentcot.errors import ConfigError, ModelError
from latentcot.eval.metrics import majority_vote
from latentcot.eval.runner import evaluate
from latentcot.methods import build_method
from latentcot.methods.base import generate_batched
from latentcot.methods.softcot_pp import SoftCoTPPConfig, chain_random
from latentcot.models.backbone import Backbone
from latentcot.models.loading import load_model
from latentcot.objectives.contrastive import dropout_copy, info_nce
from latentcot.tasks.base import Example

GEN = GenerationConfig(max_new_tokens=4)


def _pp(backbone: str = "tiny-gpt2", **settings):
    torch.manual_seed(0)
    model, tok = load_model(backbone)
    settings = {"assistant": "tiny-llama", "num_thoughts": 2, "num_thoughts_train": 3, "num_chains": 3, **settings}
    return build_method("softcot_pp", settings, Backbone(model, tok, backbone))


def test_info_nce_equals_a_hand_computation():
    # K = 2 sets of M = 2 numbers; student s1 = (1, 0), s2 = (0, 1); teacher t1 = (1, 1), t2 = (0, 2); tau = 0.5.
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], requires_grad=True)
    teacher = torch.tensor([[[1.0, 1.0], [0.0, 2.0]]])
    # cosines: s1.t1 = 1/sqrt2, s1.t2 = 0; s2.t1 = 1/sqrt2, s2.t2 = 1; logits = cosines / 0.5
    r2 = math.sqrt(2.0)
    loss1 = -math.log(math.exp(r2) / (math.exp(r2) + math.exp(0.0)))
    loss2 = -math.log(math.exp(2.0) / (math.exp(r2) + math.exp(2.0)))
    got = info_nce(student, teacher, temperature=0.5)
    assert got.item() == pytest.approx((loss1 + loss2) / 2, rel=1e-6)
    got.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0


def test_info_nce_is_per_question_at_any_batch_size():
    """Batch 3 = mean of each question alone: sets of different questions never meet (the official loop's bug)."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 4, 6, generator=g), torch.randn(3, 4, 6, generator=g)
    alone = [info_nce(s[b : b + 1], t[b : b + 1]).item() for b in range(3)]
    assert info_nce(s, t).item() == pytest.approx(sum(alone) / 3, rel=1e-6)
    # identical sets carry no contrast: the loss is log K whatever the copies
    same = torch.ones(1, 4, 6)
    assert info_nce(same, same).item() == pytest.approx(math.log(4), rel=1e-6)


def test_dropout_copy_zeroes_and_rescales():
    torch.manual_seed(3)
    x = torch.ones(1000)
    y = dropout_copy(x, 0.5)
    assert set(y.unique().tolist()) <= {0.0, 2.0} and 300 < int((y == 0).sum()) < 700
    assert torch.equal(dropout_copy(x, 0.5, training=False), x)


def test_k_distinct_thought_sets_at_batch_two_match_each_question_alone(arith_task):
    m = _pp()
    examples = [arith_task.load("test")[0], Example("long", "1234+56789+1=?" * 3, "0", "x")]  # left padding
    with torch.no_grad():
        both, prefill = m.chain_thoughts(examples, 2)  # (B*K, N, d)
        assert tuple(both.shape) == (6, 2, m.backbone.hidden_size) and prefill.shape == (6,)
        for b, ex in enumerate(examples):
            alone, _ = m.chain_thoughts([ex], 2)
            torch.testing.assert_close(both[3 * b : 3 * b + 3], alone, atol=1e-5, rtol=1e-5)
            sets = alone.reshape(3, -1)
            assert float(torch.cdist(sets, sets).add(torch.eye(3)).min()) > 1e-4, "the K sets must differ"


def test_loss_at_batch_two_has_both_terms_and_only_the_projection_trains(arith_task):
    m = _pp(contrastive_weight=0.5, contrastive_dropout=0.0)
    m.train()
    examples = arith_task.load("train")[:2]
    out = m.loss(examples, arith_task)
    assert out.loss.item() == pytest.approx(out.logs["lm_loss"] + 0.5 * out.logs["contrastive"], rel=1e-5)
    # p = 0: the copy is the set itself; the batch-2 term is the mean of each question's term alone
    alone = [m.loss([ex], arith_task).logs["contrastive"] for ex in examples]
    assert out.logs["contrastive"] == pytest.approx(sum(alone) / 2, rel=1e-5)
    out.loss.backward()
    assert {n for n, p in m.named_parameters() if p.grad is not None} == {"projection.proj.weight", "projection.proj.bias"}
    # the contrastive term changes the projection's gradient
    g_with = m.projection.proj.weight.grad.clone()
    m.zero_grad()
    m.cfg.contrastive_weight = 0.0
    m.loss(examples, arith_task).loss.backward()
    assert not torch.allclose(g_with, m.projection.proj.weight.grad)


def test_vote_picks_the_majority_chain(arith_task):
    m = _pp()
    ex = Example("q", "1+1=?", "7", "")
    chains = [RowOutput([1], "The answer is 5", "eos", decode_steps=3, prefill_tokens=10),
              RowOutput([1, 2], "so 7", "eos", decode_steps=4, prefill_tokens=10),
              RowOutput([1, 2, 3], "it is 7", "eos", decode_steps=5, prefill_tokens=10)]
    row = m.vote(ex, arith_task, chains)
    assert row.text == "so 7" and row.extra["chosen_chain"] == 1
    assert row.decode_steps == 12 and row.prefill_tokens == 30 and row.extra["generated_tokens_all_chains"] == 6
    assert [c["correct_strict"] for c in row.extra["chains"]] == [False, True, True]


def test_eval_batched_chains_vote_and_per_chain_metrics(tmp_path, arith_task):
    m = _pp(backbone="tiny-llama")
    examples = arith_task.load("test")[:3]
    gen = GenerationConfig(max_new_tokens=4, temperature=1.0, num_samples=2)
    met = evaluate(m, arith_task, examples, gen, [0], tmp_path, batch_size=4, progress=False)
    chains = met["chains"]
    assert chains["samples"] == 3 * 2 * 3  # questions x samples x K chains
    recs = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    # each row's strict correctness = the vote over its own K chains
    for r in recs:
        assert len(r["extra"]["chains"]) == 3
        preds = [c["pred_strict"] for c in r["extra"]["chains"]]
        voted = majority_vote(preds, arith_task.is_equivalent)
        assert r["correct_strict"] == (voted is not None and arith_task.is_equivalent(voted, r["gold"]))
    first = [r for r in recs if r["sample"] == 0]  # sc@K over the chains of sample 0 = those rows' accuracy
    assert chains["sc@3_strict"]["mean"] == pytest.approx(100 * sum(r["correct_strict"] for r in first) / len(first))
    per_chain = [c["correct_strict"] for r in recs for c in r["extra"]["chains"]]
    assert chains["pass@1_strict"]["mean"] == pytest.approx(100 * sum(per_chain) / len(per_chain))
    assert "pass@3_strict" in chains and "sc@3_strict" in chains and "pass@6_strict" in chains
    # sampled chains depend only on the row's seed: batch 1 gives the same records
    again = evaluate(m, arith_task, examples, gen, [0], tmp_path / "b1", batch_size=1, progress=False)
    assert again["accuracy_strict"] == met["accuracy_strict"]
    assert [json.loads(x)["output"] for x in (tmp_path / "b1" / "samples.jsonl").read_text().splitlines()] == [
        r["output"] for r in recs
    ]


def test_chain_random_streams_are_per_row():
    rand = RowRandom([row_seed(0, "a", 0), row_seed(0, "b", 0)])
    two = chain_random(rand, 3)
    one = chain_random(RowRandom([row_seed(0, "b", 0)]), 3)
    assert len(two) == 6
    assert torch.equal(two.uniform(4)[3:], one.uniform(4))
    assert chain_random(None, 3) is None


def test_softcot_weights_load_into_softcot_pp(arith_task):
    soft = build_method("softcot", {"assistant": "tiny-llama", "num_thoughts": 2}, _pp().backbone)
    pp = _pp()
    pp.load_trainable_state_dict(soft.trainable_state_dict(), "softcot run")
    assert torch.equal(pp.projection.proj.weight, soft.projection.proj.weight)
    out = generate_batched(pp, arith_task.load("test")[:2], arith_task, GEN, None)
    assert len(out) == 2 and all(len(o.extra["chains"]) == 3 for o in out)


def test_bad_values():
    for settings, field in [({"num_chains": 1}, "num_chains"), ({"contrastive_weight": -0.1}, "contrastive_weight"),
                            ({"contrastive_temperature": 0}, "contrastive_temperature"),
                            ({"contrastive_dropout": 1.0}, "contrastive_dropout"),
                            ({"num_chains": 2, "chain_token_ids": [5]}, "chain_token_ids"),
                            ({"num_chains": 2, "chain_token_ids": [5, 5]}, "chain_token_ids")]:
        with pytest.raises(ConfigError, match=field):
            SoftCoTPPConfig(**settings)
    with pytest.raises(ModelError, match="outside the vocabulary"):
        _pp(num_chains=2, chain_token_ids=[3, 10**7])


@pytest.mark.parametrize("setting,field", [("num_chains=1", "num_chains"), ("contrastive_weight=-1", "contrastive_weight")])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, setting, field):
    out = tmp_path / "o"
    argv = ["train", "--method", "softcot_pp", "--model", "tiny-gpt2", "--task", "gsm8k", "--out", str(out),
            "--no-progress", "assistant=tiny-llama", "max_steps=1", setting]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err and "Traceback" not in err
    assert not out.exists()


def test_mcnemar_exact_against_hand_values():
    from latentcot.eval.metrics import mcnemar_exact

    # n = 19, k = 8: 2 * sum_{i<=8} C(19, i) / 2^19 (the README's SoftCoT vs CoT: 8 against 11, p = 0.65)
    assert mcnemar_exact(8, 11) == pytest.approx(2 * sum(math.comb(19, i) for i in range(9)) / 2**19)
    assert round(mcnemar_exact(8, 11), 2) == 0.65
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32) and mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0
