"""`assist_cot`: the SoftCoT paper's hard-token control (Xu et al., ACL 2025, arXiv 2502.12134, "Zero-Shot
Assist-CoT"): the assistant model first writes K hint tokens (greedy), which are put into the backbone's
prompt as text; the backbone then reasons as in zero-shot CoT. Training-free.

It is SoftCoT with the soft thoughts replaced by the assistant's decoded words, so it answers "are K hard
hints worth as much as N soft thoughts?" (the paper: about 24 hard ~ 6 soft). Both models decode through the
shared engine, batched and left-padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from latentcot.config import check
from latentcot.decoding.engine import Engine, RowOutput
from latentcot.decoding.sampling import GenerationConfig, RowRandom
from latentcot.methods.base import Method, MethodConfig, distinct_questions, register
from latentcot.methods.softcot import load_assistant
from latentcot.models.backbone import Backbone
from latentcot.models.splice import splice, tokens
from latentcot.tasks.base import Example, Task

DEFAULT_HINT_INSTRUCTION = (
    "You are a helpful assistant. Read the question and write brief hints for how to solve it; "
    "another model will use your hints to solve it."
)


@dataclass
class AssistCoTConfig(MethodConfig):
    """Attributes:
    assistant: the hint-writing model (alias, local directory, .gguf or hub id); the backbone itself when
        it names the same model.
    hint_tokens: K, hint tokens the assistant writes (greedy; fewer when it ends early).
    assistant_instruction: what the assistant reads before the question.
    hint_prefix: the text that introduces the hints in the backbone's prompt.
    """

    assistant: str = "tiny-gpt2"
    hint_tokens: int = 24
    assistant_instruction: str = DEFAULT_HINT_INSTRUCTION
    hint_prefix: str = "Hints:"

    def __post_init__(self) -> None:
        check(self.hint_tokens > 0, "hint_tokens", f"must be > 0, got {self.hint_tokens}")


@register("assist_cot")
class AssistCoT(Method):
    """Assistant hints (hard tokens) in the backbone's prompt, then ordinary generation."""

    plain_prompts = True  # generation = plain (spliced) prompts through self.generator

    Config = AssistCoTConfig

    def __init__(self, cfg: AssistCoTConfig, backbone: Backbone, assistant: Backbone | None = None) -> None:
        super().__init__(cfg, backbone)
        if assistant is None:
            assistant = backbone if cfg.assistant == backbone.name else load_assistant(cfg.assistant, backbone)
        self.assistant = assistant
        self.assistant_engine = Engine(assistant)

    @classmethod
    def smoke_settings(cls, model: str) -> dict[str, Any]:
        return {"assistant": "tiny-llama" if model == "tiny-gpt2" else "tiny-gpt2", "hint_tokens": 4}

    def hints(self, examples: Sequence[Example]) -> list[RowOutput]:
        """The assistant's greedy hints, one per distinct question of `examples` (in first-seen order)."""
        a = self.assistant
        rows = [[tokens(a.encode(a.chat_prompt(f"{self.cfg.assistant_instruction}\n\nQuestion: {ex.question}")))] for ex in examples]
        state = self.assistant_engine.prefill(splice(rows, a.embed, a.tokenizer.pad_token_id or 0, "left"))
        return self.assistant_engine.generate(state, GenerationConfig(max_new_tokens=self.cfg.hint_tokens), None)

    def generate(
        self, examples: Sequence[Example], task: Task, gen: GenerationConfig, rand: RowRandom | None
    ) -> list[RowOutput]:
        firsts, pick = distinct_questions(examples)  # samples of one question share one (greedy) hint
        hints = self.hints(firsts)
        picked = [hints[i] for i in pick]
        rows = []
        for ex, hint in zip(examples, picked):
            user = f"{task.prompt(ex)}\n\n{self.cfg.hint_prefix} {hint.text.strip()}"
            rows.append([tokens(self.backbone.encode(self.backbone.chat_prompt(user, system=self.cfg.system)))])
        outs = self.generator.generate_rows(rows, gen, rand)
        for out, hint in zip(outs, picked):
            out.prefill_tokens += hint.prefill_tokens
            out.extra.update(hints=hint.text, assistant_prefill_tokens=hint.prefill_tokens, assistant_decode_steps=hint.decode_steps)
        return outs
