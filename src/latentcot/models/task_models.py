"""From-scratch tiny models for synthetic tasks: a word-level tokenizer over the task's vocabulary and a small
randomly initialised GPT-2 or Llama, named by a model alias of the form

    scratch-ARCH[-dD][-lL][-hH][-pP]:TASK[,key=value...]
    e.g. scratch-gpt2:pointer_chase, scratch-llama-d64-l2:arith_chain, scratch-gpt2:pointer_chase2,step_format=sep

ARCH is gpt2 (absolute positions) or llama (rotary); the default size is 4 layers, d=128, 4 heads: the
configuration SPEC section 3 measured learning pointer chasing in seconds. The tokenizer covers the vocabulary of
the task with its default settings, or with the `key=value` task settings the alias names (settings that
change the words, such as pointer_chase2's step_format), plus the marker tokens continuous-thought methods use (`<bot>`, `<eot>`,
`<pause>`), so adding them later never resizes the embeddings, and "Answer:", the separator the Backbone
writes after a prompt when there is no chat template.

The model is identical for the same alias (its own seeded RNG); training updates every weight, so the run's
`trainable.safetensors` holds the whole model and `weights=DIR` restores it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentcot.errors import ModelError

PREFIX = "scratch-"
MARKERS = ("<bot>", "<eot>", "<pause>")
PROMPT_SEPARATOR = "Answer:"
_ALIAS = re.compile(
    r"^scratch-(?P<arch>gpt2|llama)(?:-d(?P<d>\d+))?(?:-l(?P<l>\d+))?(?:-h(?P<h>\d+))?(?:-p(?P<p>\d+))?:(?P<task>\w+)"
    r"(?P<opts>(?:,\w+=[\w.-]+)*)$"
)


@dataclass(frozen=True)
class ScratchSpec:
    """What a `scratch-...:TASK` alias names.

    Attributes:
        arch: "gpt2" or "llama".
        task: registered synthetic task whose vocabulary() the tokenizer covers.
        task_settings: (key, value) task settings the vocabulary is built with.
        d: hidden size.
        layers: transformer blocks.
        heads: attention heads.
        max_positions: longest sequence (`-pN`; the default fits the pointer and arithmetic tasks; prosqa_synth's
            ~320-word questions plus the CoT need -p512).
        seed: initialisation seed.
    """

    arch: str
    task: str
    task_settings: tuple[tuple[str, str], ...] = ()
    d: int = 128
    layers: int = 4
    heads: int = 4
    max_positions: int = 256
    seed: int = 0


def is_scratch_alias(name: str) -> bool:
    return name.startswith(PREFIX) and ":" in name


def parse_alias(name: str) -> ScratchSpec:
    """`scratch-gpt2-d64-l2:pointer_chase` -> ScratchSpec; ModelError with the expected form otherwise."""
    m = _ALIAS.match(name)
    if not m:
        raise ModelError(
            f"model {name!r} is not a from-scratch alias: write scratch-ARCH[-dD][-lL][-hH][-pP]:TASK[,key=value...] with "
            "ARCH gpt2 or llama, e.g. scratch-gpt2:pointer_chase"
        )
    kw = {k: int(m[g]) for k, g in (("d", "d"), ("layers", "l"), ("heads", "h"), ("max_positions", "p")) if m[g]}
    opts = tuple(tuple(o.split("=", 1)) for o in m["opts"].split(",") if o)
    spec = ScratchSpec(arch=m["arch"], task=m["task"], task_settings=opts, **kw)
    if spec.d <= 0 or spec.layers <= 0 or spec.heads <= 0 or spec.d % spec.heads or spec.max_positions <= 0:
        raise ModelError(f"model {name!r}: d must be a positive multiple of the number of heads, layers > 0")
    return spec


def task_tokenizer(task_name: str, settings: dict[str, str] | None = None) -> PreTrainedTokenizerBase:
    """Word-level tokenizer over a synthetic task's vocabulary (with `settings`) + markers + the separator."""
    from latentcot.models.tokenizers import word_level_tokenizer
    from latentcot.tasks import get_task

    task = get_task(task_name, **(settings or {}))
    if not hasattr(task, "vocabulary"):
        raise ModelError(
            f"task {task_name!r} has no closed vocabulary: scratch-...:TASK models need a synthetic task "
            "(pointer_chase, pointer_chase2, arith_chain, multiplication, prosqa_synth)"
        )
    tok = word_level_tokenizer(list(task.vocabulary()) + [PROMPT_SEPARATOR], extra_specials=MARKERS)
    return tok


def build_scratch(spec: ScratchSpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for a from-scratch spec; no dropout (tiny models on generated data do not overfit)."""
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    from latentcot.models.tiny import tiny_config

    tok = task_tokenizer(spec.task, dict(spec.task_settings))
    cfg = tiny_config(spec.arch, len(tok), d=spec.d, layers=spec.layers, heads=spec.heads,
                      max_positions=spec.max_positions)
    cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout"):
        if hasattr(cfg, key):
            setattr(cfg, key, 0.0)
    cls = GPT2LMHeadModel if spec.arch == "gpt2" else LlamaForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = cls(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval(), tok


def load_scratch(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The loader `models.loading.load_model` calls for `scratch-...:TASK` names."""
    return build_scratch(parse_alias(name))
