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


def siren_sdf_terms(
    surface_pred: torch.Tensor,
    surface_grad: torch.Tensor,
    normals: torch.Tensor,
    off_pred: torch.Tensor,
    off_grad: torch.Tensor,
    alpha: float = 100.0,
) -> dict[str, torch.Tensor]:
    """SIREN's SDF terms (Sitzmann et al. 2020, ``loss_functions.sdf``), unweighted.

    ``surface_pred`` (S, 1) and ``off_pred`` (M, 1): the field f at S surface points and M off-surface
    points; ``surface_grad`` (S, d), ``off_grad`` (M, d): ∇f there; ``normals`` (S, d): the surface normals.
    As in SIREN every term is a mean over all S + M points of the batch, zero where it does not apply:

    * ``sdf``: |f| on the surface;
    * ``inter``: exp(−``alpha``·|f|) off the surface (pushes the zero level set away from them);
    * ``normal``: 1 − cos(∇f, n) on the surface;
    * ``eikonal``: | ‖∇f‖ − 1 | everywhere.
    """
    n = surface_pred.shape[0] + off_pred.shape[0]
    grads = torch.cat([surface_grad, off_grad])
    return {
        "sdf": surface_pred.abs().sum() / n,
        "inter": torch.exp(-alpha * off_pred.abs()).sum() / n,
        "normal": (1 - F.cosine_similarity(surface_grad, normals, dim=-1)).sum() / n,
        "eikonal": (grads.norm(dim=-1) - 1).abs().mean(),
    }
