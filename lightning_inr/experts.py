"""Neural Experts: a mixture-of-experts INR with a conditioned manager (Ben-Shabat et al., NeurIPS 2024).

Blocks (official image config in brackets):

* expert encoder, shared by all experts [2→128, 128→128 ×3, sine];
* K experts, stacked and evaluated as one batched matrix product per layer [per expert 128→128 ×3, 128→out];
* manager encoder, separate from the expert encoder [as the expert encoder];
* manager [(128+128)→128, 128→128 ×2, 128→K] reading the manager-encoder features, conditioned on
  the expert-encoder features (``cat``; ``max``/``mean`` broadcast a global pool; ``none``).

The output is hard top-1: each point takes the output of its argmax-q expert, in training and in
evaluation; the softmax q enters only the loss (:func:`lightning_inr.losses.q_weighted_mse`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lightning_inr.activations import ActivationName
from lightning_inr.encodings import CoordinateEncoder
from lightning_inr.field import FieldOutput, ParameterGroup
from lightning_inr.initializers import FirstLayerInit, InitName, check_first_layer_init, siren_first_layer_
from lightning_inr.mlp import MLP

Conditioning = Literal["none", "max", "mean", "cat"]


def condition(manager_feats: torch.Tensor, expert_feats: torch.Tensor, mode: Conditioning) -> torch.Tensor:
    """The manager's input: its own features, with the experts' encoding appended per ``mode``.

    ``max``/``mean`` pool over the points of this call, so their output depends on how points are
    batched (chunked rendering sees per-chunk pools); ``cat`` and ``none`` are point-wise.
    """
    if mode == "none":
        return manager_feats
    if mode == "cat":
        extra = expert_feats
    elif mode == "max":
        extra = expert_feats.max(dim=0, keepdim=True).values.expand_as(expert_feats)
    elif mode == "mean":
        extra = expert_feats.mean(dim=0, keepdim=True).expand_as(expert_feats)
    else:
        raise ValueError(f"conditioning must be none|max|mean|cat, got {mode!r}")
    return torch.cat([manager_feats, extra], dim=-1)


class NeuralExperts(nn.Module):
    """Mixture-of-experts INR, a :class:`~lightning_inr.field.CoordinateNetwork` with a manager.
    Defaults reproduce the official image config (365,968 parameters).

    Args:
        in_dim, out_dim: coordinate and signal dimensions.
        n_experts: K.
        encoder_width, encoder_layers: the shared expert encoder.
        expert_width, expert_layers: each expert's activated layers (then linear to ``out_dim``).
        manager_encoder_width, manager_encoder_layers: the manager's own encoder.
        manager_width, manager_layers: the manager's activated layers (then linear to K).
        conditioning: what of the expert encoding the manager sees (``cat`` = the paper's).
        activation, init: experts' side (encoder + experts).
        manager_activation, manager_init: manager's side (sine in every official config).
        omega, beta: ω₀ of sine/FINER, β of Softplus. first_omega: ω₀ of the encoders' first layer.
        fourier_features, ff_sigma: Fourier features in front of the expert encoder (0 = off).
        first_layer_init: the first layer of both encoders, with ``init = manager_init = "siren"``:
            ``neural_experts`` (the official code: U(±1/fan_in) only for 2-D/3-D input) or ``siren``
            (SIREN's own: U(±1/fan_in) for any input, U(±1) for 1-D audio), as in the ``INR`` baselines.
    """

    def __init__(
        self,
        in_dim: int = 2,
        out_dim: int = 3,
        n_experts: int = 4,
        encoder_width: int = 128,
        encoder_layers: int = 4,
        expert_width: int = 128,
        expert_layers: int = 3,
        manager_encoder_width: int = 128,
        manager_encoder_layers: int = 4,
        manager_width: int = 128,
        manager_layers: int = 3,
        conditioning: Conditioning = "cat",
        activation: ActivationName = "sine",
        init: InitName = "siren",
        manager_activation: ActivationName = "sine",
        manager_init: InitName = "siren",
        omega: float = 30.0,
        beta: float = 100.0,
        first_omega: float | None = None,
        fourier_features: int = 0,
        ff_sigma: float = 1.0,
        first_layer_init: FirstLayerInit = "neural_experts",
    ) -> None:
        super().__init__()
        check_first_layer_init(first_layer_init, init, manager_init)
        if n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {n_experts}")
        if conditioning not in ("none", "max", "mean", "cat"):
            raise ValueError(f"conditioning must be none|max|mean|cat, got {conditioning!r}")
        self.in_dim, self.out_dim, self.n_experts = in_dim, out_dim, n_experts
        self.conditioning = conditioning
        self.expert_encoder = CoordinateEncoder(
            in_dim, encoder_width, encoder_layers, activation, omega, beta, init, first_omega,
            fourier_features, ff_sigma,
        )
        self.experts = MLP(
            encoder_width, expert_width, expert_layers, out_dim, activation, omega, beta, init,
            n_copies=n_experts,
        )
        self.manager_encoder = CoordinateEncoder(
            in_dim, manager_encoder_width, manager_encoder_layers, manager_activation, omega, beta,
            manager_init, first_omega,
        )
        manager_in = manager_encoder_width + (encoder_width if conditioning != "none" else 0)
        self.manager = MLP(
            manager_in, manager_width, manager_layers, n_experts, manager_activation, omega, beta,
            manager_init,
        )
        if first_layer_init == "siren":  # after every other layer, so that they draw what they always drew
            siren_first_layer_(self.expert_encoder.mlp.weights[0])
            siren_first_layer_(self.manager_encoder.mlp.weights[0])

    def route(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert-encoder features ``(N, E)`` and manager logits ``(N, K)``."""
        expert_feats = self.expert_encoder(coords)
        manager_in = condition(self.manager_encoder(coords), expert_feats, self.conditioning)
        return expert_feats, self.manager(manager_in)

    def manager_logits(self, coords: torch.Tensor) -> torch.Tensor:
        """Only the routing (what manager pretraining trains): experts are not evaluated."""
        return self.route(coords)[1]

    def forward(self, coords: torch.Tensor) -> FieldOutput:
        expert_feats, logits = self.route(coords)
        expert_preds = self.experts(expert_feats)  # (K, N, out), all experts in one batched op
        selected = logits.argmax(dim=-1)
        index = selected.view(1, -1, 1).expand(1, -1, expert_preds.shape[-1])
        pred = expert_preds.gather(0, index).squeeze(0)
        return FieldOutput(pred, expert_preds, logits, logits.softmax(dim=-1), selected)

    def parameter_groups(self) -> dict[ParameterGroup, list[nn.Parameter]]:
        """Parameters by role, for training stages."""
        return {
            "expert_encoder": list(self.expert_encoder.parameters()),
            "experts": list(self.experts.parameters()),
            "manager_encoder": list(self.manager_encoder.parameters()),
            "manager": list(self.manager.parameters()),
        }

    def manager_modules(self) -> dict[str, nn.Module]:
        """What a pretrained manager is: the manager, its encoder and the expert encoder it is conditioned on."""
        return {"expert_encoder": self.expert_encoder, "manager_encoder": self.manager_encoder, "manager": self.manager}
