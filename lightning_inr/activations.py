"""Point-wise activations of coordinate networks: sine (SIREN), FINER, Softplus(β), ReLU.

Each is an ``nn.Module`` (their class names and ω₀/β are what a saved manager file is checked against);
:func:`activate_fresh` is the same function for the networks' own pre-activations, computed with fewer
temporaries (in place where autograd allows it), bit for bit the module's output.
"""

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


def activate_fresh(act: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``act(z)`` for a pre-activation ``z`` that nothing else holds and whose producer does not save it for
    backward (a matrix product's fresh output): ``z`` may be overwritten.

    Same operations in the same order as ``act.forward`` (so the same bits), with fewer temporaries:
    sine scales ``z`` in place and, when ``z`` needs no gradient (rendering, frozen parts), takes the
    sine in place too (``sin`` keeps its input for the backward pass otherwise); FINER builds its
    frequency in place; ReLU is in place (its backward reads the output). Other modules run as they are.
    """
    if type(act) is Sine:
        z = z.mul_(act.omega)
        return torch.sin(z) if z.requires_grad else z.sin_()
    if type(act) is Finer:
        with torch.no_grad():
            freq = z.abs().add_(1.0).mul_(act.omega)  # ω₀·(|z|+1), a constant of the backward pass
        return torch.sin(freq * z) if z.requires_grad else freq.mul_(z).sin_()
    if type(act) is nn.ReLU and not act.inplace:
        return torch.relu_(z)
    return act(z)
