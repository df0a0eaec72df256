"""The sampler and the per-row random streams: no zero-probability draws, no global RNG side effects, and no
silent greedy or fixed-seed fallback when a sampling path is called without streams."""

from __future__ import annotations

import pytest
import torch

from latentcot.decoding.engine import Engine
from latentcot.decoding.sampling import (
    GenerationConfig,
    MissingRandomError,
    RowRandom,
    filter_probs,
    next_tokens,
    row_seed,
    sample_from,
)
from latentcot.methods import build_method
from latentcot.models.soft import add_gaussian_noise, dirichlet_perturb, gumbel_noise
from latentcot.models.splice import splice, tokens
from latentcot.tasks.base import Example


class FixedUniform(RowRandom):
    """Streams whose uniform draws are fixed values (the extreme draws a real stream can return)."""

    def __init__(self, values: list[float]) -> None:
        super().__init__([0] * len(values))
        self.values = torch.tensor(values)

    def uniform(self, *shape: int, rows=None) -> torch.Tensor:
        return self.values.clone()


def test_a_zero_draw_never_returns_a_zero_probability_token():
    # Token 0 was filtered to probability 0; a draw of exactly 0.0 used to return it.
    probs = torch.tensor([[0.0, 0.0, 0.25, 0.75], [0.0, 0.5, 0.0, 0.5], [0.2, 0.8, 0.0, 0.0]])
    ids = sample_from(probs, FixedUniform([0.0, 0.0, 0.0]))
    assert ids.tolist() == [2, 1, 0]
    assert bool((probs.gather(1, ids[:, None]) > 0).all())


def test_the_largest_draw_never_returns_a_zero_probability_token():
    # Trailing zeros after the last kept token: a draw just below 1 (or rounding of u x total up to the
    # total) must give the last token of positive probability, not the clamped last index.
    probs = torch.tensor([[0.3, 0.7, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    ids = sample_from(probs, FixedUniform([1.0 - 2**-24, 1.0]))
    assert ids.tolist() == [1, 0]


def test_sampled_tokens_always_have_positive_probability():
    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(1))
    probs = filter_probs(logits, 1.0, top_k=3, top_p=0.9)
    rand = RowRandom([row_seed(0, f"q{i}", 0) for i in range(16)])
    for _ in range(200):
        ids = sample_from(probs, rand)
        assert bool((probs.gather(1, ids[:, None]) > 0).all())


def test_inverse_cdf_matches_the_distribution():
    """Frequencies of 20k draws agree with p (an independent check of the inverse-CDF rule)."""
    p = torch.tensor([0.1, 0.0, 0.6, 0.3])
    rand = RowRandom([row_seed(0, f"q{i}", 0) for i in range(2000)])
    counts = torch.zeros(4)
    for _ in range(10):
        counts += torch.bincount(sample_from(p.expand(2000, 4), rand), minlength=4)
    freq = counts / counts.sum()
    assert freq[1] == 0
    torch.testing.assert_close(freq, p, atol=0.015, rtol=0)


def test_streams_follow_their_definition():
    """Version 1 of the stream definition: each row is a CPU torch.Generator seeded with row_seed, so results
    for a given seed are those of earlier releases."""
    seeds = [row_seed(7, "a", 0), row_seed(7, "b", 1)]
    rand = RowRandom(seeds)
    u, n = rand.uniform(5), rand.normal(3)
    for b, s in enumerate(seeds):
        g = torch.Generator().manual_seed(s)
        torch.testing.assert_close(u[b], torch.rand(5, generator=g), rtol=0, atol=0)
        torch.testing.assert_close(n[b], torch.randn(3, generator=g), rtol=0, atol=0)
    conc = torch.tensor([[0.5, 1.0, 2.0], [3.0, 0.1, 1.0]])
    draws = RowRandom(seeds).gamma(conc)
    for b, s in enumerate(seeds):
        g = torch.Generator().manual_seed(s)
        sub = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (), generator=g)))
        torch.testing.assert_close(draws[b], torch._standard_gamma(conc[b], generator=sub), rtol=0, atol=0)


