"""The supported transformers range, and the names that changed inside it.

latentcot supports transformers >= 4.56 (the floor, `TRANSFORMERS_FLOOR`; pyproject states the same range) through
the 5.x releases. Names that changed within that range are routed here, so users never see a deprecation warning:

- the KV cache: `past_key_values=` in and `.past_key_values` out until 5.23; from 5.24 `cache=` and `.cache` (the
  old names still work there, with a warning, until 5.40). `Backbone.forward` passes it under the name the model's
  forward takes; `output_cache` reads it back;
- the keyword of `add_special_tokens` that keeps earlier extra special tokens: `replace_additional_special_tokens`
  before 5.0, `replace_extra_special_tokens` from 5.0.

The installed version is read from the package metadata, without importing transformers.
"""

from __future__ import annotations

import functools
import inspect
from importlib import metadata
from typing import Any

from latentcot.errors import ConfigError

TRANSFORMERS_FLOOR = "4.56.0"


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:  # 5.0.0rc1, 4.57.dev0: stop at the pre-release tag
            break
    return tuple(parts)


def check_transformers(version: str | None = None) -> None:
    """Raises ConfigError naming the installed and the oldest supported version when transformers is too old."""
    if version is None:
        try:
            version = metadata.version("transformers")
        except metadata.PackageNotFoundError:
            raise ConfigError(f"transformers is not installed: pip install 'transformers>={TRANSFORMERS_FLOOR}'") from None
    if _version_tuple(version) < _version_tuple(TRANSFORMERS_FLOOR):
        raise ConfigError(
            f"transformers {version} is older than the oldest supported version {TRANSFORMERS_FLOOR}: "
            f"pip install -U 'transformers>={TRANSFORMERS_FLOOR}'"
        )


@functools.cache
def cache_name() -> str:
    """The name of the KV cache in model calls and outputs: "cache" (transformers >= 5.24) or "past_key_values"."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache a model call returned (None when it returned none)."""
    return getattr(out, cache_name(), None)


@functools.cache
def _extra_tokens_keyword(tokenizer_cls: type) -> str:
    params = inspect.signature(tokenizer_cls.add_special_tokens).parameters
    return "replace_extra_special_tokens" if "replace_extra_special_tokens" in params else "replace_additional_special_tokens"


def add_special_tokens(tokenizer: Any, tokens: list[str]) -> None:
    """Adds `tokens` as extra special tokens, keeping those the tokenizer already had."""
    tokenizer.add_special_tokens({"additional_special_tokens": tokens}, **{_extra_tokens_keyword(type(tokenizer)): False})
