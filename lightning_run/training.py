"""Small facts about a training run that both methods' LightningModules need."""

from __future__ import annotations

import lightning.pytorch as pl
from torch import nn


def effective_batch_size(trainer: pl.Trainer) -> int:
    """Per-device batch x processes x gradient accumulation (the batch a learning-rate scaling rule is about)."""
    batch_size = getattr(trainer.train_dataloader, "batch_size", None)
    if not batch_size:
        raise RuntimeError("cannot scale the learning rate: the train DataLoader has no batch_size")
    return batch_size * trainer.world_size * trainer.accumulate_grad_batches


def compile_once(owner: pl.LightningModule, module: nn.Module, enabled: bool) -> None:
    """``module.compile()`` the first time it is asked for; for ``configure_model``, which Lightning calls
    on the final device and again at every stage (fit, validate, test) of the same module."""
    if enabled and not getattr(owner, "_compiled", False):
        module.compile()
        owner._compiled = True