def _forbid_global_seeding(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a per-row stream reseeded a global generator")

    for mod, name in [(torch, "manual_seed"), (torch, "seed"), (torch.random, "manual_seed"),
                      (torch.cuda, "manual_seed"), (torch.cuda, "manual_seed_all")]:
        monkeypatch.setattr(mod, name, forbidden)


def test_streams_never_touch_the_global_generators(monkeypatch, tiny, arith_task):
    _forbid_global_seeding(monkeypatch)
    cpu = torch.get_rng_state()
    rand = RowRandom([row_seed(0, f"q{i}", 0) for i in range(3)])
    w = torch.softmax(torch.randn(3, 5, generator=torch.Generator().manual_seed(0)), -1)
    dirichlet_perturb(w, 1.0, rand)
    gumbel_noise(rand, 5)
    add_gaussian_noise(torch.zeros(3, 4), 1.0, rand)
    sample_from(w, rand)
    exs = [Example(id=f"q{i}", question=f"{i}+1=?", answer=str(i + 1)) for i in range(2)]
    for randomness in ("dirichlet", "gumbel"):
        m = build_method("soft_thinking", {"randomness": randomness, "max_think_steps": 3, "soft_top_k": 3}, tiny)
        m.generate(exs, arith_task, GenerationConfig(max_new_tokens=3, temperature=1.0), rand.select([0, 1]))
    assert torch.equal(torch.get_rng_state(), cpu)


def test_row_draws_ignore_the_global_generator():
    a = RowRandom([row_seed(1, "q", 0)])
    torch.manual_seed(123)
    first = (a.uniform(4), a.gamma(torch.ones(1, 3)))
    b = RowRandom([row_seed(1, "q", 0)])
    torch.manual_seed(999)
    torch.rand(10)
    second = (b.uniform(4), b.gamma(torch.ones(1, 3)))
    for x, y in zip(first, second):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_streams_leave_the_cuda_generators_alone():
    states = torch.cuda.get_rng_state_all()
    rand = RowRandom([row_seed(0, f"q{i}", 0) for i in range(2)], "cuda")
    dirichlet_perturb(torch.full((2, 3), 1 / 3, device="cuda"), 1.0, rand)
    rand.uniform(3)
    assert all(torch.equal(a, b) for a, b in zip(states, torch.cuda.get_rng_state_all()))


def test_sampling_without_streams_is_an_error(tiny, arith_task):
    logits = torch.randn(2, 10)
    sampled = GenerationConfig(temperature=0.7, max_new_tokens=3)
    with pytest.raises(MissingRandomError, match="RowRandom"):
        next_tokens(logits, sampled, None)
    assert next_tokens(logits, GenerationConfig(), None).tolist() == logits.argmax(-1).tolist()  # greedy needs none
    for fn in (lambda: gumbel_noise(None, 3), lambda: dirichlet_perturb(torch.ones(2, 3) / 3, 1.0, None),
               lambda: add_gaussian_noise(torch.zeros(2, 3), 1.0, None)):
        with pytest.raises(MissingRandomError):
            fn()
    eng = Engine(tiny)
    state = eng.prefill(splice([[tokens(tiny.encode("Hi there"))]], tiny.embed, 0))
    with pytest.raises(MissingRandomError):
        eng.generate(state, sampled, None)
    exs = [Example(id="q0", question="1+1=?", answer="2")]
    m = build_method("soft_thinking", {"randomness": "gumbel", "max_think_steps": 3}, tiny)
    with pytest.raises(MissingRandomError, match="Gumbel"):
        m.generate(exs, arith_task, GenerationConfig(max_new_tokens=2), None)  # greedy answer, random thinking
    fuzzy = build_method("soft_tokens", {"token_mode": "fuzzy", "max_think_steps": 3}, tiny)
    with pytest.raises(MissingRandomError):
        fuzzy.generate(exs, arith_task, sampled, None)
