"""Deterministic tiny random models (`tiny-gpt2`, `tiny-llama`) for smoke runs and tests, built offline."""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from latentcot.models.tokenizers import CHATML_TEMPLATE, byte_level_tokenizer


def tiny_config(arch: str, vocab_size: int, d: int = 64, layers: int = 2, heads: int = 4, max_positions: int = 2048):
    """A tiny GPT-2 (absolute positions) or Llama (rotary, GQA) config."""
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_embd=d, n_layer=layers, n_head=heads, n_positions=max_positions,
            bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # deterministic training steps in tests
        )
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2), intermediate_size=2 * d, max_position_embeddings=max_positions,
            bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}")


def build_tiny(arch: str, vocab_size: int, seed: int = 0, **kw) -> PreTrainedModel:
    """A randomly initialised tiny model, identical for the same arguments (its own RNG, global state untouched)."""
    cfg = tiny_config(arch, vocab_size, **kw)
    cls = GPT2LMHeadModel if arch == "gpt2" else LlamaForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(cfg)
    return model.eval()


def tiny_model(alias: str, seed: int = 0):
    """(model, tokenizer) for `tiny-gpt2` (no chat template) or `tiny-llama` (ChatML template)."""
    arch = alias.removeprefix("tiny-")
    tok = byte_level_tokenizer(chat_template=CHATML_TEMPLATE if arch == "llama" else None)
    return build_tiny(arch, len(tok), seed=seed), tok
