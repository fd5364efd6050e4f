"""Input encodings applied to coordinates before the first layer."""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_inr.activations import ActivationName
from lightning_inr.initializers import InitName
from lightning_inr.mlp import MLP


class FourierFeatures(nn.Module):
    """Random Fourier features ``[x, sin(2πxBᵀ)/√m, cos(2πxBᵀ)/√m]`` with ``B ~ N(0, σ²)`` of shape (m, d).

    As in the official code only the sin/cos part is scaled (m = number of frequencies) and the raw
    coordinates are kept in front. ``B`` is a buffer: fixed, saved with the model.
    """

    def __init__(self, in_dim: int, n_frequencies: int, sigma: float = 1.0) -> None:
        super().__init__()
        if n_frequencies < 1:
            raise ValueError(f"n_frequencies must be >= 1, got {n_frequencies}")
        self.register_buffer("B", torch.randn(n_frequencies, in_dim) * sigma)
        self.out_dim = in_dim + 2 * n_frequencies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * x @ self.B.T
        feats = torch.cat([proj.sin(), proj.cos()], dim=-1) / math.sqrt(self.B.shape[0])
        return torch.cat([x, feats], dim=-1)


class CoordinateEncoder(nn.Module):
    """Optional Fourier features, then an MLP whose every layer is activated (no linear head).

    This is the "expert encoder" / "manager encoder" of Neural Experts and the first half of the
    plain INR baselines; ``out_dim`` is its width.
    """

    def __init__(
        self,
        in_dim: int,
        width: int,
        n_layers: int,
        activation: ActivationName = "sine",
        omega: float = 30.0,
        beta: float = 100.0,
        init: InitName = "siren",
        first_omega: float | None = None,
        fourier_features: int = 0,
        ff_sigma: float = 1.0,
    ) -> None:
        super().__init__()
        self.fourier = FourierFeatures(in_dim, fourier_features, ff_sigma) if fourier_features > 0 else None
        mlp_in = self.fourier.out_dim if self.fourier is not None else in_dim
        self.mlp = MLP(mlp_in, width, n_layers, None, activation, omega, beta, init, first_omega)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fourier is not None:
            x = self.fourier(x)
        return self.mlp(x)
