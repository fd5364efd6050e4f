"""Linear probe head: BatchNorm without affine, then a linear classifier (MAE's linear-probe head)."""

from __future__ import annotations

from torch import Tensor, nn


class LinearProbe(nn.Sequential):
    """``BatchNorm1d(affine=False, eps=1e-6)`` + ``Linear`` (weights trunc-normal, std 0.01).

    The non-affine BatchNorm whitens features whose scale drifts during pretraining, so a plain
    linear layer can follow them online (and it is the MAE linear-probing head offline).
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"a linear probe needs num_classes >= 2, got {num_classes}")
        linear = nn.Linear(in_features, num_classes)
        nn.init.trunc_normal_(linear.weight, std=0.01)
        nn.init.zeros_(linear.bias)
        super().__init__(nn.BatchNorm1d(in_features, affine=False, eps=1e-6), linear)

    def forward(self, features: Tensor) -> Tensor:
        return super().forward(features)
