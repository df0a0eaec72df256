"""GGUF files: dequantise once with transformers, then load a float32 safetensors cache.

transformers reads GGUF (`from_pretrained(dir, gguf_file=name)`, needs `gguf` and `accelerate`) by dequantising
every tensor, which takes 20-55 s for a 0.1-0.5B model on two cores. We do that once per file and save the result
as safetensors under `cache_dir()/safetensors/<key>/`; later loads take a few seconds and never unpickle.

The cache is written to a temporary directory next to its final place and renamed into place only when complete,
so an interrupted conversion never leaves a directory that looks like a valid cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentcot.errors import ModelError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20  # bytes per read when hashing or copying


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def safetensors_root() -> Path:
    """Where converted models live: `cache_dir()/safetensors`."""
    from latentcot.models.loading import cache_dir  # lazy: loading imports this module lazily too

    return cache_dir() / "safetensors"


def fingerprint_key(path: Path) -> str:
    """A cheap cache key for a GGUF file the toolkit does not pin: name, absolute path, size and mtime.

    Hashing a 0.5 GB file costs ~1-2 s on every load; (path, size, mtime) changes whenever the file is replaced,
    which is what matters for a user's own file. Bundled models key on their verified sha256 instead.
    """
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return f"{path.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def cached_dir(key: str) -> Path | None:
    """The converted model directory for `key`, or None when it has not been converted yet."""
    d = safetensors_root() / key
    return d if (d / "config.json").is_file() else None


def load_converted(directory: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a converted (safetensors, float32) model directory and its tokenizer on CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    try:
        tok = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, use_safetensors=True, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"the converted model cache {directory} is unreadable ({type(e).__name__}: {str(e)[:200]}); "
            "delete that directory and load again to reconvert"
        ) from None
    log.info("loaded %s from the safetensors cache in %.1f s", directory.name, time.perf_counter() - t0)
    return model, tok


def _read_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantises `path` with transformers into a float32 model and its tokenizer (slow: tens of seconds)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except ImportError as e:  # gguf or accelerate missing
        raise ModelError(f"reading GGUF files needs the `gguf` and `accelerate` packages: {e}") from None
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot read GGUF file {path}: {type(e).__name__}: {str(e)[:300]}") from None
    log.info("dequantised %s in %.1f s", path.name, time.perf_counter() - t0)
    return model, tok


def _strip_gguf_quantizer(model: PreTrainedModel) -> None:
    """Makes a GGUF-loaded model savable: transformers 5.x refuses to save while the (non-serialisable) GGUF
    quantizer is attached, though the weights are already plain float32 tensors."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        model.is_quantized = False


def convert_to_cache(path: Path, key: str) -> Path:
    """Dequantises the GGUF file `path` and saves it as safetensors under `safetensors_root()/key`.

    Returns the final directory. Written atomically: a temporary sibling directory is renamed into place, so a
    crash or Ctrl-C leaves at most a `.tmp-*` directory that is never read.
    """
    root = safetensors_root()
    final = root / key
    if cached_dir(key) is not None:
        return final
    model, tok = _read_gguf(path)
    _strip_gguf_quantizer(model)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
    try:
        t0 = time.perf_counter()
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{path.name}\n")
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the cache is as readable as any other cache
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same conversion first: keep theirs
            if cached_dir(key) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("saved the safetensors cache %s in %.1f s", final, time.perf_counter() - t0)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_gguf(
    path: Path | str, cache: bool = True, key: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a GGUF file as a float32 HF model and tokenizer on CPU.

    Args:
        path: the `.gguf` file.
        cache: convert once into the safetensors cache and load from there (False: dequantise every time and
            write nothing).
        key: cache key; callers that verified the file's sha256 pass a key derived from it. Default: a
            fingerprint of the file's path, size and mtime (`fingerprint_key`).

    Returns:
        (model, tokenizer). The model carries no quantizer state, so it can be saved and fine-tuned normally.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"GGUF file {path} does not exist")
    if not cache:
        model, tok = _read_gguf(path)
        _strip_gguf_quantizer(model)
        return model, tok
    key = key or fingerprint_key(path)
    directory = cached_dir(key) or convert_to_cache(path, key)
    return load_converted(directory)
