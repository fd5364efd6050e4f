"""Token relations: how each patch relates to the others, as a row-stochastic matrix.

Used by the analysis suite (KL of token relations between epochs or models, SG-MAE Fig. 3b) and by
``SelfGuidedMasking(start_epoch="auto")`` (switch once the relations stop moving).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def token_relations(z: Tensor, temperature: float = 0.1) -> Tensor:
    """Row-softmax of the cosine-similarity matrix of patch embeddings ``z`` (B, N, D) -> (B, N, N).

    Row i is token i's distribution over the tokens it relates to; ``temperature`` sharpens it
    (cosine similarities live in [-1, 1], so a temperature of 1 would leave every row near uniform).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = F.normalize(z.float(), dim=-1)
    return torch.softmax(z @ z.transpose(1, 2) / temperature, dim=-1)


def relation_kl(p: Tensor, q: Tensor, eps: float = 1e-12) -> Tensor:
    """Mean over images and rows of KL(p_i || q_i) between two row-stochastic (B, N, N) relations."""
    if p.shape != q.shape:
        raise ValueError(f"relations of different shapes: {tuple(p.shape)} vs {tuple(q.shape)}")
    return (p * ((p + eps).log() - (q + eps).log())).sum(-1).mean()
