"""The Backbone wrapper: one HF causal LM + its tokenizer, with the few operations every method needs.

Composition, not inheritance: the HF model is held and called with `inputs_embeds`, an explicit attention mask
and position ids. Nothing branches on the model's class or name.

`Backbone.forward` is the one place the HF model is called: the decode engine, the training rollouts and every
method's loss go through it, so a wrapper (gradient checkpointing, a distributed engine) or a second backend
has one seam to plug into.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentcot.errors import ModelError
from latentcot.models import fastpath
from latentcot.models.compat import add_special_tokens


class Backbone(nn.Module):
    """A causal LM and its tokenizer.

    Args:
        model: an HF `*ForCausalLM`.
        tokenizer: its tokenizer (left padding, with a pad token).
        name: the alias or path it was loaded from (recorded in run configs).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = "") -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.cpu_prepack = True  # the decode engine's CPU calls use oneDNN-packed linear layers (`decoding.prepack`)

    # --- shapes and limits -------------------------------------------------------------------------------------
    def input_embeddings(self) -> nn.Module:
        """The model's input embedding module: what `self.model.get_input_embeddings()` returns, found through HF's
        method once and then by its path among the submodules.

        HF's method tries attribute names one after another on every call (~7 us on a CPU, and a soft decode step
        asks for the module several times); the path is a few dictionary reads. It follows a module swapped in at
        the same place (`set_input_embeddings`, `resize_token_embeddings`, PEFT's wrappers) and a new `self.model`
        (PEFT's `get_peft_model`); a module that sits in no submodule slot is asked of HF's method every time.
        """
        model = self.model
        found = self.__dict__.get("_embedding_path")  # (model, path or None); not an attribute nn.Module tracks
        if found is not None and found[0] is model:
            if found[1] is None:
                return model.get_input_embeddings()
            module = model
            for name in found[1]:
                module = module._modules.get(name)
                if module is None:
                    break
            else:
                return module
        module = model.get_input_embeddings()
        path = next((tuple(n.split(".")) for n, m in model.named_modules() if m is module and n), None)
        self.__dict__["_embedding_path"] = (model, path)
        return module

    @property
    def hidden_size(self) -> int:
        return self.input_embeddings().weight.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    @property
    def device(self) -> torch.device:
        return self.input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.input_embeddings().weight.dtype

    @property
    def max_context(self) -> int | None:
        """The longest sequence the model accepts (None when the config does not say)."""
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    @property
    def eos_ids(self) -> list[int]:
        """Token ids that end a generation: the tokenizer's EOS, the config's EOS list, and `<|im_end|>`-style ends."""
        ids: set[int] = set()
        for src in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
            if isinstance(src, int):
                ids.add(src)
            elif isinstance(src, (list, tuple)):
                ids.update(int(i) for i in src)
        for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid is not None and tid >= 0:
                ids.add(tid)
        return sorted(ids)

    # --- the one model call -----------------------------------------------------------------------------------
    def forward(
        self,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: object | None = None,
        *,
        input_ids: torch.Tensor | None = None,
        use_cache: bool = False,
        want_hidden: bool = False,
        logits_to_keep: int = 0,
        lean: bool = False,
    ):
        """One forward of the causal LM.

        Args:
            inputs_embeds: (B, T, d) spliced inputs (or give `input_ids` (B, T) instead).
            attention_mask: (B, T_past + T) over every position fed so far, padding included.
            position_ids: (B, T) explicit positions (left padding and latent steps make them differ per row).
            past_key_values: the KV cache of earlier calls (None for a fresh sequence).
            use_cache: return an updated cache (decoding, cached training rollouts).
            want_hidden: also return every layer's hidden states ((B, T, d) each, L+1 of them).
            logits_to_keep: compute logits only for the last n positions (0 = all).
            lean: a call with `use_cache` of a model `fastpath` supports runs as its lean loop over the same modules
                and kernels: the same values bitwise, without HF's per-call Python (the engine's calls).
        Returns:
            the HF output: logits (B, T or n, V), the cache (`compat.output_cache(out)`), hidden_states when asked.
        """
        if lean and use_cache and inputs_embeds is not None and input_ids is None:
            plan = fastpath.plan(self.model)
            if fastpath.usable(plan):
                return fastpath.forward(plan, inputs_embeds, attention_mask, position_ids, past_key_values,
                                        want_hidden, logits_to_keep)
        cache = {} if past_key_values is None else {self._cache_kwarg: past_key_values}
        return self.model(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            output_hidden_states=want_hidden,
            logits_to_keep=logits_to_keep,
            return_dict=True,
            **cache,
        )

    @functools.cached_property
    def _cache_kwarg(self) -> str:
        """The name the model's forward takes the KV cache under (`cache` in newer transformers)."""
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"

    # --- embeddings --------------------------------------------------------------------------------------------
    @property
    def embedding_matrix(self) -> torch.Tensor:
        """E, (V, d): the input embedding matrix."""
        return self.input_embeddings().weight

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (...,) -> input embeddings (..., d), exactly what the model computes for `input_ids`."""
        return self.input_embeddings()(ids)

    def add_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Ids of `tokens`, adding the missing ones as special tokens.

        Each new token's embedding row (input, and output when untied) is set to the mean of the rows of the tokens
        the tokenizer already had, the same in every process and without touching the global RNG: a frozen added
        token is never saved with the trained weights, so a later process must rebuild exactly the same row. This
        holds also when the matrix already has more rows than the tokenizer has tokens (Qwen2.5: 151,936 rows for
        151,665 tokens): the new ids then land on unused padding rows, which are overwritten; the padding rows
        never enter the mean.
        """
        missing = [t for t in tokens if t not in self.tokenizer.get_vocab()]
        if missing:
            known = sorted(set(self.tokenizer.get_vocab().values()))  # ids of the tokens there before
            add_special_tokens(self.tokenizer, missing)
            new_ids = [self.tokenizer.convert_tokens_to_ids(t) for t in missing]
            rows = self.model.get_input_embeddings().weight.shape[0]
            if max(new_ids) >= rows:
                with torch.random.fork_rng(devices=[]):  # resizing initialises new rows from the global RNG
                    self.model.resize_token_embeddings(max(len(self.tokenizer), max(new_ids) + 1), mean_resizing=False)
            with torch.no_grad():
                outs = self.model.get_output_embeddings()
                for emb in {id(m): m for m in (self.model.get_input_embeddings(), outs) if m is not None}.values():
                    w = emb.weight  # (V_rows, d)
                    have = torch.tensor([i for i in known if i < w.shape[0]], device=w.device)
                    new = torch.tensor(new_ids, device=w.device)
                    w[new] = w[have].mean(0)
                    bias = getattr(emb, "bias", None)
                    if bias is not None:
                        bias[new] = bias[have].mean()
        return [self.tokenizer.convert_tokens_to_ids(t) for t in tokens]

    # --- text --------------------------------------------------------------------------------------------------
    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat_prompt(self, user: str, system: str | None = None, assistant_prefix: str = "") -> str:
        """The prompt text for one user turn through the chat template (plain "Q: ... A:" text without one)."""
        if self.has_chat_template:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return text + assistant_prefix
        head = f"{system}\n\n" if system else ""
        return f"{head}{user}\nAnswer:{' ' + assistant_prefix if assistant_prefix else ''}"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Chat-templated prompts already hold their special tokens."""
        return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def check_length(self, length: int, what: str = "prompt") -> None:
        """Raises ModelError when a sequence of `length` tokens exceeds the model's context."""
        limit = self.max_context
        if limit is not None and length > limit:
            raise ModelError(
                f"{what} of {length} tokens is longer than the model's context of {limit} tokens: "
                "shorten it or lower max_new_tokens / num_thoughts"
            )

    def freeze(self) -> Backbone:
        self.model.requires_grad_(False)
        return self
