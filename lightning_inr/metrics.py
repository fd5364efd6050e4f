"""Evaluation metrics of fitted signals: images, audio, signed distance fields.

PSNR here is the standard one on images in [0, 1]. The official Neural Experts code computes
``10·log10(max(gt)² / MSE)`` on data mapped to [−1, 1]: the MSE there is 4× the [0, 1] MSE and the
peak is max(gt) ≤ 1, so for the same reconstruction the official number is 20·log10(2) ≈ 6.02 dB
*lower* than the standard PSNR (more when the image has no pure white). Note: the project brief
states the offset the other way round; the code (``models/rgb_losses.py: PSNR`` applied to the
[−1, 1] image) gives this direction, and :func:`official_psnr` reproduces it for comparison.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

OFFICIAL_PSNR_OFFSET_DB = 20 * math.log10(2.0)  # standard [0,1] PSNR − official [−1,1] PSNR (max(gt) = 1)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB; ``pred`` is clipped to the data range first."""
    mse = (pred.clamp(0, data_range) - target).square().mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(data_range**2 / mse)


def official_psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """The official code's PSNR of [0, 1] images: computed after mapping both to [−1, 1], peak max(gt)."""
    p, t = 2 * pred - 1, 2 * target - 1
    return 10 * math.log10(t.max().item() ** 2 / (p - t).square().mean().item())


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Structural similarity of (H, W, C) images in [0, 1] (11×11 Gaussian window, σ = 1.5)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    p = pred.clamp(0, 1).permute(2, 0, 1).unsqueeze(0).double()
    t = target.permute(2, 0, 1).unsqueeze(0).double()
    return float(structural_similarity_index_measure(p, t, data_range=1.0))


_LPIPS_WARNED = False


def lpips_weights_available(net: str = "alex") -> bool:
    """Whether torchvision's backbone weights for LPIPS are already in the torch hub cache."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    prefix = {"alex": "alexnet-", "vgg": "vgg16-", "squeeze": "squeezenet1_1-"}[net]
    return checkpoints.is_dir() and any(p.name.startswith(prefix) for p in checkpoints.iterdir())


def lpips(pred: torch.Tensor, target: torch.Tensor, net: str = "alex") -> float | None:
    """LPIPS of (H, W, C) images in [0, 1], or ``None`` (with one warning) when its weights are not
    available locally: this package never downloads at run time."""
    global _LPIPS_WARNED
    if not lpips_weights_available(net):
        if not _LPIPS_WARNED:
            warnings.warn(
                f"LPIPS skipped: no '{net}' backbone weights in {Path(torch.hub.get_dir()) / 'checkpoints'} "
                "(download them once, e.g. torchvision.models.alexnet(weights='DEFAULT'), to enable it)",
                stacklevel=2,
            )
            _LPIPS_WARNED = True
        return None
    from torchmetrics.functional.image import learned_perceptual_image_patch_similarity

    p = pred.clamp(0, 1).permute(2, 0, 1).unsqueeze(0)
    t = target.permute(2, 0, 1).unsqueeze(0)
    return float(learned_perceptual_image_patch_similarity(p, t, net_type=net, normalize=True))


def mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared error (audio: on the signal normalised to max |x| = 1, as in the paper)."""
    return float((pred - target).square().mean())


# ---------------------------------------------------------------------------------- SDF metrics


def occupancy_iou(pred_sdf: np.ndarray, gt_sdf: np.ndarray) -> float:
    """IoU of the inside regions (sdf < 0) of two SDFs sampled on the same grid."""
    p, g = pred_sdf < 0, gt_sdf < 0
    union = np.logical_or(p, g).sum()
    return float(np.logical_and(p, g).sum() / union) if union else float("nan")


def trimap_iou(pred_sdf: np.ndarray, gt_sdf: np.ndarray, d: float) -> float:
    """IoU restricted to the band |sdf_gt| < d around the true surface (``nan`` if no voxel is in it)."""
    band = np.abs(gt_sdf) < d
    if not band.any():
        return float("nan")
    return occupancy_iou(pred_sdf[band], gt_sdf[band])


def extract_mesh(sdf_grid: np.ndarray, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of the zero level of an SDF on the cube [−bound, bound]³ → (vertices, faces).

    Raises ``ValueError`` when the field has no zero crossing (no surface to extract).
    """
    from skimage.measure import marching_cubes

    if not (sdf_grid.min() < 0 < sdf_grid.max()):
        raise ValueError("the SDF has no zero crossing on the grid: no surface to extract")
    res = sdf_grid.shape[0]
    spacing = 2 * bound / (res - 1)
    verts, faces, _, _ = marching_cubes(sdf_grid.astype(np.float32), level=0.0, spacing=(spacing,) * 3)
    return verts - bound, faces


def _nn_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    return cKDTree(b).query(a, workers=-1)[0]


def chamfer_squared(a: np.ndarray, b: np.ndarray) -> float:
    """Squared Chamfer distance mean(d(a→b)²) + mean(d(b→a)²) between point sets (N, 3), (M, 3)."""
    return float(np.mean(_nn_distances(a, b) ** 2) + np.mean(_nn_distances(b, a) ** 2))


def hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Hausdorff distance max(max d(a→b), max d(b→a))."""
    return float(max(_nn_distances(a, b).max(), _nn_distances(b, a).max()))


def sample_surface(verts: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points uniformly on a triangle mesh (area-weighted)."""
    import trimesh

    mesh = trimesh.Trimesh(verts, faces, process=False)
    points, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(points)


def sdf_metrics(
    pred_sdf: np.ndarray,
    gt_sdf: np.ndarray,
    gt_points: np.ndarray,
    bound: float,
    n_points: int = 300_000,
    trimap_d: tuple[float, ...] = (0.1, 0.01, 0.005, 0.001),
) -> dict[str, float]:
    """IoU, Trimap IoU at each d, squared Chamfer and Hausdorff of a predicted SDF grid.

    ``pred_sdf``/``gt_sdf``: (R, R, R) on [−bound, bound]³; ``gt_points``: points on the true surface.
    The predicted surface comes from marching cubes; Chamfer/Hausdorff compare ``n_points`` samples
    of it with ``gt_points`` (in the normalised coordinates of the data).
    """
    out = {"iou": occupancy_iou(pred_sdf, gt_sdf)}
    for d in trimap_d:
        out[f"trimap_iou_{d:g}"] = trimap_iou(pred_sdf, gt_sdf, d)
    try:
        verts, faces = extract_mesh(pred_sdf, bound)
    except ValueError:
        out["chamfer_sq"] = out["hausdorff"] = float("inf")
        return out
    pred_points = sample_surface(verts, faces, n_points)
    out["chamfer_sq"] = chamfer_squared(pred_points, gt_points)
    out["hausdorff"] = hausdorff(pred_points, gt_points)
    return out
