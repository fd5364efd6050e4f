"""What every coordinate network of the package returns, and what the rest of the package needs of one.

:class:`FieldOutput` is a network's output; :class:`CoordinateNetwork` is the contract that
:class:`lightning_inr.SignalFit`, the tasks (:mod:`lightning_inr.tasks`) and rendering
(:mod:`lightning_inr.inference`) rely on. Both networks of the package satisfy it:
:class:`lightning_inr.NeuralExperts` (K experts and a manager) and :class:`lightning_inr.INR` (one
network, no manager).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import nn

ParameterGroup = Literal["expert_encoder", "experts", "manager_encoder", "manager"]
# Every network's ``parameter_groups()`` has these keys (an empty list for a part it does not have).
PARAMETER_GROUPS: tuple[ParameterGroup, ...] = ("expert_encoder", "experts", "manager_encoder", "manager")


@dataclass
class FieldOutput:
    """A network's output for N points.

    Attributes:
        pred: ``(N, out)``: the prediction (for a mixture: the selected expert's output).
        expert_preds: ``(K, N, out)``: every expert's output (``K = 1`` for a plain INR). ``None``
            after sparse inference, which evaluates only the selected experts.
        logits: ``(N, K)`` manager logits (``None`` for a plain INR).
        q: ``(N, K)`` softmax of the logits (ones for a plain INR).
        selected: ``(N,)`` index of the expert that produced ``pred``.
    """

    pred: torch.Tensor
    expert_preds: torch.Tensor | None
    logits: torch.Tensor | None
    q: torch.Tensor
    selected: torch.Tensor


@runtime_checkable
class CoordinateNetwork(Protocol):
    """What ``SignalFit``, the tasks and ``render`` need of a network (which is also an ``nn.Module``).

    Attributes:
        in_dim: coordinate dimension (2 for images, 1 for audio, 3 for SDFs).
        out_dim: signal dimension.
        n_experts: K, the number of outputs in ``FieldOutput.expert_preds``/``q`` (1 for a single
            network): the size of the label map a manager is pretrained on and of the expert-usage metrics.

    Methods:
        forward: ``(N, in_dim)`` coordinates to a :class:`FieldOutput` (shapes as documented there),
            with gradients: the tasks' losses read ``expert_preds`` and ``q``.
        parameters: every parameter (the optimizer's, the device the tasks render on, the count).
        parameter_groups: the parameters by role, keys :data:`PARAMETER_GROUPS`, for the training
            stages that freeze parts (an empty list for a part the network does not have).
        manager_modules: the modules a pretrained-manager file holds, by the name they are saved
            under; empty when the network has no manager (then no stage may pretrain one).
        manager_logits: ``(N, K)`` routing logits, without evaluating the experts (what manager
            pretraining trains); ``None`` exactly when ``manager_modules()`` is empty.
    """

    in_dim: int
    out_dim: int
    n_experts: int

    def forward(self, coords: torch.Tensor) -> FieldOutput: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def parameter_groups(self) -> dict[ParameterGroup, list[nn.Parameter]]: ...

    def manager_modules(self) -> dict[str, nn.Module]: ...

    # ``-> torch.Tensor | None``, left unannotated: jsonargparse (LightningCLI) wants an implementation's
    # return type to equal the protocol's, and each network states its own (``Tensor`` or ``None``).
    def manager_logits(self, coords: torch.Tensor): ...


# The protocol's members (what ``isinstance(x, CoordinateNetwork)`` checks), read off the class body.
_MEMBERS = tuple(sorted({
    *CoordinateNetwork.__annotations__,
    *(name for name, value in vars(CoordinateNetwork).items() if callable(value) and not name.startswith("_")),
}))


def missing_members(network: object) -> list[str]:
    """What ``network`` lacks of :class:`CoordinateNetwork` (and of being an ``nn.Module``); empty if nothing."""
    missing = [] if isinstance(network, nn.Module) else ["nn.Module"]
    return missing + [name for name in _MEMBERS if not hasattr(network, name)]


def check_network(network: object, owner: str = "network") -> CoordinateNetwork:
    """``network``, if it is an ``nn.Module`` satisfying :class:`CoordinateNetwork`; else a ``TypeError``
    naming what it lacks."""
    missing = missing_members(network)
    if missing:
        raise TypeError(
            f"{owner}: {type(network).__name__} is not a CoordinateNetwork (lightning_inr.field): "
            f"it lacks {', '.join(missing)}"
        )
    return network  # type: ignore[return-value]
