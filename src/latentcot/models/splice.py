"""splice: the ONE place that builds model inputs from pieces of tokens and vectors.

A row is a list of pieces: token ids (optionally with loss labels) or a block of vectors (N, d) such as soft
thoughts. `splice` embeds the tokens, pads the rows (left for generation, right for training) and returns
`inputs_embeds`, `attention_mask`, `position_ids` and `labels` that stay aligned, plus each named piece's span
so that methods find their thought positions by name, never by index arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

IGNORE = -100


@dataclass
class Piece:
    """One piece of a row.

    Attributes:
        ids: token ids (None for a vector block).
        vectors: (N, d) input vectors (None for tokens).
        labels: loss targets for token pieces: True = the ids themselves; False = ignored; or explicit ids.
        name: span name the piece is recorded under (e.g. "thoughts", "answer").
    """

    ids: Sequence[int] | None = None
    vectors: torch.Tensor | None = None
    labels: bool | Sequence[int] = False
    name: str | None = None

    def __len__(self) -> int:
        return len(self.ids) if self.ids is not None else int(self.vectors.shape[0])


def tokens(ids: Sequence[int], labels: bool | Sequence[int] = False, name: str | None = None) -> Piece:
    return Piece(ids=list(ids), labels=labels, name=name)


def vectors(v: torch.Tensor, name: str | None = None) -> Piece:
    return Piece(vectors=v, name=name)


@dataclass
class Spliced:
    """A padded batch.

    Attributes:
        inputs_embeds: (B, T, d).
        attention_mask: (B, T), 1 for real positions, 0 for padding.
        position_ids: (B, T), 0-based over real positions (padding gets 0).
        labels: (B, T) token targets aligned with the inputs (IGNORE where no loss); predict labels[t] from t-1.
        input_ids: (B, T) token ids where pieces were tokens, pad id elsewhere (vectors, padding).
        spans: per row, name -> (start, end) in padded coordinates.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    input_ids: torch.Tensor
    spans: list[dict[str, tuple[int, int]]] = field(default_factory=list)

    def span_positions(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(row index, position) tensors of every position in the named span across the batch."""
        rows, cols = [], []
        for b, sp in enumerate(self.spans):
            if name in sp:
                s, e = sp[name]
                rows += [b] * (e - s)
                cols += list(range(s, e))
        dev = self.inputs_embeds.device
        return torch.tensor(rows, dtype=torch.long, device=dev), torch.tensor(cols, dtype=torch.long, device=dev)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids (B, T) from an attention mask: 0-based count of real tokens; padding gets 0."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0) * mask.long()


def splice(
    rows: Sequence[Sequence[Piece]],
    embed: Callable[[torch.Tensor], torch.Tensor],
    pad_id: int,
    padding_side: str = "left",
) -> Spliced:
    """Builds one padded batch from rows of pieces.

    Args:
        rows: B rows, each a sequence of pieces.
        embed: token ids (n,) -> embeddings (n, d) (the backbone's input embedding).
        pad_id: token id written at padded positions of `input_ids`.
        padding_side: "left" for generation (all rows end at the same position), "right" for training.
    """
    lengths = [sum(len(p) for p in row) for row in rows]
    T = max(lengths)
    B = len(rows)
    if all(p.ids is not None and p.labels is False for row in rows for p in row):
        return _splice_tokens(rows, lengths, T, embed, pad_id, padding_side)
    # Embed all token pieces in one call.
    all_ids = [i for row in rows for p in row if p.ids is not None for i in p.ids]
    probe = next((p.vectors for row in rows for p in row if p.vectors is not None), None)
    dev = probe.device if probe is not None else embed(torch.zeros(1, dtype=torch.long)).device
    tok_emb = embed(torch.tensor(all_ids, dtype=torch.long, device=dev)) if all_ids else None
    d = tok_emb.shape[-1] if tok_emb is not None else probe.shape[-1]
    dtype = tok_emb.dtype if tok_emb is not None else probe.dtype

    pieces_emb: list[torch.Tensor] = []  # gathered per row, then stacked with padding
    ids = torch.full((B, T), pad_id, dtype=torch.long, device=dev)
    labels = torch.full((B, T), IGNORE, dtype=torch.long, device=dev)
    mask = torch.zeros((B, T), dtype=torch.long, device=dev)
    spans: list[dict[str, tuple[int, int]]] = []
    cursor = 0
    for b, row in enumerate(rows):
        offset = T - lengths[b] if padding_side == "left" else 0
        parts = []
        pos = offset
        row_spans: dict[str, tuple[int, int]] = {}
        for p in row:
            n = len(p)
            if p.ids is not None:
                parts.append(tok_emb[cursor : cursor + n])
                cursor += n
                ids[b, pos : pos + n] = torch.tensor(list(p.ids), dtype=torch.long)
                if p.labels is True:
                    labels[b, pos : pos + n] = ids[b, pos : pos + n]
                elif p.labels is not False:
                    labels[b, pos : pos + n] = torch.tensor(list(p.labels), dtype=torch.long)
            else:
                parts.append(p.vectors.to(dtype))
            if p.name is not None:
                row_spans[p.name] = (pos, pos + n)
            pos += n
        mask[b, offset : offset + lengths[b]] = 1
        row_emb = torch.cat(parts, dim=0) if parts else torch.zeros(0, d, dtype=dtype, device=dev)  # (L_b, d)
        pad = torch.zeros(T - lengths[b], d, dtype=dtype, device=dev)
        pieces_emb.append(torch.cat([pad, row_emb] if padding_side == "left" else [row_emb, pad], dim=0))
        spans.append(row_spans)
    embeds = torch.stack(pieces_emb, dim=0)  # (B, T, d)
    return Spliced(embeds, mask, positions_from_mask(mask), labels, ids, spans)


def _splice_tokens(
    rows: Sequence[Sequence[Piece]], lengths: list[int], T: int, embed: Callable[[torch.Tensor], torch.Tensor],
    pad_id: int, padding_side: str,
) -> Spliced:
    """`splice` for rows of token pieces without labels (every generation prompt): one tensor from host lists and
    one embedding call instead of per-row tensor surgery. Same result: padding positions hold exact zeros."""
    ids_rows, mask_rows, spans = [], [], []
    for row, n in zip(rows, lengths):
        flat = [i for p in row for i in p.ids]
        offset = T - n if padding_side == "left" else 0
        if padding_side == "left":
            ids_rows.append([pad_id] * (T - n) + flat)
            mask_rows.append([0] * (T - n) + [1] * n)
        else:
            ids_rows.append(flat + [pad_id] * (T - n))
            mask_rows.append([1] * n + [0] * (T - n))
        row_spans: dict[str, tuple[int, int]] = {}
        pos = offset
        for p in row:
            if p.name is not None:
                row_spans[p.name] = (pos, pos + len(p))
            pos += len(p)
        spans.append(row_spans)
    dev = embed(torch.zeros(1, dtype=torch.long)).device
    ids = torch.tensor(ids_rows, dtype=torch.long, device=dev)  # (B, T)
    mask = torch.tensor(mask_rows, dtype=torch.long, device=dev)  # (B, T)
    embeds = torch.where(mask[..., None].bool(), embed(ids), 0)  # (B, T, d)
    labels = torch.full_like(ids, IGNORE)
    return Spliced(embeds, mask, positions_from_mask(mask), labels, ids, spans)


def find_marker(ids: Sequence[int], marker_ids: Sequence[int]) -> list[int]:
    """Positions of every occurrence of any marker token id in `ids` (e.g. placeholder tokens)."""
    wanted = set(marker_ids)
    return [i for i, t in enumerate(ids) if t in wanted]
