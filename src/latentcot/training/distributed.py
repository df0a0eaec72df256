"""The training loop's view of the launch: one process, or several under `accelerate launch` / torchrun.

Nothing distributed is home-made: several processes (or mixed precision) go through `accelerate.Accelerator`,
which wraps the method (the module whose `forward` is the training step) in DDP, FSDP or DeepSpeed as the
launch's accelerate config says, and sets up bf16/fp16 autocast and fp16 loss scaling. A plain single-process
fp32 run touches none of it, so its numbers are exactly those of the loop without this layer.

Frozen weights (SoftCoT's assistant and backbone, a LoRA base model) are never synced: DDP is told to ignore
every parameter that does not require a gradient, and only trainable parameters enter the optimizer.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from latentcot.config import check

log = logging.getLogger(__name__)

MIXED_PRECISION = ("no", "bf16", "fp16")


def launched_world_size() -> int:
    """Processes of this launch (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def split_global_batch(global_batch: int, per_device: int, grad_accum: int, world: int) -> tuple[int, int]:
    """(per-device micro-batch, global batch): global = per-device x grad_accum x processes.

    `global_batch` 0 derives it from the per-device micro-batch; otherwise the per-device micro-batch is derived
    and must come out whole (ConfigError naming `global_batch_size` otherwise).
    """
    if global_batch <= 0:
        return per_device, per_device * grad_accum * world
    check(global_batch % (grad_accum * world) == 0, "global_batch_size",
          f"{global_batch} examples per optimizer step do not split over {world} processes x grad_accum {grad_accum}: "
          f"use a multiple of {grad_accum * world}, or change grad_accum or the process count")
    return global_batch // (grad_accum * world), global_batch


class Runtime:
    """Rank, world size and the few collective operations the loop needs.

    Args:
        mixed_precision: "no", "bf16" or "fp16" (autocast through accelerate; fp16 adds loss scaling).
        find_unused_parameters: passed to DDP (for methods whose steps leave some trainable weights unused).
    """

    def __init__(self, mixed_precision: str = "no", find_unused_parameters: bool = False, grad_accum: int = 1) -> None:
        self.acc = None
        if launched_world_size() > 1 or mixed_precision != "no":
            from accelerate import Accelerator
            from accelerate.utils import DistributedDataParallelKwargs

            self.acc = Accelerator(
                cpu=not torch.cuda.is_available(),  # several CPU processes: DDP over gloo
                # "no" leaves it to the launch's accelerate config (ACCELERATE_MIXED_PRECISION)
                mixed_precision=None if mixed_precision == "no" else mixed_precision,
                # DeepSpeed's engine accumulates itself; elsewhere accelerate would divide each loss by it
                gradient_accumulation_steps=grad_accum if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true" else 1,
                kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
            )
        self.world = self.acc.num_processes if self.acc else 1
        self.rank = self.acc.process_index if self.acc else 0
        self.kind = str(self.acc.distributed_type.value) if self.acc else "NO"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def deepspeed(self) -> bool:
        return self.kind == "DEEPSPEED"

    def wrap(self, method: nn.Module) -> nn.Module:
        """The module the loop calls: `method` itself, or its DDP / FSDP wrapper. Frozen weights are ignored by DDP."""
        if self.acc is None:
            return method
        if self.kind in ("MULTI_GPU", "MULTI_CPU"):
            from torch.nn.parallel import DistributedDataParallel as DDP

            frozen = [n for n, p in method.named_parameters() if not p.requires_grad]
            frozen += [n for n, _ in method.named_buffers()]
            DDP._set_params_and_buffers_to_ignore_for_model(method, frozen)
        return self.acc.prepare_model(method, device_placement=self.kind != "NO" or torch.cuda.is_available())

    def optimizer(self, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return opt if self.acc is None else self.acc.prepare_optimizer(opt)

    def backward(self, loss: torch.Tensor) -> None:
        if self.acc is None:
            loss.backward()
        else:
            self.acc.backward(loss)

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module, skip: bool) -> Iterator[None]:
        """No gradient all-reduce for this micro-batch (all but the last of a step) when `skip`."""
        if skip and self.acc is not None and self.world > 1:
            with self.acc.no_sync(model):
                yield
        else:
            yield

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over processes (a no-op on one process)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(list(values), dtype=torch.float64, device=self.acc.device)
        return self.acc.reduce(t, reduction="sum").tolist()

    def unscale(self, opt: torch.optim.Optimizer) -> None:
        """fp16: turn the scaled gradients back into true ones before they are divided and clipped."""
        if self.acc is not None and self.acc.scaler is not None:
            self.acc.unscale_gradients(opt)

    def wait(self) -> None:
        if self.world > 1:
            self.acc.wait_for_everyone()
