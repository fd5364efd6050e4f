"""Small facts about a training run that both methods' LightningModules need."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn


def effective_batch_size(trainer: pl.Trainer) -> int:
    """Per-device batch x processes x gradient accumulation (the batch a learning-rate scaling rule is about)."""
    batch_size = getattr(trainer.train_dataloader, "batch_size", None)
    if not batch_size:
        raise RuntimeError("cannot scale the learning rate: the train DataLoader has no batch_size")
    return batch_size * trainer.world_size * trainer.accumulate_grad_batches


def compile_once(owner: pl.LightningModule, module: nn.Module, enabled: bool) -> None:
    """``module.compile()`` the first time it is asked for; for ``configure_model``, which Lightning calls
    on the final device and again at every stage (fit, validate, test) of the same module.

    With a fallback: a call the compiled forward cannot make (no C++ compiler for the CPU backend, an
    operation the compiler does not support, such as the double backward of a gradient loss) runs eager
    instead; if the eager call succeeds, the module stays eager for the rest of the run, with one warning
    naming the cause. An error of the eager call itself is raised as usual."""
    if enabled and not getattr(owner, "_compiled", False):
        module.compile()
        compiled = module._compiled_call_impl

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - decided below by the eager call
                module._compiled_call_impl = None
                try:
                    out = module(*args, **kwargs)
                except Exception:
                    module._compiled_call_impl = call  # a bug of the module, not of the compiler
                    raise
                rank_zero_warn(
                    f"torch.compile failed for {type(module).__name__} ({type(error).__name__}: "
                    f"{str(error).strip().splitlines()[0][:200] if str(error).strip() else 'no message'}); "
                    "running eager from now on. Set compile: false to skip the attempt"
                )
                return out

        module._compiled_call_impl = call
        owner._compiled = True
