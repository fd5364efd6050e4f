"""Fixed label maps that the manager is pretrained to reproduce before reconstruction starts.

``random`` (the paper's best): an independent uniform label per coordinate. ``grid``: the
coordinate box cut into K regular blocks along its axes. ``kmeans``: k-means on the signal values,
optionally with the coordinates appended (``coord_weight``·x; the paper's colour + 0.25·xy).
``none``: no pretraining.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

LabelMapKind = Literal["random", "grid", "kmeans", "none"]


def random_labels(n_points: int, n_experts: int, seed: int = 0) -> torch.Tensor:
    """One independent uniform label in ``[0, K)`` per point."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_experts, (n_points,), generator=gen)


def grid_labels(coords: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Cut the bounding box of ``coords`` (N, d) into K blocks: ⌈K^(1/d)⌉ cells per axis, numbered
    in raster order, and cell numbers folded onto K labels (exact K blocks when K is a d-th power)."""
    n, d = coords.shape
    per_axis = max(1, math.ceil(n_experts ** (1.0 / d) - 1e-9))
    lo, hi = coords.min(0).values, coords.max(0).values
    cell = ((coords - lo) / (hi - lo).clamp_min(1e-12) * per_axis).long().clamp_(0, per_axis - 1)
    flat = torch.zeros(n, dtype=torch.long)
    for axis in range(d):
        flat = flat * per_axis + cell[:, axis]
    return flat % n_experts


def kmeans_labels(
    values: torch.Tensor, n_experts: int, coords: torch.Tensor | None = None, coord_weight: float = 0.0,
    seed: int = 0,
) -> torch.Tensor:
    """k-means (Lloyd, k-means++ seeding) of ``values`` (N, C), optionally with ``coord_weight``·coords."""
    from scipy.cluster.vq import kmeans2

    feats = values.reshape(values.shape[0], -1).double()
    if coords is not None and coord_weight > 0:
        feats = torch.cat([feats, coord_weight * coords.double()], dim=-1)
    _, labels = kmeans2(feats.numpy(), n_experts, minit="++", seed=np.random.default_rng(seed))
    return torch.from_numpy(labels.astype(np.int64))


def make_label_map(
    kind: LabelMapKind,
    coords: torch.Tensor,
    n_experts: int,
    values: torch.Tensor | None = None,
    kmeans_coord_weight: float = 0.0,
    seed: int = 0,
) -> torch.Tensor | None:
    """The label map of ``kind`` for ``coords`` (N, d); ``None`` for ``none``."""
    if kind == "none":
        return None
    if kind == "random":
        return random_labels(coords.shape[0], n_experts, seed)
    if kind == "grid":
        return grid_labels(coords, n_experts)
    if kind == "kmeans":
        if values is None:
            raise ValueError("label_map='kmeans' needs the signal values; this data provides none")
        return kmeans_labels(values, n_experts, coords, kmeans_coord_weight, seed)
    raise ValueError(f"label_map must be random|grid|kmeans|none, got {kind!r}")
