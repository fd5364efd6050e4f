"""Training stages as data: which objective, which parameters, until which fraction of the steps.

The official recipe is three stages: the manager learns a fixed label map, then every parameter
fits the signal, then only the experts do (manager, manager encoder and expert encoder frozen),
so the partition of the domain stops moving while the experts refine. At every switch the
optimizer's state (Adam moments, step counts) is cleared; the learning rate carries over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from lightning_inr.field import PARAMETER_GROUPS, CoordinateNetwork, ParameterGroup

Trainable = Literal["all", "experts", "manager"]
Objective = Literal["manager", "reconstruction"]

# Which parameter groups (see ``CoordinateNetwork.parameter_groups``) each choice trains.
TRAINABLE_GROUPS: dict[str, tuple[ParameterGroup, ...]] = {
    "all": PARAMETER_GROUPS,
    "experts": ("experts",),
    "manager": ("manager_encoder", "manager"),
}


@dataclass
class Stage:
    """One training stage.

    Attributes:
        name: shown in logs.
        until: the stage ends at this fraction of the run's total steps (stages run in order).
        train: ``all``, ``experts`` (only the experts' own layers) or ``manager`` (manager + its encoder).
        objective: ``manager`` = pretrain the manager on the label map, ``reconstruction`` = fit the signal.
    """

    name: str
    until: float
    train: Trainable = "all"
    objective: Objective = "reconstruction"


def default_stages() -> list[Stage]:
    """The paper's recipe: manager pretraining 10 %, all parameters to 80 %, experts only to 100 %."""
    return [
        Stage("manager_pretraining", 0.1, "all", "manager"),
        Stage("all", 0.8, "all", "reconstruction"),
        Stage("experts", 1.0, "experts", "reconstruction"),
    ]


def validate_stages(stages: list[Stage]) -> None:
    """Raise a clear error for an impossible stage list."""
    if not stages:
        raise ValueError("stages: at least one stage is needed")
    previous = 0.0
    for s in stages:
        if s.train not in TRAINABLE_GROUPS:
            raise ValueError(f"stage {s.name!r}: train must be all|experts|manager, got {s.train!r}")
        if s.objective not in ("manager", "reconstruction"):
            raise ValueError(f"stage {s.name!r}: objective must be manager|reconstruction, got {s.objective!r}")
        if not previous < s.until <= 1.0:
            raise ValueError(f"stage {s.name!r}: 'until' must increase and lie in (0, 1], got {s.until}")
        previous = s.until
    if stages[-1].until != 1.0:
        raise ValueError(f"stages: the last stage must end at until=1.0, got {stages[-1].until}")


def stage_index(stages: list[Stage], step: int, total_steps: int) -> int:
    """Index of the stage that owns ``step`` (0-based) of ``total_steps``."""
    for i, s in enumerate(stages):
        if step < s.until * total_steps:
            return i
    return len(stages) - 1


def trainable_parameters(network: CoordinateNetwork, train: Trainable) -> list[torch.nn.Parameter]:
    """The parameters of ``network`` that a stage with ``train`` trains (none, for ``manager`` without one)."""
    groups = network.parameter_groups()
    return [p for g in TRAINABLE_GROUPS[train] for p in groups[g]]


def set_trainable(network: CoordinateNetwork, train: Trainable) -> None:
    """Make exactly the parameters of ``train`` require gradients; freeze the rest."""
    wanted = {id(p) for p in trainable_parameters(network, train)}
    for p in network.parameters():
        p.requires_grad_(id(p) in wanted)


def reset_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Forget the optimizer's per-parameter state (Adam moments and step counts), keep its lr."""
    optimizer.state.clear()
