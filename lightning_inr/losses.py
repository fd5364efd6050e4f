"""Training objectives, each a small named function (no loss chosen by a string)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def q_weighted_mse(expert_preds: torch.Tensor, target: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Neural Experts' reconstruction loss: mean over experts, points and channels of q_k·(y_k − y)².

    ``expert_preds`` (K, N, C), ``target`` (N, C), ``q`` (N, K). With K = 1 and q = 1 this is the
    plain MSE, so the same function trains the single-MLP baselines. Every expert is pulled towards
    the target where the manager trusts it, and the manager moves q towards the expert that fits best.
    """
    sq = (expert_preds - target.unsqueeze(0)).square()  # (K, N, C)
    return (sq * q.T.unsqueeze(-1)).mean()


def manager_pretraining_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.01, uniform_weight: float = 0.1
) -> torch.Tensor:
    """Cross-entropy of the manager's logits to a fixed label map, plus a pull of every logit's
    sigmoid towards 1/K (binary cross-entropy), which keeps the logits small and balanced.

    ``logits`` (N, K), ``labels`` (N,) long.
    """
    k = logits.shape[-1]
    ce = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    uniform = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 / k))
    return ce + uniform_weight * uniform


def q_weighted_surface_loss(surface_preds: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """SDF zero-level-set term: mean over experts and surface points of q_k·|f_k(x)|.

    ``surface_preds`` (K, N, 1), ``q`` (N, K).
    """
    return (surface_preds.squeeze(-1).abs() * q.T).mean()


def q_weighted_sdf_loss(
    preds: torch.Tensor, sdf: torch.Tensor, q: torch.Tensor, clamp: float = 3.0
) -> torch.Tensor:
    """SDF regression term: mean of q_k·|clamp(f_k(x)) − clamp(sdf(x))| (clamped to ±``clamp``).

    ``preds`` (K, N, 1), ``sdf`` (N,), ``q`` (N, K).
    """
    diff = preds.squeeze(-1).clamp(-clamp, clamp) - sdf.clamp(-clamp, clamp).unsqueeze(0)
    return (diff.abs() * q.T).mean()
