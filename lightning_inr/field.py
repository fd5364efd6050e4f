"""What every coordinate network of the package returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
