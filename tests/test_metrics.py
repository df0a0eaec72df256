"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from latentcot.eval.metrics import compute_metrics, majority_vote, pass_at_k


def test_pass_at_k_matches_the_combinatorial_formula():
    assert pass_at_k(5, 0, 1) == 0.0
    assert pass_at_k(5, 5, 3) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(10, 3, 4) == pytest.approx(1 - math.comb(7, 4) / math.comb(10, 4))


def test_majority_vote_tie_break_and_missing_answers():
    assert majority_vote(["3", "4", "4"]) == "4"
    assert majority_vote(["3", "4"]) == "3"  # tie: first seen wins
    assert majority_vote([None, None, "7"]) == "7"  # no-answer never wins
    assert majority_vote([None, None]) is None
    assert majority_vote(["2.0", "2", "5"], lambda a, b: float(a) == float(b)) == "2.0"


def _rec(q, seed, sample, ok, pred):
    return {"id": q, "seed": seed, "sample": sample, "gold": "1", "pred_strict": pred, "pred_flexible": pred,
            "correct_strict": ok, "correct_flexible": ok, "generated_tokens": 10, "decode_steps": 12, "seconds": 0.5}


def test_compute_metrics_over_seeds_and_samples():
    recs = [_rec("a", 0, 0, True, "1"), _rec("a", 0, 1, False, "2"), _rec("b", 0, 0, False, "3"), _rec("b", 0, 1, False, None),
            _rec("a", 1, 0, True, "1"), _rec("a", 1, 1, True, "1"), _rec("b", 1, 0, True, "1"), _rec("b", 1, 1, False, "5")]
    m = compute_metrics(recs, lambda p, g: p == g, ks=(1, 2))
    # seed 0: 1/4 correct samples; seed 1: 3/4
    assert m["accuracy_strict"]["mean"] == pytest.approx(50.0)
    assert m["accuracy_strict"]["std"] == pytest.approx(25.0)
    # pass@2 seed 0: a yes, b no -> 50; seed 1: both -> 100
    assert m["pass@2_strict"]["mean"] == pytest.approx(75.0)
    # sc@2 seed 0: a tie 1 vs 2 -> first "1" correct; b "3" wrong -> 50; seed 1: a "1", b tie "1" first -> 100
    assert m["sc@2_strict"]["mean"] == pytest.approx(75.0)
    assert m["questions"] == 2 and m["samples"] == 8 and m["decode_steps"]["mean"] == 12
    assert m["seconds_per_question"] == pytest.approx(1.0)


def test_mean_se_by_hand():
    from latentcot.eval.metrics import mean_se

    # 1, 2, 6: mean 3, sample variance ((4 + 1 + 9) / 2) = 7, standard error sqrt(7 / 3)
    assert mean_se([1.0, 2.0, 6.0]) == pytest.approx((3.0, (7 / 3) ** 0.5))
    assert mean_se([4.0]) == (4.0, 0.0)
    with pytest.raises(ValueError):
        mean_se([])
