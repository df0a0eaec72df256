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


def _nucleus_cases() -> torch.Tensor:
    """Logits (rows, 300) whose nuclei at top_p 0.9 span a few tokens to most of the vocabulary, with rows where two
    equal probabilities straddle the cut (tokens 0 and 1 tie right at it) and rows of exact ties everywhere."""
    g = torch.Generator().manual_seed(3)
    sharp = torch.randn(24, 300, generator=g) * torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.1]).repeat(4)[:, None]
    weights = torch.full((4, 300), 0.01 / 296)
    weights[:, 2:4] = torch.tensor([0.6, 0.25])
    weights[:, :2] = 0.07  # sorted masses 0.6, 0.85, 0.92: the cut at 0.9 falls between tokens 0 and 1
    straddle = weights.log()
    flat = torch.zeros(2, 300)  # every probability equal
    steps = torch.arange(300.0).div(50).floor().neg().expand(2, 300)  # six plateaus of 50 equal probabilities
    return torch.cat([sharp, straddle, flat, steps])


def test_the_top_p_cut_on_slices_is_the_full_sort_bit_for_bit():
    """On CPU, filter_probs cuts the nucleus inside top-k slices (sampling._cut_in_slice) where it can prove the
    result equals the full sort's, and sorts the other rows: the output must be the full sort's, bit for bit."""
    from latentcot.decoding.sampling import _cut_in_slice, _sorted_cut

    logits = _nucleus_cases()
    probs = torch.softmax(logits, -1)
    sorted_mass = probs.sort(-1, descending=True).values.cumsum(-1)
    assert bool((sorted_mass[24:28, 1] < 0.9).all() and (sorted_mass[24:28, 2] >= 0.9).all())  # the straddle rows
    # The cases cover every branch: rows cut in a slice of 4, rows only in a slice of 32, rows left to the sort,
    # and the rows with a tie at the cut refused by the slice that holds the cut.
    ok4, ok32 = _cut_in_slice(probs.clone(), 0.9, 4)[2], _cut_in_slice(probs.clone(), 0.9, 32)[2]
    assert int(ok4.sum()) > 0 and int((ok32 & ~ok4).sum()) > 0 and int((~ok32).sum()) > 0
    assert not bool(ok32[24:28].any())
    for top_k, top_p, min_p in [(0, 0.9, 0.0), (0, 0.5, 0.0), (0, 0.99, 0.01), (20, 0.9, 0.0), (0, 0.3, 0.2)]:
        for temperature in (1.0, 0.7):
            ref = filter_probs(logits, temperature, top_k, top_p, min_p, nucleus_widths=())
            for widths in [(4, 32), (32,), (4,), (1, 2, 299), (64, 4096)]:
                got = filter_probs(logits, temperature, top_k, top_p, min_p, nucleus_widths=widths)
                assert torch.equal(got, ref), (top_k, top_p, min_p, temperature, widths)
    # the default (slices from sampling.NUCLEUS_MIN_VOCAB tokens up) on a vocabulary that size
    scales = torch.tensor([9.0, 6, 3, 1, 0.3, 0])[:, None]
    wide = torch.randn(6, 5000, generator=torch.Generator().manual_seed(4)) * scales
    assert torch.equal(filter_probs(wide, 0.7, 0, 0.95), filter_probs(wide, 0.7, 0, 0.95, nucleus_widths=()))
    # the full sort itself, against a hand cut: keep the smallest prefix of the sorted row reaching top_p
    p = torch.tensor([[0.0625, 0.5, 0.1875, 0.25]])
    assert _sorted_cut(p, 0.7).tolist() == [[0.0, 0.5, 0.0, 0.25]]
    assert _sorted_cut(p, 0.75).tolist() == [[0.0, 0.5, 0.0, 0.25]]  # the mass before 0.1875 is 0.75: reached
    assert _sorted_cut(p, 0.76).tolist() == [[0.0, 0.5, 0.1875, 0.25]]


