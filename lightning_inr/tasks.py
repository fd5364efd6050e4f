"""Signal-fitting tasks: image, audio, SDF. Each names its loss, its metrics and its output files.

A task reads the data it needs from the DataModule (``coords``/``image``, ``coords``/``signal``/
``rate``, or the SDF grids and surface samples) and never touches optimisation: the LightningModule
(:class:`lightning_inr.signal_fit.SignalFit`) orchestrates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lightning_inr import metrics
from lightning_inr.artifacts import (
    expert_colours,
    save_ply,
    save_png,
    save_wav,
    save_waveform_by_expert,
)
from lightning_inr.field import CoordinateNetwork
from lightning_inr.inference import render
from lightning_inr.losses import q_weighted_mse, q_weighted_sdf_loss, q_weighted_surface_loss, siren_sdf_terms

SDFLoss = Literal["neural_experts", "siren"]


def expert_usage(selected: torch.Tensor, n_experts: int) -> dict[str, float]:
    """Fraction of points routed to each expert."""
    counts = torch.bincount(selected.flatten().cpu(), minlength=n_experts).double()
    return {f"expert_{k}_share": float(c) for k, c in enumerate(counts / counts.sum())}


class Task:
    """Interface of a task (see the concrete classes). The network is any
    :class:`~lightning_inr.field.CoordinateNetwork`: a task calls it, reads its ``n_experts`` and the
    device of its ``parameters()``."""

    chunk_size: int = 65536

    @property
    def double_backward(self) -> bool:
        """Whether the loss differentiates a gradient of the network (which ``torch.compile`` cannot)."""
        return False

    def training_loss(self, network: CoordinateNetwork, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def evaluate(self, network: CoordinateNetwork, data, final: bool = False) -> dict[str, float]:
        raise NotImplementedError

    def write_outputs(self, network: CoordinateNetwork, data, directory: Path) -> dict[str, Path]:
        raise NotImplementedError


class ImageTask(Task):
    """Fit an image; values in [−1, 1], metrics on [0, 1] (PSNR, SSIM, LPIPS if available locally).

    Args:
        recon_weight: weight of the q-weighted MSE (1000 in the official code).
        lpips: compute LPIPS in the final evaluation (skipped with a message without local weights).
        chunk_size: points per rendering chunk.
    """

    def __init__(self, recon_weight: float = 1000.0, lpips: bool = True, chunk_size: int = 65536) -> None:
        self.recon_weight, self.lpips, self.chunk_size = recon_weight, lpips, chunk_size

    def training_loss(self, network, batch):
        out = network(batch["coords"])
        loss = self.recon_weight * q_weighted_mse(out.expert_preds, batch["values"], out.q)
        with torch.no_grad():
            train_psnr = metrics.psnr((out.pred + 1) / 2, (batch["values"] + 1) / 2)
        return loss, {"psnr": train_psnr}

    def reconstruct(self, network, data) -> tuple[torch.Tensor, torch.Tensor]:
        """The image in [0, 1] (H, W, C) and the expert index of every pixel (H, W)."""
        device = next(network.parameters()).device
        out = render(network, data.coords.to(device), self.chunk_size)
        h, w, c = data.image.shape
        image = ((out.pred.reshape(h, w, c) + 1) / 2).cpu()
        return image, out.selected.reshape(h, w).cpu()

    def evaluate(self, network, data, final=False):
        image, selected = self.reconstruct(network, data)
        target = (data.image + 1) / 2
        result = {"psnr": metrics.psnr(image, target), "ssim": metrics.ssim(image, target)}
        if final and self.lpips and image.shape[-1] == 3:
            value = metrics.lpips(image, target)
            if value is not None:
                result["lpips"] = value
        result.update(expert_usage(selected, network.n_experts))
        return result

    def write_outputs(self, network, data, directory):
        image, selected = self.reconstruct(network, data)
        return {
            "reconstruction": save_png(image.numpy(), directory / "reconstruction.png"),
            "expert_map": save_png(expert_colours(selected.numpy()), directory / "expert_map.png"),
        }


class AudioTask(Task):
    """Fit a waveform normalised to max |x| = 1; metric: MSE of that signal (the paper's table
    scales its MSE by 1e4 for compactness: see docs/neural-experts.md).

    Args:
        recon_weight: weight of the q-weighted MSE (1000 in the official code).
        chunk_size: points per rendering chunk.
    """

    def __init__(self, recon_weight: float = 1000.0, chunk_size: int = 65536) -> None:
        self.recon_weight, self.chunk_size = recon_weight, chunk_size

    def training_loss(self, network, batch):
        out = network(batch["coords"])
        loss = self.recon_weight * q_weighted_mse(out.expert_preds, batch["values"], out.q)
        return loss, {"mse": metrics.mse(out.pred.detach(), batch["values"])}

    def reconstruct(self, network, data) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(network.parameters()).device
        out = render(network, data.coords.to(device), self.chunk_size)
        return out.pred[:, 0].cpu(), out.selected.cpu()

    def evaluate(self, network, data, final=False):
        signal, selected = self.reconstruct(network, data)
        result = {"mse": metrics.mse(signal, data.signal[:, 0])}
        result.update(expert_usage(selected, network.n_experts))
        return result

    def write_outputs(self, network, data, directory):
        signal, selected = self.reconstruct(network, data)
        return {
            "reconstruction": save_wav(signal.clamp(-1, 1).numpy(), data.rate, directory / "reconstruction.wav"),
            "expert_map": save_waveform_by_expert(
                signal.numpy(), selected.numpy(), data.rate, directory / "expert_map.png"
            ),
        }


class SDFTask(Task):
    """Fit a signed distance field from surface and off-surface samples.

    Losses (``loss``):

    * ``neural_experts`` (the official Neural Experts loss): ``surface_weight``·mean(q·|f_k(surface)|) +
      ``sdf_weight``·mean(q·|clamp(f_k) − clamp(sdf)|), on the off-surface points' SDF targets.
    * ``siren`` (SIREN's SDF loss, for the single-network baseline; it reads the surface normals of the
      batch and ignores the SDF targets): ``siren_sdf_weight``·|f| on the surface +
      ``siren_inter_weight``·exp(−``siren_inter_alpha``·|f|) off it + ``siren_normal_weight``·(1 − cos(∇f, n))
      on the surface + ``siren_eikonal_weight``·| ‖∇f‖ − 1 | everywhere, each a mean over the whole batch
      (:func:`~lightning_inr.losses.siren_sdf_terms`); SIREN's weights 3e3, 1e2, 1e2, 5e1 and α = 100.
      Its off-surface points are meant to be uniform in the cube (``SDFSamples(n_uniform=...)``): near-surface
      points would fight the zero level set through the exp term. ∇f needs a double backward, which
      ``SignalFit(compile=True)`` does not support.

    Evaluation: the SDF on a ``eval_resolution``³ grid, marching cubes, IoU, Trimap IoU, squared
    Chamfer and Hausdorff against ``eval_points`` samples of the true surface.
    """

    def __init__(
        self,
        surface_weight: float = 1000.0,
        sdf_weight: float = 1000.0,
        clamp: float = 3.0,
        eval_resolution: int = 128,
        eval_points: int = 300_000,
        trimap_d: tuple[float, ...] = (0.1, 0.01, 0.005, 0.001),
        chunk_size: int = 65536,
        loss: SDFLoss = "neural_experts",
        siren_sdf_weight: float = 3e3,
        siren_inter_weight: float = 1e2,
        siren_normal_weight: float = 1e2,
        siren_eikonal_weight: float = 5e1,
        siren_inter_alpha: float = 100.0,
    ) -> None:
        if eval_resolution < 8:
            raise ValueError(f"eval_resolution must be >= 8, got {eval_resolution}")
        if loss not in ("neural_experts", "siren"):
            raise ValueError(f"loss must be neural_experts|siren, got {loss!r}")
        self.loss = loss
        self.siren_weights = {"sdf": siren_sdf_weight, "inter": siren_inter_weight, "normal": siren_normal_weight,
                              "eikonal": siren_eikonal_weight}
        self.siren_inter_alpha = siren_inter_alpha
        self.surface_weight, self.sdf_weight, self.clamp = surface_weight, sdf_weight, clamp
        self.eval_resolution, self.eval_points, self.trimap_d = eval_resolution, eval_points, tuple(trimap_d)
        self.chunk_size = chunk_size

    @property
    def double_backward(self) -> bool:
        return self.loss == "siren"  # |∇f| and ∇f·n are trained

    def training_loss(self, network, batch):
        if self.loss == "siren":
            return self.siren_loss(network, batch)
        surface, points, sdf = batch["surface"], batch["points"], batch["sdf"]
        out = network(torch.cat([surface, points]))  # one pass over both sets
        n = surface.shape[0]
        zls = q_weighted_surface_loss(out.expert_preds[:, :n], out.q[:n])
        fit = q_weighted_sdf_loss(out.expert_preds[:, n:], sdf, out.q[n:], self.clamp)
        loss = self.surface_weight * zls + self.sdf_weight * fit
        return loss, {"surface_term": float(zls), "sdf_term": float(fit)}

    def siren_loss(self, network, batch) -> tuple[torch.Tensor, dict[str, float]]:
        """SIREN's SDF loss on the field of a single network (see the class docstring)."""
        if network.n_experts != 1:
            raise ValueError(
                f"SDFTask(loss='siren') is SIREN's loss for one network; {type(network).__name__} has "
                f"{network.n_experts} experts (its manager would get no gradient): use loss='neural_experts'"
            )
        if "normals" not in batch:
            raise ValueError("SDFTask(loss='siren') needs the surface normals in the batch ('normals', as "
                             "datamodules.SDFSamples provides)")
        surface, normals, points = batch["surface"], batch["normals"], batch["points"]
        coords = torch.cat([surface, points]).detach().requires_grad_(True)
        field = network(coords).pred  # (N, 1)
        (grad,) = torch.autograd.grad(field, coords, torch.ones_like(field), create_graph=True)
        n = surface.shape[0]
        terms = siren_sdf_terms(field[:n], grad[:n], normals, field[n:], grad[n:], self.siren_inter_alpha)
        loss = sum(self.siren_weights[k] * v for k, v in terms.items())
        return loss, {f"{k}_term": float(v.detach()) for k, v in terms.items()}

    def predict_grid(self, network, data) -> tuple[np.ndarray, np.ndarray]:
        """Predicted SDF and expert index on the evaluation grid, (R, R, R) each."""
        device = next(network.parameters()).device
        res = self.eval_resolution
        out = render(network, data.grid_coords(res).to(device), self.chunk_size)
        return (
            out.pred[:, 0].reshape(res, res, res).cpu().numpy(),
            out.selected.reshape(res, res, res).cpu().numpy(),
        )

    def evaluate(self, network, data, final=False):
        pred, selected = self.predict_grid(network, data)
        result = metrics.sdf_metrics(
            pred, data.gt_sdf_grid(self.eval_resolution), data.gt_surface_points(self.eval_points),
            data.bound, self.eval_points, self.trimap_d,
        )
        result.update(expert_usage(torch.from_numpy(selected), network.n_experts))
        return result

    def write_outputs(self, network, data, directory):
        pred, _ = self.predict_grid(network, data)
        try:
            verts, faces = metrics.extract_mesh(pred, data.bound)
        except ValueError:
            return {}  # nothing to write: the field has no surface yet (e.g. after one debug step)
        device = next(network.parameters()).device
        at_verts = render(network, torch.from_numpy(verts).float().to(device), self.chunk_size)
        return {
            "reconstruction": save_ply(verts, faces, directory / "reconstruction.ply"),
            "expert_map": save_ply(
                verts, faces, directory / "expert_map.ply", expert_colours(at_verts.selected.cpu().numpy())
            ),
        }
