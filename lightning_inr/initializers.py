"""Weight initialisations of coordinate networks (applied in place, weights laid out ``(..., in, out)``).

``siren`` follows the official Neural Experts code: a network's first layer is ``U(±1/fan_in)``
when it reads raw 2-D/3-D coordinates, every other layer ``U(±√(6/fan_in)/ω₀)``; biases are zero.
With 1-D input (audio) the first-layer rule does not apply there either (SIREN's own audio recipe
applies U(±1/fan_in) to the first layer whatever its fan_in, :func:`siren_first_layer_`, which the
``INR`` baselines take with ``first_layer_init="siren"``). ``kaiming``: normal with std √(2/fan_in),
zero bias (the Softplus/ReLU networks).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

InitName = Literal["siren", "kaiming"]
FirstLayerInit = Literal["neural_experts", "siren"]


@torch.no_grad()
def init_layer_(weight: torch.Tensor, bias: torch.Tensor, scheme: InitName, first: bool, omega: float = 30.0) -> None:
    """Initialise one layer (``weight`` shaped ``(..., fan_in, fan_out)``) in place."""
    fan_in = weight.shape[-2]
    if scheme == "siren":
        if first and fan_in in (2, 3):
            bound = 1.0 / fan_in
        else:
            bound = math.sqrt(6.0 / fan_in) / omega
        weight.uniform_(-bound, bound)
    elif scheme == "kaiming":
        weight.normal_(0.0, math.sqrt(2.0 / fan_in))
    else:
        raise ValueError(f"init must be siren|kaiming, got {scheme!r}")
    bias.zero_()


@torch.no_grad()
def siren_first_layer_(weight: torch.Tensor) -> None:
    """SIREN's own first-layer rule, ``U(±1/fan_in)`` for any fan_in (1-D audio too), in place."""
    fan_in = weight.shape[-2]
    weight.uniform_(-1.0 / fan_in, 1.0 / fan_in)


def check_first_layer_init(rule: str, *inits: str) -> None:
    """``first_layer_init`` is a rule of ``init="siren"``: refuse it elsewhere, and unknown rules."""
    if rule not in get_args(FirstLayerInit):
        raise ValueError(f"first_layer_init must be {'|'.join(get_args(FirstLayerInit))}, got {rule!r}")
    other = [i for i in inits if i != "siren"]
    if rule == "siren" and other:
        raise ValueError(f"first_layer_init='siren' is a rule of init='siren', not of init={other[0]!r}")
