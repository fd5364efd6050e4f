"""Point-wise activations of coordinate networks: sine (SIREN), FINER, Softplus(β), ReLU."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

ActivationName = Literal["sine", "finer", "softplus", "relu"]


class Sine(nn.Module):
    """SIREN's ``sin(ω₀·z)``; ω₀ scales the pre-activation so the init can stay near unit variance."""

    def __init__(self, omega: float = 30.0) -> None:
        super().__init__()
        self.omega = omega

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega * z)

    def extra_repr(self) -> str:
        return f"omega={self.omega}"


class Finer(nn.Module):
    """FINER's variable-periodic sine ``sin(ω₀·(|z|+1)·z)``.

    The scale ``|z|+1`` is treated as a constant in the backward pass (as in the official Neural
    Experts code), so the gradient is that of a sine whose frequency depends on the input.
    """

    def __init__(self, omega: float = 30.0) -> None:
        super().__init__()
        self.omega = omega

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            scale = z.abs() + 1.0
        return torch.sin(self.omega * scale * z)

    def extra_repr(self) -> str:
        return f"omega={self.omega}"


def make_activation(name: ActivationName, omega: float = 30.0, beta: float = 100.0) -> nn.Module:
    """The activation called ``name``; ``omega`` is used by sine/FINER, ``beta`` by Softplus."""
    if name == "sine":
        return Sine(omega)
    if name == "finer":
        return Finer(omega)
    if name == "softplus":
        return nn.Softplus(beta=beta)
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"activation must be one of sine|finer|softplus|relu, got {name!r}")
