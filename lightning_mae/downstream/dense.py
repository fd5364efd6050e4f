"""What the dense fine-tuning recipes (COCO instance segmentation, ADE20K semantic segmentation) share:
their hyperparameters saved without an encoder module, and AdamW with layer-wise lr decay over the
encoder, its learning rate set at every iteration by the recipe's schedule."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_mae.downstream.encoder import ViTEncoder
from lightning_mae.downstream.layer_decay import param_groups_layer_decay


def save_hyperparameters_except_encoder(module: pl.LightningModule, encoder: Any) -> None:
    """``module.save_hyperparameters()`` of the calling constructor's arguments, leaving out an ``encoder``
    module built in Python (its weights are in the state dict), so checkpoints load with ``weights_only``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
        module.save_hyperparameters(ignore=["encoder"] if isinstance(encoder, nn.Module) else [],
                                    frame=inspect.currentframe().f_back)


def layer_decay_adamw(module: pl.LightningModule, encoder: ViTEncoder, encoder_prefix: str,
                      schedule: Callable[[int, int], float]) -> dict[str, Any]:
    """``configure_optimizers``' answer: AdamW (``module.hparams``' ``lr``, ``betas``, ``weight_decay``)
    with layer-wise lr decay (``layer_decay``) over ``encoder``, named ``encoder_prefix`` in ``module``
    (what comes after it, the neck and heads, at the full lr), and a per-step ``LambdaLR`` whose factor
    at step ``s`` is ``schedule(s, total_steps)``."""
    hp = module.hparams
    groups = param_groups_layer_decay(module, encoder.depth, hp.weight_decay, hp.layer_decay,
                                      encoder.no_weight_decay(), encoder_prefix=encoder_prefix)
    for group in groups:
        group["lr"] = hp.lr * group["lr_scale"]
    optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
    total = max(int(module.trainer.estimated_stepping_batches), 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step, total))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
