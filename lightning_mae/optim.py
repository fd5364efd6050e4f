"""Optimizer pieces shared by pretraining and the downstream recipes: weight-decay groups, warm-up + cosine."""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn


def param_groups_weight_decay(
    model: nn.Module, weight_decay: float, no_weight_decay: Iterable[str] = ()
) -> list[dict]:
    """Two groups: decayed weights, and biases / norm parameters / named tokens without decay."""
    skip = set(no_weight_decay)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(step: int, warmup_steps: float, total_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up from 0, then half-cosine down to ``min_ratio``."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
