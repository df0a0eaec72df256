"""Estimated GPU memory per method for a 1B and an 8B backbone (computed from a formula, not measured).

Training (AdamW under bf16 mixed precision as accelerate runs it): every trainable parameter costs 16 bytes
(fp32 weight 4 + fp32 gradient 4 + Adam moments 8), every frozen one 2 bytes (bf16). Activations per training
sequence of s tokens: about 34 * s * d bytes per layer (Korthikanti et al. 2022, 16-bit, attention without the
s^2 term as with SDPA / flash attention), 2 * s * d per layer with gradient checkpointing (plus one layer's full
activations), and the fp32 logits 8 * s * V (logits + their gradient). KV cache at inference: 2 (K, V) * layers *
kv_heads * head_dim * 2 bytes per token. CUDA context, allocator slack and fragmentation are not included (add
~1-2 GB per GPU). Usage: python scripts/memory_estimate.py [--train-tokens 512] [--eval-batch 32] [--markdown]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GB = 1024**3


@dataclass(frozen=True)
class Arch:
    """Decoder shape (Llama-3.2-1B and Llama-3.1-8B published configs)."""

    name: str
    params: float
    layers: int
    d: int
    kv_heads: int
    head_dim: int
    vocab: int


ARCHS = [
    Arch("1B (Llama-3.2-1B shape)", 1.24e9, 16, 2048, 8, 64, 128_256),
    Arch("8B (Llama-3.1-8B shape)", 8.03e9, 32, 4096, 8, 128, 128_256),
]


def lora_params(a: Arch, r: int = 16) -> float:
    """LoRA r on q, k, v, o of every layer: r * (d_in + d_out) per matrix (k, v project to kv_heads * head_dim)."""
    kv = a.kv_heads * a.head_dim
    per_layer = r * (a.d + a.d) * 2 + r * (a.d + kv) * 2
    return per_layer * a.layers


def activations(a: Arch, tokens: int, checkpointing: bool) -> float:
    per_layer = (2 if checkpointing else 34) * tokens * a.d
    extra = 34 * tokens * a.d if checkpointing else 0  # the layer being recomputed
    return per_layer * a.layers + extra + 8 * tokens * a.vocab


def kv_cache(a: Arch, tokens: int) -> float:
    return 2 * a.layers * a.kv_heads * a.head_dim * 2 * tokens


def rows(a: Arch, train_tokens: int, eval_batch: int, eval_tokens: int, thoughts: int) -> list[tuple[str, str, float]]:
    """(method, what, bytes) for one GPU holding the whole model (DDP; FSDP / ZeRO-3 divide the state by the GPUs)."""
    full = 16 * a.params
    frozen = 2 * a.params
    lora = lora_params(a)
    assist = Arch("assistant", 1.24e9, 16, 2048, 8, 64, 128_256)  # SoftCoT: a 1B assistant beside either backbone
    proj = assist.d * a.d + a.d  # linear projection
    act = activations(a, train_tokens, False)
    act_ckpt = activations(a, train_tokens, True)
    infer = frozen + kv_cache(a, eval_batch * eval_tokens)
    return [
        ("cot / soft_thinking / soft_tokens (eval)", f"bf16 weights + KV cache of {eval_batch} x {eval_tokens} tokens", infer),
        ("cot_sft (full fine-tune)", f"16 B/param + activations of {train_tokens} tokens", full + act),
        ("cot_sft + gradient_checkpointing", "16 B/param + checkpointed activations", full + act_ckpt),
        ("lora (r=16, q/k/v/o)", "bf16 frozen weights + LoRA state + activations", frozen + 16 * lora + act),
        ("coconut / pause (full fine-tune)", f"as cot_sft, sequence + {thoughts} thoughts (no checkpointing: KV-cached rollout)",
         full + activations(a, train_tokens + thoughts, False)),
        ("codi (full fine-tune)", "teacher + student sequences in one step", full + 2 * activations(a, train_tokens + thoughts, False)),
        ("softcot (1B assistant, projection trains)", "both models frozen bf16 + projection + backbone activations",
         frozen + 2 * assist.params + 16 * proj + act),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-tokens", type=int, default=512, help="tokens per training sequence (micro-batch 1)")
    ap.add_argument("--eval-batch", type=int, default=32)
    ap.add_argument("--eval-tokens", type=int, default=1024, help="prompt + generated tokens per eval row")
    ap.add_argument("--thoughts", type=int, default=6)
    args = ap.parse_args()
    print(f"| method | what is counted | {' | '.join(a.name for a in ARCHS)} |")
    print(f"|---|---|{'---:|' * len(ARCHS)}")
    table = [rows(a, args.train_tokens, args.eval_batch, args.eval_tokens, args.thoughts) for a in ARCHS]
    for i, (method, what, _) in enumerate(table[0]):
        print(f"| {method} | {what} | {' | '.join(f'{t[i][2] / GB:.1f} GB' for t in table)} |")


if __name__ == "__main__":
    main()
