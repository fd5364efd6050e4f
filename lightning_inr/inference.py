"""Rendering: evaluate a trained network on many points, in chunks, without gradients.

Sparse inference runs the encoders and the manager on every point, then groups the points by their
selected expert and runs each expert only on its own points: with K experts the expert cost falls
from K to 1 evaluation per point, and the output is the dense one (same routing, same expert).
"""

from __future__ import annotations

import torch

from lightning_inr.experts import NeuralExperts
from lightning_inr.field import CoordinateNetwork, FieldOutput


def sparse_forward(network: NeuralExperts, coords: torch.Tensor) -> FieldOutput:
    """Hard top-1 output computing only the selected expert per point (grouped by expert)."""
    expert_feats, logits = network.route(coords)
    selected = logits.argmax(dim=-1)
    pred = expert_feats.new_empty(coords.shape[0], network.out_dim)
    order = torch.argsort(selected)
    counts = torch.bincount(selected, minlength=network.n_experts).tolist()
    start = 0
    for k, count in enumerate(counts):  # a loop over groups of points, each one batched matmul chain
        if count:
            idx = order[start : start + count]
            pred[idx] = network.experts.forward_copy(expert_feats[idx], k)
            start += count
    return FieldOutput(pred, None, logits, logits.softmax(dim=-1), selected)


@torch.no_grad()
def render(
    network: CoordinateNetwork, coords: torch.Tensor, chunk_size: int = 65536, sparse: bool = True
) -> FieldOutput:
    """The network on ``coords`` (N, d), ``chunk_size`` points at a time (``expert_preds`` dropped).

    ``sparse`` uses :func:`sparse_forward` for a :class:`NeuralExperts`; other networks run densely.
    Note: ``max``/``mean`` conditioning pools over each chunk, so for those set ``chunk_size`` ≥ N.
    """
    parts = []
    for chunk in coords.split(chunk_size):
        if sparse and isinstance(network, NeuralExperts):
            out = sparse_forward(network, chunk)
        else:
            out = network(chunk)
        parts.append(out)
    logits = None if parts[0].logits is None else torch.cat([p.logits for p in parts])
    return FieldOutput(
        pred=torch.cat([p.pred for p in parts]),
        expert_preds=None,
        logits=logits,
        q=torch.cat([p.q for p in parts]),
        selected=torch.cat([p.selected for p in parts]),
    )
