"""Rendering: evaluate a trained network on many points, in chunks, without gradients.

Sparse inference runs the encoders and the manager on every point, then groups the points by their
selected expert and runs each expert only on its own points: with K experts the expert cost falls
from K to 1 evaluation per point, and the output is the dense one (same routing, same expert).

Sparse rendering allocates nothing per chunk: the outputs are allocated once for all points, and the
layers of every chunk write into a few work buffers of ``chunk_size`` rows, reused (in place: the
matrix products write their output buffer, the activations overwrite it). Its memory is bounded by the
chunk size; no ``(K, N, ...)`` tensor is ever built. The points are gathered once in expert order, each
expert multiplies its own rows in place, and bias fill and activation run once over all rows
(:meth:`~lightning_inr.mlp.MLP.forward_sorted_into`): a few operators per layer, not a few per expert.
"""

from __future__ import annotations

import torch

from lightning_inr.experts import NeuralExperts
from lightning_inr.field import CoordinateNetwork, FieldOutput


class _SparseRenderer:
    """The work buffers of sparse rendering for chunks of up to ``rows`` points, and the per-chunk pass."""

    def __init__(self, network: NeuralExperts, rows: int, like: torch.Tensor) -> None:
        self.net = network
        mlps = (network.expert_encoder.mlp, network.manager_encoder.mlp, network.manager, network.experts)
        hidden = max(w.shape[-1] for mlp in mlps for w in mlp.weights[:-1]) if any(
            len(mlp.weights) > 1 for mlp in mlps) else 1
        expert_width, manager_width = network.expert_encoder.out_dim, network.manager_encoder.out_dim
        new = lambda *shape: like.new_empty(*shape)  # noqa: E731
        self.work = (new(rows * hidden), new(rows * hidden))
        cond = network.conditioning
        # The manager's input [manager features | expert part]; the encoders write their halves in place.
        self.manager_in = new(rows, manager_width + (expert_width if cond != "none" else 0))
        self.own_expert_feats = None if cond == "cat" else new(rows, expert_width)
        self.gathered = new(rows * expert_width)  # the rows of one expert's points
        self.expert_out = new(rows * network.out_dim)

    def __call__(self, coords: torch.Tensor, pred: torch.Tensor, logits: torch.Tensor, q: torch.Tensor,
                 selected: torch.Tensor) -> None:
        """Fill ``pred``, ``logits``, ``q``, ``selected`` (this chunk's rows of the outputs)."""
        net, n = self.net, coords.shape[0]
        manager_width = net.manager_encoder.out_dim
        manager_in = self.manager_in[:n]
        if net.conditioning == "cat":  # the expert features are the right half of the manager's input
            expert_feats = manager_in[:, manager_width:]
        else:
            expert_feats = self.own_expert_feats[:n]
        _encode(net.expert_encoder, coords, self.work, expert_feats)
        _encode(net.manager_encoder, coords, self.work, manager_in[:, :manager_width])
        if net.conditioning == "max":
            manager_in[:, manager_width:].copy_(expert_feats.max(dim=0, keepdim=True).values)
        elif net.conditioning == "mean":
            manager_in[:, manager_width:].copy_(expert_feats.mean(dim=0, keepdim=True))
        manager_in = manager_in[:, :manager_width] if net.conditioning == "none" else manager_in
        net.manager.forward_into(manager_in, self.work, logits)
        torch.argmax(logits, dim=-1, out=selected)
        q.copy_(logits.softmax(dim=-1))
        # Group the points by expert: one gather in expert order, every expert on its own rows, one scatter.
        sorted_experts, order = torch.sort(selected)
        counts = torch.bincount(selected, minlength=net.n_experts).tolist()
        rows = torch.index_select(expert_feats, 0, order, out=self.gathered[: n * expert_feats.shape[1]].view(n, -1))
        out = self.expert_out[: n * net.out_dim].view(n, net.out_dim)
        pred.index_copy_(0, order, net.experts.forward_sorted_into(rows, sorted_experts, counts, self.work, out))


def _encode(encoder: torch.nn.Module, coords: torch.Tensor, work: tuple[torch.Tensor, torch.Tensor],
            out: torch.Tensor) -> None:
    x = encoder.fourier(coords) if encoder.fourier is not None else coords
    encoder.mlp.forward_into(x, work, out)


def _outputs(network: CoordinateNetwork, n: int, like: torch.Tensor) -> FieldOutput:
    """The rendered outputs for ``n`` points, allocated once."""
    k = network.n_experts
    has_logits = isinstance(network, NeuralExperts)
    return FieldOutput(
        pred=like.new_empty(n, network.out_dim),
        expert_preds=None,
        logits=like.new_empty(n, k) if has_logits else None,
        q=like.new_empty(n, k),
        selected=torch.empty(n, dtype=torch.long, device=like.device),
    )


def _param_like(network: torch.nn.Module, coords: torch.Tensor) -> torch.Tensor:
    param = next(network.parameters(), None)
    return coords if param is None else coords.new_empty(0, dtype=param.dtype)


@torch.no_grad()
def sparse_forward(network: NeuralExperts, coords: torch.Tensor) -> FieldOutput:
    """Hard top-1 output computing only the selected expert per point (grouped by expert), all points in
    one chunk, without gradients (``expert_preds`` is ``None``)."""
    return render(network, coords, chunk_size=max(coords.shape[0], 1), sparse=True)


@torch.no_grad()
def render(
    network: CoordinateNetwork, coords: torch.Tensor, chunk_size: int = 65536, sparse: bool = True
) -> FieldOutput:
    """The network on ``coords`` (N, d), ``chunk_size`` points at a time (``expert_preds`` dropped).

    ``sparse`` evaluates only the selected expert of each point for a :class:`NeuralExperts` (buffers
    of ``chunk_size`` rows reused across chunks); other networks, and ``sparse=False``, run the
    network's forward per chunk. Note: ``max``/``mean`` conditioning pools over each chunk, so for those
    set ``chunk_size`` ≥ N.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = coords.shape[0]
    like = _param_like(network, coords)
    result = _outputs(network, n, like)
    if sparse and isinstance(network, NeuralExperts):
        renderer = _SparseRenderer(network, min(chunk_size, max(n, 1)), like)
        for start in range(0, n, chunk_size):
            s = slice(start, min(start + chunk_size, n))
            renderer(coords[s], result.pred[s], result.logits[s], result.q[s], result.selected[s])
        return result
    for start in range(0, n, chunk_size):
        s = slice(start, min(start + chunk_size, n))
        out = network(coords[s])
        result.pred[s] = out.pred
        if result.logits is not None:
            result.logits[s] = out.logits
        result.q[s] = out.q
        result.selected[s] = out.selected
    return result
