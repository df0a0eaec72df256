"""Supervised fine-tuning baselines: `cot_sft` (rationale + answer), `no_cot_sft` (answer only) and `lora`
(the SoftCoT paper's LoRA-SFT baseline: `cot_sft` with LoRA adapters through PEFT).

Full fine-tuning suits tiny models trained from scratch; real backbones use LoRA (`lora_r > 0`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from latentcot.config import check
from latentcot.errors import ConfigError
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
        check_lora(self.lora_alpha, self.lora_dropout, self.lora_targets)


def check_lora(alpha: float, dropout: float, targets: Sequence[str]) -> None:
    """The LoRA settings every method with adapters checks before a model loads (PEFT would refuse them later, or
    an adapter scaled by alpha = 0 would train nothing)."""
    check(alpha > 0, "lora_alpha", f"must be > 0 (the adapters' scale is alpha / r), got {alpha}")
    check(0 <= dropout < 1, "lora_dropout", f"must be in [0, 1) (a dropout probability), got {dropout}")
    check(len(targets) > 0, "lora_targets", "must name at least one module (or all-linear)")


def apply_lora(backbone: Backbone, r: int, alpha: int, dropout: float, targets: Sequence[str]) -> None:
    """Wraps the backbone's model with PEFT LoRA adapters (only the adapters train).

    Raises:
        ConfigError: `targets` name no module of the model that LoRA can adapt (known only once it is loaded).
    """
    from peft import LoraConfig, get_peft_model

    target = targets[0] if list(targets) == ["all-linear"] else list(targets)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target, task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():  # GPT-2's Conv1D layers: PEFT sets fan_in_fan_out itself and says so
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False", category=UserWarning)
            backbone.model = get_peft_model(backbone.model, cfg)
    except ValueError as e:  # PEFT: no module of that name (NoMatchingPeftModuleError), or of a kind it cannot adapt
        if not str(e).startswith("Target module"):
            raise
        raise ConfigError(f"lora_targets: {','.join(targets)} names no module of model {backbone.name} that LoRA can "
                          f"adapt; its modules LoRA can adapt: {', '.join(adaptable(backbone.model))}") from None


def adaptable(model: torch.nn.Module, most: int = 12) -> list[str]:
    """Names (last component, in model order, at most `most`) of the modules LoRA can adapt: linear layers, GPT-2's
    Conv1D and embeddings."""
    from transformers.pytorch_utils import Conv1D

    names: list[str] = []
    for name, m in model.named_modules():
        short = name.rsplit(".", 1)[-1]
        if isinstance(m, (torch.nn.Linear, torch.nn.Embedding, Conv1D)) and short not in names:
            names.append(short)
    return names[:most] + (["..."] if len(names) > most else [])


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
    """Attributes: as `cot_sft`'s, but LoRA is the method: lora_r >= 1 (full fine-tuning is `cot_sft`)."""

    lora_r: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.lora_r >= 1, "lora_r",
              f"must be >= 1 for method lora (a full fine-tune is method cot_sft), got {self.lora_r}")


@register("lora")
class LoRASFT(_SFT):
    """LoRA-SFT of the backbone on rationale + answer (the SoftCoT paper's `LoRA` baseline)."""

    Config = LoRAConfig