def test_sample_from_equals_the_counting_rule():
    """sample_from finds the token by a binary search on CPU; the rule it implements is the count of cumulative
    masses <= u x total (then the last positive token where rounding puts the threshold at the total)."""
    probs = filter_probs(_nucleus_cases(), 0.7, 0, 0.9, 0.01)
    seeds = [row_seed(0, f"q{i}", 0) for i in range(probs.shape[0])]
    rand = RowRandom(seeds)
    got = [sample_from(probs, rand) for _ in range(50)]
    stream = RowRandom(seeds)
    for i in range(50):
        u = stream.uniform()
        cdf = probs.cumsum(-1)
        count = (cdf <= u[:, None] * cdf[:, -1:]).sum(-1)
        assert bool((count < probs.shape[-1]).all())
        assert got[i].tolist() == count.tolist()
    exact = torch.tensor([[0.25, 0.25, 0.5]] * 3)  # u x total equal to a cumulative mass: the next token
    assert sample_from(exact, FixedUniform([0.25, 0.5, 0.0])).tolist() == [1, 2, 0]
    top = torch.tensor([[0.3, 0.7, 0.0, 0.0], [0.0, 0.4, 0.0, 0.6]])
    assert sample_from(top, FixedUniform([1.0, 1.0])).tolist() == [1, 3]  # threshold = total: the last positive


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


class _PlainStreams:
    """The stream definition drawn the plain way: one generator per row, every draw straight from it."""

    def __init__(self, seeds):
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def uniform(self, shape, rows):
        gens = self.gens if rows is None else [self.gens[b] for b in rows]
        return torch.stack([torch.rand(shape, generator=g) for g in gens])

    def normal(self, gens, d):
        return torch.stack([torch.randn(d, generator=g) for g in gens])


@pytest.mark.parametrize("block", [1024, 40, 1])
def test_draws_ahead_give_the_plain_draws(monkeypatch, block):
    """Loops of same-shape uniform draws are served from blocks drawn ahead; every number equals the plain
    one-draw-at-a-time stream's, through row subsets, views, shape changes, normals, Gamma draws and direct use of
    the generators (a random script of 600 operations, small blocks so that blocks run out and restart)."""
    import latentcot.decoding.sampling as sampling

    monkeypatch.setattr(sampling, "BLOCK_NUMBERS", block)
    seeds = [row_seed(3, f"q{i}", 0) for i in range(6)]
    rand, plain = RowRandom(seeds), _PlainStreams(seeds)
    script = torch.Generator().manual_seed(0)

    def pick(n):
        return int(torch.randint(0, n, (), generator=script))

    served = 0
    shape = (15,)
    for _ in range(600):
        op = pick(20)
        if op < 14:  # mostly long runs of one shape, as a decoding loop draws
            if pick(10) == 0:
                shape = [(), (3,), (15,), (2, 3)][pick(4)]
            rows = None if pick(3) else sorted(set(pick(6) for _ in range(1 + pick(6))))
            got, want = rand.uniform(*shape, rows=rows), plain.uniform(shape, rows)
            served += sum(s.block is not None for s in rand.streams)
        elif op < 16:  # a view over some rows draws, then its rows keep drawing in the full object
            keep = sorted(set(pick(6) for _ in range(1 + pick(6))))
            got, want = rand.select(keep).uniform(*shape), plain.uniform(shape, keep)
        elif op == 16:
            got, want = rand.normal(4), plain.normal(plain.gens, 4)
        elif op == 17:
            conc = torch.full((6, 3), 0.7)
            got = rand.gamma(conc)
            want = torch.stack([
                torch._standard_gamma(conc[b], generator=torch.Generator().manual_seed(
                    int(torch.randint(0, 2**62, (), generator=g))))
                for b, g in enumerate(plain.gens)
            ])
        elif op == 18:  # direct use of a row's generator (as SoftCoT++'s chain seeds do)
            b = pick(6)
            got, want = torch.rand(2, generator=rand.generators[b]), torch.rand(2, generator=plain.gens[b])
        else:
            both = RowRandom.concat([rand.select([4, 5]), rand.select([0, 1, 2, 3])])
            got, want = both.uniform(*shape), plain.uniform(shape, [4, 5, 0, 1, 2, 3])
        assert torch.equal(got, want)
    assert served > 0  # the blocks were used, not only the plain path
    for g, h in zip(rand.generators, plain.gens):  # and every generator ends where the plain one does
        assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=h))


