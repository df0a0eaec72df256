"""Sampling settings, logits processing, and per-row random streams.

Every row of a batch (one question x one sample) owns a `torch.Generator` seeded from (run seed, question id,
sample index). All randomness a row consumes comes from its own stream, so sampled results depend only on the
seed and the question, never on the batch it shares. The streams never read, reseed or advance the global CPU or
CUDA generators, and a sampling path called without streams raises instead of falling back to greedy or seed 0.

The stream definition (version 1, `STREAM_VERSION`): row b's generator is `torch.Generator("cpu")` seeded with
`row_seed(seed, question id, sample)`; uniforms are `torch.rand(shape, generator=g)`, normals `torch.randn`,
Gamma draws `torch._standard_gamma` on a generator seeded from one `randint(0, 2**62)` of the row's stream.
A Mersenne-Twister generator has no batched form, so a draw loops over rows in Python (one `torch.rand` per row,
then one `torch.stack`: about 3 us per row and draw). Loops that draw the same shape step after step (Gumbel noise
while thinking, one uniform per sampled token) are served from blocks drawn ahead instead: `torch.rand` fills a
tensor one element after the other from the generator, so a block of m draws of a shape holds exactly the numbers
m separate draws would give, and rows that draw together share one block tensor, so a step's draw for the batch is
one indexing op. Any other use of a row's generator (another shape, normals, Gamma, direct access) first puts it
back where one-draw-at-a-time use would have left it (its state before the block, advanced by the draws handed
out). A loop that maps every draw through the same elementwise function (the Gumbel noise's log(-log u)) maps a
block once and indexes the mapped block (`RowRandom.mapped_uniform`). The definition is unchanged and results for a
given seed are those of earlier versions (tested against the plain loop).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from latentcot.config import check


@dataclass
class GenerationConfig:
    """Decoding settings shared by every method.

    Attributes:
        max_new_tokens: hard-token budget per sample (latent/soft steps have their own budgets).
        temperature: 0 = greedy; > 0 samples from softmax(logits / temperature).
        top_k: keep the k most likely tokens (0 = all).
        top_p: nucleus sampling mass in (0, 1] (1 = off).
        min_p: drop tokens below min_p x the top probability (0 = off).
        num_samples: samples per question (self-consistency, pass@k).
        stop: stop strings; the output is cut before the first one.
        ignore_eos: keep generating past EOS (benchmarks that need a fixed number of steps).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    num_samples: int = 1
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        check(self.max_new_tokens > 0, "max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        check(self.temperature >= 0, "temperature", f"must be >= 0 (0 = greedy), got {self.temperature}")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        check(self.top_k >= 0, "top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        check(0 <= self.min_p < 1, "min_p", f"must be in [0, 1), got {self.min_p}")
        check(self.num_samples >= 1, "num_samples", f"must be >= 1, got {self.num_samples}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def row_seed(seed: int, key: str, sample: int) -> int:
    """A 63-bit seed from (run seed, question id, sample index), stable across processes and platforms."""
    digest = hashlib.sha256(f"{seed}|{key}|{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


STREAM_VERSION = 1


class MissingRandomError(ValueError):
    """A sampling path was called without per-row random streams (a programming error, not a user error)."""


def require_random(rand: RowRandom | None, what: str) -> RowRandom:
    """`rand`, or MissingRandomError naming the sampling path `what` that needs it."""
    if rand is None:
        raise MissingRandomError(
            f"{what} draws random numbers but no per-row random streams were given: pass a RowRandom "
            "(one stream per row, e.g. RowRandom([row_seed(seed, question_id, sample), ...]))"
        )
    return rand


BLOCK_NUMBERS = 1024  # uniforms per row and block drawn ahead (a block of shape (15,) holds 68 draws)


_Mapped = tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], torch.device, torch.Tensor]  # `_Stream.mapped`


class _Stream:
    """One row's generator, with the uniforms of a drawing loop taken from a block drawn ahead.

    Attributes:
        gen: the row's generator.
        block: (rows, m, *shape) uniforms drawn ahead for the streams that started the block together, or None.
        row: this stream's row of `block`.
        used: draws of `block[row]` handed out.
        mark: the generator's state before the block was drawn.
        shape: the shape of the last uniform draw; streak: how many uniform draws of that shape in a row.
        leader: for antithetic pairs (`RowRandom.mirror`), the stream whose normal draws this one mirrors, or None.
        mapped: (block, fn, device, fn of the block by step on that device) of `RowRandom.mapped_uniform`, kept on
            the streams (not on the `RowRandom`) so that the row views a decode loop makes step by step (`select`)
            share one map, or None.
    """

    __slots__ = ("gen", "block", "row", "used", "mark", "shape", "streak", "leader", "mapped")

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator(device="cpu")
        self.gen.manual_seed(int(seed))
        self.block: torch.Tensor | None = None
        self.row = self.used = self.streak = 0
        self.mark: torch.Tensor | None = None
        self.shape: tuple[int, ...] | None = None
        self.leader: _Stream | None = None
        self.mapped: _Mapped | None = None

    def ready(self, shape: tuple[int, ...]) -> bool:
        """Whether the next draw of `shape` can come from the block."""
        return self.block is not None and self.shape == shape and self.used < self.block.shape[1]

    def settle(self) -> None:
        """Puts the generator where one-draw-at-a-time use would have left it, and drops the block."""
        if self.block is not None and self.used < self.block.shape[1]:
            self.gen.set_state(self.mark)
            if self.used:
                torch.rand((self.used, *self.shape), generator=self.gen)  # advance past the draws handed out
        self.block = self.mapped = None

    def other_draw(self) -> torch.Generator:
        """The generator, settled, for a draw that is not a uniform of the current shape."""
        self.settle()
        self.shape, self.streak = None, 0
        return self.gen

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        """One uniform draw of `shape`, from the block when it has one."""
        if self.ready(shape):
            self.used += 1
            return self.block[self.row, self.used - 1]
        if self.shape == shape:
            self.settle()  # an exhausted block: nothing to undo
            self.streak += 1
        else:
            self.other_draw()
            self.shape, self.streak = shape, 1
        return torch.rand(shape, generator=self.gen)


class RowRandom:
    """One random stream per row; draws are stacked into batch tensors.

    Args:
        seeds: one seed per row (see `row_seed`).
        device: where draws are returned (CPU generators are used for CUDA models too, then moved).
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.streams = [_Stream(s) for s in seeds]
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.streams)

    @property
    def generators(self) -> list[torch.Generator]:
        """The rows' generators, each where one-draw-at-a-time use would have left it (safe to draw from)."""
        return [s.other_draw() for s in self.streams]

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.device.type == "cpu" else t.to(self.device)

    def uniform(self, *shape: int, rows: Sequence[int] | None = None) -> torch.Tensor:
        """(B, *shape) uniform [0, 1) draws, row b from its own stream (a fresh tensor)."""
        streams = self.streams if rows is None else [self.streams[b] for b in rows]
        if not streams:
            return torch.empty((0, *shape), device=self.device)
        held = self._from_block(streams, shape)
        if held is not None:
            block, sel, j = held
            return self._out(block[sel, j].clone() if isinstance(sel, slice) else block[sel, j])  # indexing copies
        if all(s.shape == shape and s.streak >= 2 for s in streams):
            # A loop draws this shape step after step: draw a block ahead for these rows together.
            m = max(1, BLOCK_NUMBERS // max(1, math.prod(shape)))
            for s in streams:
                s.settle()
                s.mark = s.gen.get_state()
            block = torch.stack([torch.rand((m, *shape), generator=s.gen) for s in streams])  # (B, m, *shape)
            for i, s in enumerate(streams):
                s.block, s.row, s.used = block, i, 1
            return self._out(block[:, 0].clone())
        return self._out(torch.stack([s.draw(shape) for s in streams]))

    def mapped_uniform(self, fn: Callable[[torch.Tensor], torch.Tensor], *shape: int) -> torch.Tensor:
        """fn(u) for (B, *shape) uniform draws u (as `uniform` draws them), where fn is elementwise: each output
        number is computed from the same input number alone, the same way wherever it sits in the tensor (torch's
        CPU and CUDA elementwise kernels are; checked against the step-by-step map in the tests). fn may write to
        its fresh input.

        While the rows serve a drawing loop from a block drawn ahead (see `uniform`), fn maps the whole block once
        and each step's result is a view into the mapped block: the same numbers as fn(uniform(...)), with no
        per-step map, also through a new row view (`select`) every step, as the thinking controller draws. The
        result is to be read, not written to.
        """
        held = self._from_block(self.streams, shape) if self.streams else None
        if held is None:
            return fn(self.uniform(*shape))
        block, sel, j = held
        mapped = self.streams[0].mapped
        if mapped is None or mapped[0] is not block or mapped[1] is not fn or mapped[2] != self.device:
            # (m, B, *shape): step j of every row is one contiguous slice
            steps = self._out(block).transpose(0, 1).clone(memory_format=torch.contiguous_format)
            mapped = (block, fn, self.device, fn(steps))
            for s in self.streams:
                s.mapped = mapped
        if isinstance(sel, slice) and sel == slice(0, block.shape[0]):
            return mapped[3][j]  # every row of the block, in order (the common case: one op cheaper)
        return mapped[3][j, sel]

    def _from_block(
        self, streams: list[_Stream], shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, slice | torch.Tensor, int] | None:
        """(block, the streams' rows in it, step index) when every stream's next draw of `shape` is the same step of
        one block (the streams' draw counters advance), else None."""
        first = streams[0]
        if not first.ready(shape):
            return None
        block, j = first.block, first.used
        start, in_order = first.row, True
        for i, s in enumerate(streams):
            if s.block is not block or s.used != j:
                return None
            in_order = in_order and s.row == start + i
        for s in streams:
            s.used = j + 1
        return block, (slice(start, start + len(streams)) if in_order else torch.tensor([s.row for s in streams])), j

    def normal(self, *shape: int) -> torch.Tensor:
        """(B, *shape) standard normal draws, row b from its own stream.

        A row paired by `mirror` whose leader is drawn in the same call gets minus the leader's draw instead.
        """
        if not self.streams:
            return torch.empty((0, *shape), device=self.device)
        here = {id(s): i for i, s in enumerate(self.streams)}
        mirrored = [s.leader is not None and id(s.leader) in here for s in self.streams]
        draws = [None if m else torch.randn(shape, generator=s.other_draw()) for s, m in zip(self.streams, mirrored)]
        for i, s in enumerate(self.streams):
            if mirrored[i]:
                s.other_draw()
                draws[i] = -draws[here[id(s.leader)]]
        return self._out(torch.stack(draws))

    def mirror(self, pairs: Sequence[tuple[int, int]]) -> RowRandom:
        """Antithetic pairs: in each (leader, follower), the follower's normal draws are minus the leader's
        whenever both are drawn in one `normal` call (and its own otherwise); its uniform draws stay its own.

        A batch that draws its noise in lockstep (rows that think from the same step on) so gets mirrored noise
        step by step. Each row alone is still standard normal. Pairs persist through `select` and `concat`.
        """
        for lead, follow in pairs:
            a, b = self.streams[lead], self.streams[follow]
            if a is b or a.leader is not None or b.leader is not None or any(s.leader is b for s in self.streams):
                raise ValueError(f"antithetic pair ({lead}, {follow}): each row can be in one pair only")
            b.leader = a
        return self

    def gamma(self, concentration: torch.Tensor) -> torch.Tensor:
        """Gamma(concentration, 1) draws for a (B, K) concentration, row-wise streams (for Dirichlet noise).

        Marsaglia-Tsang rejection consumes a variable number of draws, so each row's Gamma draws come from a
        generator seeded by one 62-bit draw of its stream (the global generators are never touched).
        """
        conc = concentration.detach().float().cpu()  # (B, K)
        rows = []
        for b, g in enumerate(self.generators):  # settled: Gamma draws are not uniforms of a loop's shape
            sub = torch.Generator(device="cpu")
            sub.manual_seed(int(torch.randint(0, 2**62, (), generator=g)))
            rows.append(torch._standard_gamma(conc[b], generator=sub))
        return torch.stack(rows).to(concentration.device)

    @classmethod
    def concat(cls, parts: Sequence[RowRandom]) -> RowRandom:
        """The rows of `parts`, in order (same generator objects)."""
        new = cls([], parts[0].device)
        new.streams = [s for p in parts for s in p.streams]
        return new

    def select(self, keep: Sequence[int]) -> RowRandom:
        """A view over a subset of rows (same streams)."""
        new = RowRandom([], self.device)
        new.streams = [self.streams[i] for i in keep]
        return new


NUCLEUS_WIDTHS = (64, 4096)  # where `filter_probs` looks for the top-p cut before it sorts a whole row
NUCLEUS_MIN_VOCAB = 2048  # below this many tokens the default sorts (a short row sorts faster than it is sliced)


def filter_probs(
    logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
    nucleus_widths: Sequence[int] | None = None,
) -> torch.Tensor:
    """Probabilities (B, V) after temperature, top-k, top-p and min-p, renormalised. float32.

    The nucleus (top-p) is the smallest prefix of the probabilities sorted in descending order whose mass reaches
    top_p. On CPU each row's cut is first looked for among its `nucleus_widths[0]` most likely tokens, then (rows
    whose cut lies further) among the next width's, and only the rows left are sorted whole: a partial top-k costs
    a fraction of a sort of the vocabulary (8 rows of smollm2's 49,152 tokens: 2 ms for the top 64 against 55 ms
    for the sort). The result is the full sort's, bit for bit (`_cut_in_slice` says why and when). nucleus_widths:
    None = the module's `NUCLEUS_WIDTHS`, read at each call, for vocabularies of `NUCLEUS_MIN_VOCAB` tokens and more
    (on tiny-llama's 261 tokens the sort's few ops beat the slice's two dozen); () sorts every row.

    Args:
        logits: (B, V).
        temperature: > 0.
    """
    logits = logits.float() / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if min_p > 0:
        probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    if top_p < 1.0:
        widths = nucleus_widths
        if widths is None:
            widths = NUCLEUS_WIDTHS if probs.shape[-1] >= NUCLEUS_MIN_VOCAB else ()
        probs = _top_p_cut(probs, top_p, widths if probs.device.type == "cpu" else ())
    return probs / probs.sum(-1, keepdim=True)


def _cpu_read(flag: torch.Tensor) -> bool:
    """bool(flag) of a 0-dim CPU tensor. Only CPU-only paths call it: there a read is no device-to-host copy (on an
    accelerator those paths are not taken and nothing is read), so it is not one of a step's device reads."""
    if flag.device.type != "cpu":
        raise ValueError(f"_cpu_read is for CPU tensors, got one on {flag.device}")
    return bool(flag)


def _sorted_cut(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The top-p cut by a descending sort of each whole row. probs (B, V) -> (B, V), zero outside the nucleus."""
    sp, si = torch.sort(probs, dim=-1, descending=True)
    # Keep the smallest prefix whose mass reaches top_p (the token that crosses the threshold is kept).
    drop = (sp.cumsum(-1) - sp) >= top_p
    sp = sp.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter(-1, si, sp)


def _cut_in_slice(probs: torch.Tensor, top_p: float, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-p cut made on each row's `width` largest probabilities: (kept values (B, width), their token ids
    (B, width), ok (B,)), where ok marks the rows whose cut equals `_sorted_cut`'s, bit for bit.

    The slice holds the same values in the same order as the sort's first `width` entries, and a CPU cumsum adds
    one element after the other (in double precision), so the slice's cumulative masses, hence its drop mask, are
    the sort's. A row's cut is the sort's when it falls inside the slice (or every positive probability is in it)
    and no two equal probabilities straddle it (which of them the sort keeps is its tie order, not topk's). Ties
    elsewhere do not matter: equal values kept, or dropped, land as the same numbers.
    """
    w, ids = torch.topk(probs, width, dim=-1)  # (B, width) each, descending
    drop = (w.cumsum(-1) - w) >= top_p  # as `_sorted_cut` computes it, on the same first `width` values
    kept = (~drop).sum(-1, keepdim=True)  # (B, 1), >= 1: the first token is always kept
    last_kept = w.gather(-1, kept - 1)
    first_dropped = w.gather(-1, kept.clamp(max=width - 1))
    tie = (kept < width) & (first_dropped == last_kept) & (last_kept > 0)
    ok = (drop[:, -1:] | (w[:, -1:] == 0)) & ~tie  # (B, 1)
    return w.masked_fill_(drop, 0.0), ids, ok[:, 0]


def _top_p_cut(probs: torch.Tensor, top_p: float, widths: Sequence[int]) -> torch.Tensor:
    """`_sorted_cut(probs, top_p)`, row by row the same numbers, sorting only the rows whose cut no slice of the
    given widths holds (each row's cut depends on that row alone)."""
    out: torch.Tensor | None = None  # filled row by row once some rows need a wider look
    rows: torch.Tensor | None = None  # the rows of `probs` still to cut (None: all)
    p = probs
    for width in widths:
        if not 0 < width < p.shape[-1]:
            continue
        w, ids, ok = _cut_in_slice(p, top_p, width)
        if _cpu_read(ok.all()):
            cut = torch.zeros_like(p).scatter_(-1, ids, w)
            if out is None:
                return cut
            out[rows] = cut
            return out
        if out is None:
            out = torch.empty_like(probs)
        good, bad = ok.nonzero()[:, 0], (~ok).nonzero()[:, 0]
        out[good if rows is None else rows[good]] = torch.zeros_like(p[good]).scatter_(-1, ids[good], w[good])
        rows, p = (bad if rows is None else rows[bad]), p[bad]
    if out is None:
        return _sorted_cut(p, top_p)
    out[rows] = _sorted_cut(p, top_p)
    return out


def sample_from(probs: torch.Tensor, rand: RowRandom) -> torch.Tensor:
    """One token per row by inverse-CDF sampling with each row's own uniform draw. probs (B, V) -> ids (B,).

    Row b gets the first token whose cumulative mass exceeds u_b x total, so a token of probability 0 is never
    returned (u = 0 picks the first token of positive probability, not token 0). Where rounding puts the
    threshold at the total itself, the last token of positive probability is taken.
    """
    u = rand.uniform()  # (B,)
    cdf = probs.cumsum(-1)  # (B, V)
    threshold = u[:, None] * cdf[:, -1:]  # (B, 1)
    last_index = probs.shape[-1] - 1
    if probs.device.type == "cpu":
        # A CPU cumsum adds one element after the other, so cdf never decreases: the count of cdf <= threshold is a
        # binary search. Below V, the token found raised the cdf, so its probability is positive; a count of V
        # (the threshold rounded up to the total) takes the general path below.
        ids = torch.searchsorted(cdf, threshold, right=True)[:, 0]  # (B,)
        if not _cpu_read((ids > last_index).any()):
            return ids
    ids = (cdf <= threshold).sum(-1).clamp(max=last_index)  # (B,)
    positive = probs > 0  # (B, V)
    ok = positive.gather(-1, ids[:, None])[:, 0]  # (B,); no host sync: the fix-up is computed for every row
    last = torch.arange(probs.shape[-1], device=probs.device).masked_fill(~positive, -1).amax(-1)  # (B,)
    return torch.where(ok, ids, last)


def next_tokens(logits: torch.Tensor, cfg: GenerationConfig, rand: RowRandom | None) -> torch.Tensor:
    """Greedy argmax (temperature 0) or a filtered sample. logits (B, V) -> ids (B,).

    Sampling needs `rand` (MissingRandomError without it): there is no silent greedy or fixed-seed fallback.
    """
    if cfg.greedy:
        return logits.argmax(dim=-1)
    rand = require_random(rand, f"sampling at temperature {cfg.temperature}")
    return sample_from(filter_probs(logits, cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p), rand)
