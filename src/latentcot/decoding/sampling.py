"""Sampling settings, logits processing, and per-row random streams.

Every row of a batch (one question x one sample) owns a `torch.Generator` seeded from (run seed, question id,
sample index). All randomness a row consumes comes from its own stream, so sampled results depend only on the
seed and the question, never on the batch it shares. The streams never read, reseed or advance the global CPU or
CUDA generators, and a sampling path called without streams raises instead of falling back to greedy or seed 0.

The stream definition (version 1, `STREAM_VERSION`): row b's generator is `torch.Generator("cpu")` seeded with
`row_seed(seed, question id, sample)`; uniforms are `torch.rand(shape, generator=g)`, normals `torch.randn`,
Gamma draws `torch._standard_gamma` on a generator seeded from one `randint(0, 2**62)` of the row's stream.
A Mersenne-Twister generator has no batched form, so the draws loop over rows in Python (one `torch.rand` per row,
then one `torch.stack`: about 3 us per row and draw). That is a few percent of a tiny model's step and well under
1% of a real model's (README, Benchmarks), so the definition is kept and results for a given seed are those of
earlier versions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
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


class RowRandom:
    """One random stream per row; draws are stacked into batch tensors.

    Args:
        seeds: one seed per row (see `row_seed`).
        device: where the generators live (CPU generators are used for CUDA models too, then moved).
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.generators = []
        for s in seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(int(s))
            self.generators.append(g)
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.generators)

    def uniform(self, *shape: int, rows: Sequence[int] | None = None) -> torch.Tensor:
        """(B, *shape) uniform [0, 1) draws, row b from its own stream."""
        gens = self.generators if rows is None else [self.generators[b] for b in rows]
        if not gens:
            return torch.empty((0, *shape), device=self.device)
        # torch.rand per row then one stack: the same numbers as filling rows of a preallocated tensor in place
        # (`torch.rand(shape, generator=g, out=out[b])`, the v1 wording) at about a quarter of the Python cost.
        return torch.stack([torch.rand(shape, generator=g) for g in gens]).to(self.device)

    def normal(self, *shape: int) -> torch.Tensor:
        """(B, *shape) standard normal draws, row b from its own stream."""
        if not self.generators:
            return torch.empty((0, *shape), device=self.device)
        return torch.stack([torch.randn(shape, generator=g) for g in self.generators]).to(self.device)

    def gamma(self, concentration: torch.Tensor) -> torch.Tensor:
        """Gamma(concentration, 1) draws for a (B, K) concentration, row-wise streams (for Dirichlet noise).

        Marsaglia-Tsang rejection consumes a variable number of draws, so each row's Gamma draws come from a
        generator seeded by one 62-bit draw of its stream (the global generators are never touched).
        """
        conc = concentration.detach().float().cpu()  # (B, K)
        rows = []
        for b, g in enumerate(self.generators):
            sub = torch.Generator(device="cpu")
            sub.manual_seed(int(torch.randint(0, 2**62, (), generator=g)))
            rows.append(torch._standard_gamma(conc[b], generator=sub))
        return torch.stack(rows).to(concentration.device)

    @classmethod
    def concat(cls, parts: Sequence[RowRandom]) -> RowRandom:
        """The rows of `parts`, in order (same generator objects)."""
        new = cls([], parts[0].device)
        new.generators = [g for p in parts for g in p.generators]
        return new

    def select(self, keep: Sequence[int]) -> RowRandom:
        """A view over a subset of rows (same generator objects)."""
        new = RowRandom([], self.device)
        new.generators = [self.generators[i] for i in keep]
        return new


def filter_probs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0):
    """Probabilities (B, V) after temperature, top-k, top-p and min-p, renormalised. float32.

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
        sp, si = torch.sort(probs, dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the token that crosses the threshold is kept).
        drop = (sp.cumsum(-1) - sp) >= top_p
        sp = sp.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, si, sp)
    return probs / probs.sum(-1, keepdim=True)


def sample_from(probs: torch.Tensor, rand: RowRandom) -> torch.Tensor:
    """One token per row by inverse-CDF sampling with each row's own uniform draw. probs (B, V) -> ids (B,).

    Row b gets the first token whose cumulative mass exceeds u_b x total, so a token of probability 0 is never
    returned (u = 0 picks the first token of positive probability, not token 0). Where rounding puts the
    threshold at the total itself, the last token of positive probability is taken.
    """
    u = rand.uniform()  # (B,)
    cdf = probs.cumsum(-1)  # (B, V)
    ids = (cdf <= u[:, None] * cdf[:, -1:]).sum(-1).clamp(max=probs.shape[-1] - 1)  # (B,)
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
