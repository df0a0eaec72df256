"""Supervised fine-tuning baselines: `cot_sft` (rationale + answer), `no_cot_sft` (answer only) and `lora`
(the SoftCoT paper's LoRA-SFT baseline: `cot_sft` with LoRA adapters through PEFT).

Full fine-tuning suits tiny models trained from scratch; real backbones use LoRA (`lora_r > 0`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from latentcot.config import check
from latentcot.methods.base import LossOutput, Method, MethodConfig, register
from latentcot.models.backbone import Backbone
from latentcot.models.splice import tokens
from latentcot.tasks.base import Example, Task


@dataclass
class SFTConfig(MethodConfig):
    """Attributes:
    lora_r: LoRA rank (0 = full fine-tune of the backbone).
    lora_alpha: LoRA scaling numerator.
    lora_dropout: dropout on the LoRA path.
    lora_targets: module names to adapt ("all-linear" or a comma list such as q_proj,v_proj).
    """

    lora_r: int = 0
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["all-linear"])

    def __post_init__(self) -> None:
        check(self.lora_r >= 0, "lora_r", f"must be >= 0 (0 = full fine-tune), got {self.lora_r}")


def apply_lora(backbone: Backbone, r: int, alpha: int, dropout: float, targets: Sequence[str]) -> None:
    """Wraps the backbone's model with PEFT LoRA adapters (only the adapters train)."""
    from peft import LoraConfig, get_peft_model

    target = targets[0] if list(targets) == ["all-linear"] else list(targets)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target, task_type="CAUSAL_LM")
    backbone.model = get_peft_model(backbone.model, cfg)


class _SFT(Method):
    Config = SFTConfig
    trains = True
    starts_as_model = True
    refills = True
    with_rationale = True

    def __init__(self, cfg: SFTConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        if cfg.lora_r > 0:
            apply_lora(backbone, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        else:
            backbone.model.requires_grad_(True)

    def loss(self, examples: Sequence[Example], task: Task) -> LossOutput:
        rows = [
            [tokens(self.prompt_ids(ex, task)), tokens(self.target_ids(ex, task, self.with_rationale), labels=True)]
            for ex in examples
        ]
        return self.sft_loss(rows)


@register("cot_sft")
class CoTSFT(_SFT):
    """Fine-tuned to write the rationale, then the answer."""


@register("no_cot_sft")
class NoCoTSFT(_SFT):
    """Fine-tuned to answer directly (no rationale): the lower bound of every latent method."""

    with_rationale = False


@dataclass
class LoRAConfig(SFTConfig):
    lora_r: int = 8


@register("lora")
class LoRASFT(_SFT):
    """LoRA-SFT of the backbone on rationale + answer (the SoftCoT paper's `LoRA` baseline)."""

    Config = LoRAConfig
