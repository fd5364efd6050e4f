"""Training stages as data: which parameters train, until which fraction of the reconstruction steps.

The official recipe: every parameter fits the signal until 80 % of the steps, then only the experts
do (manager, manager encoder and expert encoder frozen), so the partition of the domain stops moving
while the experts refine. At every switch the optimizer's state (Adam moments, step counts) is
cleared; the learning rate carries over. Manager pretraining is not a stage: it is a phase of its own
before the first step (:mod:`lightning_inr.manager_pretraining`, ``SignalFit.manager_steps``), so the
stages, the Trainer's steps and the lr schedule count reconstruction steps only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from lightning_inr.field import PARAMETER_GROUPS, CoordinateNetwork, ParameterGroup

Trainable = Literal["all", "experts", "manager"]
# ``manager`` is no longer a stage objective (manager pretraining is a phase of its own); it is still accepted
# by the type so that a config naming it gets the explanation below instead of a bare type error.
Objective = Literal["reconstruction", "manager"]

RETIRED_MANAGER_STAGE = (
    "objective 'manager' is no longer a stage: manager pretraining is a phase of its own before the "
    "reconstruction steps (SignalFit.manager_steps, default 3000, with manager_lr; its result is saved to and "
    "reused from manager_checkpoint), so the stages, max_steps and the lr schedule count reconstruction steps "
    "only. Remove this stage and let the next ones start at 0 (the default stages are [all until 0.8, experts "
    "until 1.0]); to pretrain a manager without fitting, run python -m lightning_inr.manager_pretraining"
)

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
        until: the stage ends at this fraction of the run's (reconstruction) steps; stages run in order.
        train: ``all``, ``experts`` (only the experts' own layers) or ``manager`` (manager + its encoder).
        objective: ``reconstruction`` (fit the signal), the only one. ``manager`` was the in-schedule
            manager pretraining of earlier versions and now raises an error that says what replaced it.
    """

    name: str
    until: float
    train: Trainable = "all"
    objective: Objective = "reconstruction"


def default_stages() -> list[Stage]:
    """The paper's recipe: all parameters to 80 %, experts only to 100 % (after the manager phase)."""
    return [
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
        if s.objective == "manager":
            raise ValueError(f"stage {s.name!r}: {RETIRED_MANAGER_STAGE}")
        if s.objective != "reconstruction":
            raise ValueError(f"stage {s.name!r}: objective must be reconstruction, got {s.objective!r}")
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
