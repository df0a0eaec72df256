"""The logit lens (nostalgebraist, 2020): read every layer's hidden state through the final norm and LM head.

Hidden states come from `output_hidden_states` (no hooks). The final norm is found generically: the first of
`norm`, `ln_f`, `final_layernorm`, `final_layer_norm`, `norm_f` on `model.get_decoder()`; when none exists the
lens reads the raw hidden states and says so. The last entry of `hidden_states` already went through the final
norm in HF models, so the last layer's row uses the model's own logits.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f")


def final_norm(model: nn.Module) -> nn.Module | None:
    """The decoder's final normalisation module, or None (then the lens skips it)."""
    # transformers < 5: GPT-2's get_decoder() is the LM itself; its base model holds the norm
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for holder in (decoder, getattr(model, "base_model", None), model):
        for name in _NORM_NAMES:
            mod = getattr(holder, name, None) if holder is not None else None
            if isinstance(mod, nn.Module):
                return mod
    return None


@torch.no_grad()
def logit_lens(
    model: nn.Module,
    inputs_embeds: torch.Tensor,
    positions: torch.Tensor,
    targets: torch.Tensor | None = None,
) -> dict[str, object]:
    """Per-layer lens statistics at chosen positions of one sequence.

    Args:
        model: an HF causal LM.
        inputs_embeds: (1, T, d) the whole sequence (one row, no padding).
        positions: (S,) positions to read.
        targets: (S,) token whose lens probability is reported (default: the final layer's top-1 at each position).
    Returns:
        prob: (L+1) x S list, lens probability of the target at layer l (row 0 = the embeddings, row L = output);
        agree: (L+1) x S list, 1 where the lens top-1 equals the target;
        top1: (L+1) x S token ids of each layer's lens top-1;
        norm: the final norm's class name, or None when the lens had to skip it.
    """
    out = model(inputs_embeds=inputs_embeds, output_hidden_states=True, return_dict=True)
    hidden = out.hidden_states  # L+1 tensors (1, T, d)
    final = torch.log_softmax(out.logits[0, positions].float(), -1)  # (S, V)
    if targets is None:
        targets = final.argmax(-1)
    norm = final_norm(model)
    if norm is None:
        log.warning("no final norm found on %s: the logit lens reads raw hidden states", type(model).__name__)
    head = model.get_output_embeddings()
    prob, agree, top1 = [], [], []
    for layer, h in enumerate(hidden):
        if layer == len(hidden) - 1:
            logp = final
        else:
            x = h[0, positions]  # (S, d)
            logp = torch.log_softmax(head(norm(x) if norm is not None else x).float(), -1)  # (S, V)
        best = logp.argmax(-1)  # (S,)
        prob.append(logp.gather(-1, targets[:, None])[:, 0].exp().tolist())
        agree.append((best == targets).float().tolist())
        top1.append(best.tolist())
    return {"prob": prob, "agree": agree, "top1": top1, "norm": type(norm).__name__ if norm is not None else None}
