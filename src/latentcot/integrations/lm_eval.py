"""latentcot as an lm-evaluation-harness model: `--model latentcot --model_args model=ALIAS,method=NAME,...`.

Every lm-eval `generate_until` request goes through the method's own generation (latent, soft or hard thinking,
the shared engine): the request's context is the user turn, which the method puts through the model's chat
template exactly as `latentcot eval` does with a task's prompt, so the same prompt text gives the same outputs.
`loglikelihood` and `loglikelihood_rolling` (multiple-choice and perplexity tasks) are defined for the hard-token
methods (`LOGLIKELIHOOD_METHODS`: the backbone, or its fine-tuned weights, scores the continuation's tokens after
the raw context); any other method refuses them with one clear error.

model_args: `model` (alias, directory, .gguf or hub id), `method`, and any latentcot setting (`weights=RUN_DIR`,
`num_thoughts=6`, `max_new_tokens=512` (used when a task gives no max_gen_toks), `seed=1`, `dtype`, ...).
lm-eval's `--batch_size` (an integer; "auto" means latentcot's default 8) and `--device` are used.
Per request, lm-eval's generation kwargs set `max_new_tokens` (`max_gen_toks`), `temperature` (0 unless
`do_sample`), `top_p`, `top_k` and the stop strings (`until`, cut as lm-eval cuts them).

lm-eval (0.4.13) resolves `--model` before any user code runs and has no plugin entry point for models, so
`lm_eval --model latentcot` needs this module imported first: run `latentcot-lm-eval ARGS` (or
`python -m latentcot.integrations.lm_eval ARGS`), which is the lm-eval command line with the model registered,
or in Python `import latentcot.integrations.lm_eval` before `lm_eval.simple_evaluate(model="latentcot", ...)`.
Needs `pip install 'latentcot[lmeval]'`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from latentcot.errors import ConfigError, LatentCotError
from latentcot.tasks.base import Example, Task

try:
    import lm_eval.models  # noqa: F401  (registers lm-eval's own models first: get_model skips that once any is there)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - the optional extra is missing
    raise ConfigError("the lm-eval integration needs lm-evaluation-harness: pip install 'latentcot[lmeval]'") from None

log = logging.getLogger(__name__)

MODEL_NAME = "latentcot"
# Methods whose output is the backbone's (or its fine-tuned weights') token distribution given plain text, so the
# log-likelihood of a continuation is defined; the others think in latents, soft inputs or inserted tokens.
LOGLIKELIHOOD_METHODS = frozenset({"cot", "cot_sft", "no_cot_sft", "lora"})


class PromptTask(Task):
    """The task of an lm-eval request: its context is the whole user turn (lm-eval already formatted it)."""

    name = "lm-eval"
    instruction = ""

    def prompt(self, ex: Example) -> str:
        return ex.question


def context_id(context: str) -> str:
    """A stable id for a request's context: the random stream of a sampled answer depends only on it and the seed."""
    return "lmeval-" + hashlib.sha256(context.encode()).hexdigest()[:16]


