"""`cot`: zero-shot chain of thought through the model's chat template (Kojima et al. 2022; the SoftCoT
paper's main baseline). The task's instruction asks for step-by-step reasoning ending "The answer is N"."""

from __future__ import annotations

from latentcot.methods.base import Method, register


@register("cot")
class CoT(Method):
    """Hard-token CoT: the prompt, then ordinary generation through the shared engine."""

    refills = True
