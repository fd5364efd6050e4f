"""Coordinate MLPs: one network, or K copies evaluated together as one batched operation.

A network is ``n_layers`` activated layers (``in → width``, then ``width → width``) followed, when
``out_dim`` is given, by a linear output layer. With ``n_copies = K`` every weight is stacked to
``(K, in, out)`` and the forward is an einsum over all copies at once: no Python loop over experts.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_inr.activations import ActivationName, make_activation
from lightning_inr.initializers import InitName, init_layer_


class MLP(nn.Module):
    """``n_layers`` activated layers of ``width`` (+ a linear ``width → out_dim`` head if given).

    Args:
        in_dim: input features.
        width: hidden width.
        n_layers: activated layers (the first reads ``in_dim``).
        out_dim: width of a final linear layer; ``None`` = no head (an encoder: output is ``width``).
        activation, omega, beta: the activation (ω₀ for sine/FINER, β for Softplus).
        init: ``siren`` (sine/FINER) or ``kaiming`` (Softplus/ReLU).
        first_omega: ω₀ of the first layer only (SIREN's audio recipe uses 3000); default ``omega``.
        first_layer_rule: whether layer 0 counts as the network's first layer for the init rule.
        n_copies: ``None`` for one network, K for K independent networks evaluated together.
    """

    def __init__(
        self,
        in_dim: int,
        width: int,
        n_layers: int,
        out_dim: int | None = None,
        activation: ActivationName = "sine",
        omega: float = 30.0,
        beta: float = 100.0,
        init: InitName = "siren",
        first_omega: float | None = None,
        first_layer_rule: bool = True,
        n_copies: int | None = None,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if n_copies is not None and n_copies < 1:
            raise ValueError(f"n_copies must be >= 1, got {n_copies}")
        self.n_copies = n_copies
        self.out_features = out_dim if out_dim is not None else width
        dims = [in_dim] + [width] * n_layers + ([out_dim] if out_dim is not None else [])
        lead = () if n_copies is None else (n_copies,)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            w, bias = torch.empty(*lead, a, b), torch.empty(*lead, b)
            init_layer_(w, bias, init, first=(i == 0 and first_layer_rule), omega=omega)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(bias))
        self.n_activated = n_layers
        self.act = make_activation(activation, omega, beta)
        # A separate first activation only matters when its ω₀ differs (audio SIREN recipe).
        self.first_act = (
            make_activation(activation, first_omega, beta)
            if first_omega is not None and first_omega != omega
            else self.act
        )

    def _activate(self, i: int, z: torch.Tensor) -> torch.Tensor:
        if i >= self.n_activated:
            return z  # the linear head
        return self.first_act(z) if i == 0 else self.act(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in) → (N, out)``; with K copies ``(N, in)`` or ``(K, N, in)`` → ``(K, N, out)``."""
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if self.n_copies is None:
                z = x @ w + b
            elif x.dim() == 2:  # the same input for every copy
                z = torch.einsum("nd,kdh->knh", x, w) + b.unsqueeze(1)
            else:
                z = torch.baddbmm(b.unsqueeze(1), x, w)
            x = self._activate(i, z)
        return x

    def forward_copy(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Copy ``k`` alone on ``(N, in)`` → ``(N, out)``: what sparse inference evaluates."""
        if self.n_copies is None:
            raise ValueError("forward_copy needs an MLP built with n_copies")
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = self._activate(i, torch.addmm(b[k], x, w[k]))
        return x