@register_model(MODEL_NAME)
class LatentCotLM(LM):
    """An lm-eval model that runs one latentcot method (see the module docstring)."""

    def __init__(
        self,
        model: str = "tiny-gpt2",
        method: str = "cot",
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        device: str | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        from latentcot.pipeline import build, resolve

        values: dict[str, Any] = {"model": str(model), "method": str(method), **settings}
        if batch_size is not None and str(batch_size).split(":")[0].isdigit():
            values["batch_size"] = int(str(batch_size).split(":")[0])
        elif batch_size is not None:
            log.info("batch_size=%s: latentcot uses its batch_size setting (default 8)", batch_size)
        if device and "device" not in settings:  # lm-eval's --device (its default is "cuda"); model_args win
            want = str(device)
            if want.startswith("cuda") and not torch.cuda.is_available():
                log.info("--device %s: no CUDA here, running on the CPU", want)
                want = "cpu"
            values["device"] = want
        self.res = resolve(values)
        self.method, _ = build(self.res)
        self.method.eval()
        self.task = PromptTask()

    # --- generation ------------------------------------------------------------------------------------------
    def generation_config(self, gen_kwargs: dict[str, Any]) -> Any:
        """latentcot's GenerationConfig for one lm-eval request's generation kwargs."""
        from lm_eval.models.utils import normalize_gen_kwargs

        kw = normalize_gen_kwargs(dict(gen_kwargs), self.res.generation.max_new_tokens)
        base = self.res.generation
        sampled = bool(kw.get("do_sample"))
        return dataclasses.replace(
            base,
            max_new_tokens=int(kw["max_gen_toks"]),
            temperature=float(kw.get("temperature") or 0.0) if sampled else 0.0,
            top_p=float(kw.get("top_p", base.top_p) or base.top_p),
            top_k=int(kw.get("top_k", base.top_k) or 0),
            stop=[s for s in kw.get("until") or [] if s],
            num_samples=1,
        )

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        """One output text per request (`request.args` = (context, generation kwargs)), in request order."""
        from latentcot.decoding.sampling import RowRandom, row_seed
        from latentcot.methods.base import generate_batched

        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            groups[json.dumps(req.args[1], sort_keys=True, default=str)].append(i)
        seen: Counter[str] = Counter()  # repeats of one context are samples 0, 1, ... of it
        seed = self.res.run.seeds[0]
        bs = self.res.run.batch_size
        bar = tqdm(
            total=len(requests),
            desc=f"latentcot {self.method.name}",
            disable=disable_tqdm or not self.res.run.progress,
        )
        for idxs in groups.values():
            gen = self.generation_config(requests[idxs[0]].args[1])
            for start in range(0, len(idxs), bs):
                chunk = idxs[start : start + bs]
                exs, seeds = [], []
                for i in chunk:
                    context = requests[i].args[0]
                    ex = Example(id=context_id(context), question=context, answer="")
                    exs.append(ex)
                    seeds.append(row_seed(seed, ex.id, seen[ex.id]))
                    seen[ex.id] += 1
                outs = generate_batched(
                    self.method, exs, self.task, gen, RowRandom(seeds, self.method.backbone.device)
                )
                for i, o in zip(chunk, outs):
                    out[i] = o.text
                    self.cache_hook.add_partial("generate_until", requests[i].args, o.text)
                bar.update(len(chunk))
        bar.close()
        return [o or "" for o in out]

    # --- log-likelihoods -------------------------------------------------------------------------------------
    def _check_loglikelihood(self) -> None:
        if self.method.name not in LOGLIKELIHOOD_METHODS:
            raise ConfigError(
                f"method {self.method.name!r} has no log-likelihood of a given continuation (it thinks in latents or "
                f"soft inputs before answering), which this lm-eval task asks for: use a generate_until task, or "
                f"method={' / '.join(sorted(LOGLIKELIHOOD_METHODS))}"
            )

    @torch.no_grad()
    def _continuation_logprob(self, context: str, continuation: str) -> tuple[float, bool]:
        """log P(continuation | context) under the backbone (raw text, no chat template), and whether greedy
        decoding from the context would produce exactly its tokens."""
        bb = self.method.backbone
        tok = bb.tokenizer
        ctx_ids = bb.encode(context) if context else []
        whole = bb.encode(context + continuation)
        cont_ids = whole[len(ctx_ids) :] if whole[: len(ctx_ids)] == ctx_ids else bb.encode(continuation)
        prefix = [tok.bos_token_id] if tok.bos_token_id is not None else ([] if ctx_ids else [tok.eos_token_id])
        ids = prefix + ctx_ids + cont_ids
        if not cont_ids:
            return 0.0, True
        bb.check_length(len(ids), "context + continuation")
        logits = bb.forward(input_ids=torch.tensor([ids], device=bb.device)).logits[0].float()  # (T, V)
        n = len(cont_ids)
        logp = torch.log_softmax(logits[-n - 1 : -1], dim=-1)  # (n, V): the positions that predict the continuation
        target = torch.tensor(cont_ids, device=logp.device)
        total = logp.gather(1, target[:, None]).sum().item()
        return float(total), bool((logp.argmax(dim=-1) == target).all().item())

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self._check_loglikelihood()
        self.method.eval()
        res = []
        for req in tqdm(requests, desc="loglikelihood", disable=disable_tqdm or not self.res.run.progress):
            context, continuation = req.args
            res.append(self._continuation_logprob(context, continuation))
            self.cache_hook.add_partial("loglikelihood", req.args, res[-1])
        return res

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[float]:
        self._check_loglikelihood()
        self.method.eval()
        res = []
        for req in tqdm(requests, desc="loglikelihood_rolling", disable=disable_tqdm or not self.res.run.progress):
            res.append(self._continuation_logprob("", req.args[0])[0])
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, res[-1])
        return res

    # --- what lm-eval asks of a model besides requests ---------------------------------------------------------
    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        raise ConfigError(
            "latentcot applies the model's chat template itself (methods splice thoughts into it): "
            "run lm-eval without --apply_chat_template"
        )

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.method.backbone.tokenizer, "name_or_path", self.res.run.model)).replace("/", "__")

    def get_model_info(self) -> dict[str, Any]:
        return {
            "model": self.res.run.model,
            "method": self.method.name,
            "latentcot_config": json.loads(json.dumps(self.res.to_dict(), default=str)),
        }


def main(argv: Sequence[str] | None = None) -> int:
    """`latentcot-lm-eval ARGS`: the lm-eval command line with `--model latentcot` registered."""
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    except LatentCotError as e:
        sys.stderr.write(f"latentcot-lm-eval: error: {e}\n")
        return 2
    except SystemExit as e:
        return int(e.code or 0) if isinstance(e.code, int | None) else 2
    finally:
        sys.argv = saved
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
