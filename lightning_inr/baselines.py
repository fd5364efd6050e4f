"""The plain INR baselines (SIREN, SIREN wider, FINER, Softplus, Softplus + Fourier features).

Built as in the official configs: an encoder (every layer activated) followed by a head MLP
(activated layers + linear output). The two halves may have different widths: "SIREN wider" is a
128-wide encoder and a 512-wide head.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_inr.activations import ActivationName
from lightning_inr.encodings import CoordinateEncoder
from lightning_inr.field import FieldOutput, ParameterGroup
from lightning_inr.initializers import FirstLayerInit, InitName, check_first_layer_init, siren_first_layer_
from lightning_inr.mlp import MLP


class INR(nn.Module):
    """One coordinate MLP, a :class:`~lightning_inr.field.CoordinateNetwork` without a manager.

    Its output is a mixture's with K = 1 (``expert_preds`` is ``pred`` with a leading axis of 1, ``q``
    ones, ``logits`` ``None``), so one q-weighted loss serves every model; it has no manager to
    pretrain, save or freeze (``manager_modules()`` is empty, ``manager_logits`` ``None``).

    Args:
        in_dim, out_dim: coordinate and signal dimensions.
        encoder_width, encoder_layers: the activated encoder.
        width, n_layers: the head's activated layers (then a linear layer to ``out_dim``).
        activation, omega, beta, init: see :func:`lightning_inr.activations.make_activation`.
        first_omega: ω₀ of the very first layer (``None`` = ``omega``).
        fourier_features, ff_sigma: random Fourier features before the encoder (0 = off).
        first_layer_init: with ``init="siren"``, the first layer's rule: ``neural_experts`` (the official
            code: U(±1/fan_in) only for 2-D/3-D input, else as the other layers) or ``siren`` (SIREN's own:
            U(±1/fan_in) for any input; for 1-D audio U(±1), SIREN's audio recipe).
    """

    def __init__(
        self,
        in_dim: int = 2,
        out_dim: int = 3,
        encoder_width: int = 128,
        encoder_layers: int = 4,
        width: int = 128,
        n_layers: int = 3,
        activation: ActivationName = "sine",
        omega: float = 30.0,
        beta: float = 100.0,
        init: InitName = "siren",
        first_omega: float | None = None,
        fourier_features: int = 0,
        ff_sigma: float = 1.0,
        first_layer_init: FirstLayerInit = "neural_experts",
    ) -> None:
        super().__init__()
        check_first_layer_init(first_layer_init, init)
        self.in_dim, self.out_dim, self.n_experts = in_dim, out_dim, 1
        self.encoder = CoordinateEncoder(
            in_dim, encoder_width, encoder_layers, activation, omega, beta, init, first_omega,
            fourier_features, ff_sigma,
        )
        self.head = MLP(encoder_width, width, n_layers, out_dim, activation, omega, beta, init)
        if first_layer_init == "siren":  # after every other layer, so that they draw what they always drew
            siren_first_layer_(self.encoder.mlp.weights[0])

    def forward(self, coords: torch.Tensor) -> FieldOutput:
        pred = self.head(self.encoder(coords))
        n = pred.shape[0]
        return FieldOutput(
            pred=pred,
            expert_preds=pred.unsqueeze(0),
            logits=None,
            q=pred.new_ones(n, 1),
            selected=torch.zeros(n, dtype=torch.long, device=pred.device),
        )

    def parameter_groups(self) -> dict[ParameterGroup, list[nn.Parameter]]:
        """Parameters by role, for training stages: the encoder, then the head as the one expert."""
        return {
            "expert_encoder": list(self.encoder.parameters()),
            "experts": list(self.head.parameters()),
            "manager_encoder": [],
            "manager": [],
        }

    def manager_modules(self) -> dict[str, nn.Module]:
        """None: a plain INR has no manager."""
        return {}

    def manager_logits(self, coords: torch.Tensor) -> None:
        """None: a plain INR has no manager (its ``FieldOutput.logits`` are ``None`` too)."""
        return None
