"""The narrow generation protocol: what a second decode backend (e.g. vLLM) implements to serve methods.

A backend takes finished prompts, each a sequence of splice pieces (token ids and, for SoftCoT-style prompts,
input vectors in the backbone's embedding space), and decodes hard tokens under a `GenerationConfig`. It knows
nothing of methods: a method decides which of its phases are plain prompts and hands only those over.

The built-in `Engine` implements it (`Engine.generate_rows`); methods that need per-step control (latent steps,
soft inputs at every step) keep using the Engine's `prefill` / `step` / `generate` with a `Controller`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from latentcot.decoding.engine import RowOutput
from latentcot.decoding.sampling import GenerationConfig, RowRandom
from latentcot.models.splice import Piece


@runtime_checkable
class GenerationBackend(Protocol):
    """Prompts in, one `RowOutput` per prompt out, in order.

    `generate_rows(rows, cfg, rand)`:
        rows: B prompts, each a sequence of `Piece`s (tokens or (N, d) vectors), unpadded.
        cfg: sampling and stopping settings (greedy when temperature is 0).
        rand: per-row random streams (sampling); a backend that cannot use them must say so, not ignore them.
    """

    def generate_rows(
        self, rows: Sequence[Sequence[Piece]], cfg: GenerationConfig, rand: RowRandom | None = None
    ) -> list[RowOutput]: ...
