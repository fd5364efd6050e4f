"""Metrics: SDF metrics on analytic spheres, PSNR convention, SSIM, LPIPS fallback."""

import math

import numpy as np
import pytest
import torch

from lightning_inr import metrics

BOUND, RES, R = 1.0, 64, 0.5


def sphere_grid(radius: float) -> np.ndarray:
    lin = np.linspace(-BOUND, BOUND, RES)
    x = np.stack(np.meshgrid(lin, lin, lin, indexing="ij"), -1)
    return np.linalg.norm(x, axis=-1) - radius


def sphere_points(radius: float, n: int = 50_000) -> np.ndarray:
    g = np.random.default_rng(0).normal(size=(n, 3))
    return radius * g / np.linalg.norm(g, axis=1, keepdims=True)


def test_sdf_metrics_of_the_exact_sphere():
    gt = sphere_grid(R)
    out = metrics.sdf_metrics(gt, gt, sphere_points(R), BOUND, n_points=50_000)
    assert out["iou"] == pytest.approx(1.0)
    assert out["trimap_iou_0.1"] == pytest.approx(1.0)
    assert out["chamfer_sq"] < 1e-4  # only marching-cubes discretisation at 64³
    assert out["hausdorff"] < 2 * (2 * BOUND / (RES - 1))


def test_sdf_metrics_of_an_offset_sphere():
    delta = 0.05
    out = metrics.sdf_metrics(sphere_grid(R + delta), sphere_grid(R), sphere_points(R), BOUND, n_points=50_000)
    assert out["iou"] == pytest.approx((R / (R + delta)) ** 3, rel=0.02)  # volume ratio of nested balls
    assert out["chamfer_sq"] == pytest.approx(2 * delta**2, rel=0.1)  # every point is δ away, both ways
    assert out["hausdorff"] == pytest.approx(delta, abs=0.01)
    assert out["trimap_iou_0.01"] < out["trimap_iou_0.1"] < out["iou"]  # errors concentrate at the surface


def test_trimap_iou_is_nan_without_band_voxels():
    gt = sphere_grid(R)
    assert math.isnan(metrics.trimap_iou(gt, gt, 1e-9))


def test_extract_mesh_without_surface_raises():
    with pytest.raises(ValueError, match="zero crossing"):
        metrics.extract_mesh(np.ones((8, 8, 8)), 1.0)


def test_psnr_convention_and_official_offset():
    target = torch.rand(16, 16, 3)
    pred = (target + 0.01 * torch.randn_like(target)).clamp(0, 1)
    mse = (pred - target).square().mean().item()
    assert metrics.psnr(pred, target) == pytest.approx(10 * math.log10(1 / mse))
    # the official PSNR ([-1, 1] data, peak max(gt)) reads 6.02 dB less when the image reaches white
    target[0, 0] = 1.0
    official = metrics.official_psnr(pred, target)
    assert metrics.psnr(pred, target) - official == pytest.approx(metrics.OFFICIAL_PSNR_OFFSET_DB, abs=1e-6)
    assert metrics.OFFICIAL_PSNR_OFFSET_DB == pytest.approx(6.0206, abs=1e-4)


def test_ssim_of_identical_and_noisy_images():
    img = torch.rand(32, 32, 3)
    assert metrics.ssim(img, img) == pytest.approx(1.0)
    assert metrics.ssim((img + 0.2 * torch.randn_like(img)).clamp(0, 1), img) < 0.9


def test_lpips_without_local_weights_is_none_with_a_message(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(metrics, "_LPIPS_WARNED", False)
    img = torch.rand(32, 32, 3)
    with pytest.warns(UserWarning, match="LPIPS skipped"):
        assert metrics.lpips(img, img) is None