def test_a_drawing_loop_draws_one_block_per_many_steps():
    """After two same-shape draws the rows draw a block together; later steps index it (the draws returned are
    fresh tensors: writing to one does not change the next)."""
    rand = RowRandom([row_seed(0, f"q{i}", 0) for i in range(4)])
    first = [rand.uniform(15) for _ in range(3)]
    assert all(s.block is not None and s.block is rand.streams[0].block for s in rand.streams)
    a = rand.uniform(15)
    a.zero_()
    b = rand.uniform(15)
    assert bool((b > 0).all()) and not torch.equal(b, first[-1])


@pytest.mark.parametrize("block", [1024, 40, 1])
def test_mapped_draws_equal_the_map_of_the_plain_draws(monkeypatch, block):
    """`mapped_uniform(fn, ...)` maps a block drawn ahead once and hands out views of it; every number equals fn
    applied to the plain stream's draw of that step (fn = the Gumbel noise's own map, and a second map so that two
    maps of one block take turns), through plain draws of the same shape in between, row views, other shapes and
    normals (a random script of 500 operations; small blocks run out and restart)."""
    import latentcot.decoding.sampling as sampling
    from latentcot.models.soft import _log_neg_log

    monkeypatch.setattr(sampling, "BLOCK_NUMBERS", block)
    seeds = [row_seed(5, f"q{i}", 0) for i in range(5)]
    rand, plain = RowRandom(seeds), _PlainStreams(seeds)
    script = torch.Generator().manual_seed(1)

    def square_root(u):
        return u.sqrt_()

    def pick(n):
        return int(torch.randint(0, n, (), generator=script))

    shape = (15,)
    for step in range(500):
        op = pick(16)
        if op < 10:
            if pick(25) == 0:
                shape = [(), (4,), (15,), (2, 3)][pick(4)]
            fn = (_log_neg_log, square_root)[pick(4) == 0]
            keep = None if pick(4) else sorted(set(pick(5) for _ in range(1 + pick(5))))
            view = rand if keep is None else rand.select(keep)
            got, want = view.mapped_uniform(fn, *shape), fn(plain.uniform(shape, keep))
        elif op < 14:
            got, want = rand.uniform(*shape), plain.uniform(shape, None)
        elif op == 14:
            got, want = rand.normal(3), plain.normal(plain.gens, 3)
        else:
            got, want = rand.uniform(4, rows=[3, 1]), plain.uniform((4,), [3, 1])
        assert torch.equal(got, want), step
    for g, h in zip(rand.generators, plain.gens):
        assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=h))


@pytest.mark.parametrize("views", [False, True])
def test_gumbel_noise_is_mapped_once_per_block(monkeypatch, views):
    """A Gumbel-noise loop maps its draws one step at a time until the rows draw a block ahead (third draw), then maps
    that whole block once and serves views of it: 60 steps of 4 rows x 15 numbers (blocks of 1024 // 15 = 68 steps)
    make four maps, the last of shape (68, 4, 15). The values are the Gumbel formula's on the plain stream's draws.
    views: each step draws through a new view of all rows (`select`, as the thinking controller does), and the
    last 10 steps through a view of rows 1 and 3 only: the map is still made once."""
    import latentcot.models.soft as soft

    shapes = []
    real = soft._log_neg_log

    def counted(u):
        shapes.append(tuple(u.shape))
        return real(u)

    monkeypatch.setattr(soft, "_log_neg_log", counted)
    seeds = [row_seed(0, f"q{i}", 0) for i in range(4)]
    rand, plain = RowRandom(seeds), _PlainStreams(seeds)
    for step in range(60):
        keep = [1, 3] if views and step >= 50 else None
        got = gumbel_noise(rand.select(keep or range(4)) if views else rand, 15)
        u = plain.uniform((15,), keep).clamp(1e-10, 1 - 1e-7)
        assert torch.equal(got, -torch.log(-torch.log(u))), step
    assert shapes == [(4, 15)] * 3 + [(68, 4, 15)]
