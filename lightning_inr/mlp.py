"""Coordinate MLPs: one network, or K copies evaluated together as one batched operation.

A network is ``n_layers`` activated layers (``in → width``, then ``width → width``) followed, when
``out_dim`` is given, by a linear output layer. With ``n_copies = K`` every weight is stacked to
``(K, in, out)`` and every layer is one batched matrix product over all copies: no Python loop over experts.

Speed: each layer is one fused ``addmm``/``baddbmm`` (bias inside the product) on contiguous operands,
and the activation works on that fresh output (:func:`~lightning_inr.activations.activate_fresh`): no
bias-add, scale or layout copies, fewer temporaries. The copies' activations are contiguous ``(G, N,
width)`` tensors from the first layer on (the shared input is broadcast, not copied), G = K on
accelerators and on CPU as many copies as keep them cache- and heap-sized (:meth:`MLP.copies_per_group`).
Same values as the plain formulation, bit for bit, in the forward pass. :meth:`MLP.forward_into` is the
allocation-free evaluation that sparse rendering uses.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from lightning_inr.activations import ActivationName, activate_fresh, make_activation
from lightning_inr.initializers import InitName, init_layer_


class MLP(nn.Module):
    """``n_layers`` activated layers of ``width`` (+ a linear ``width → out_dim`` head if given).

    Args:
        in_dim: input features.
        width: hidden width.
        n_layers: activated layers (the first reads ``in_dim``).
        out_dim: width of a final linear layer; ``None`` = no head (an encoder: output is ``width``).
        activation, omega, beta: the activation (ω₀ for sine/FINER, β for Softplus).
        init: ``siren`` (sine/FINER) or ``kaiming`` (Softplus/ReLU).
        first_omega: ω₀ of the first layer only (SIREN's audio recipe uses 3000); default ``omega``.
        first_layer_rule: whether layer 0 counts as the network's first layer for the init rule.
        n_copies: ``None`` for one network, K for K independent networks evaluated together.
    """

    CPU_GROUP_BYTES = 16 * 2**20  # see copies_per_group

    def __init__(
        self,
        in_dim: int,
        width: int,
        n_layers: int,
        out_dim: int | None = None,
        activation: ActivationName = "sine",
        omega: float = 30.0,
        beta: float = 100.0,
        init: InitName = "siren",
        first_omega: float | None = None,
        first_layer_rule: bool = True,
        n_copies: int | None = None,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if n_copies is not None and n_copies < 1:
            raise ValueError(f"n_copies must be >= 1, got {n_copies}")
        self.n_copies = n_copies
        self.out_features = out_dim if out_dim is not None else width
        dims = [in_dim] + [width] * n_layers + ([out_dim] if out_dim is not None else [])
        lead = () if n_copies is None else (n_copies,)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            w, bias = torch.empty(*lead, a, b), torch.empty(*lead, b)
            init_layer_(w, bias, init, first=(i == 0 and first_layer_rule), omega=omega)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(bias))
        self.n_activated = n_layers
        self.act = make_activation(activation, omega, beta)
        # A separate first activation only matters when its ω₀ differs (audio SIREN recipe).
        self.first_act = (
            make_activation(activation, first_omega, beta)
            if first_omega is not None and first_omega != omega
            else self.act
        )

    def _activate(self, i: int, z: torch.Tensor) -> torch.Tensor:
        """Layer ``i``'s activation of its fresh pre-activation ``z`` (may overwrite ``z``)."""
        if i >= self.n_activated:
            return z  # the linear head
        return activate_fresh(self.first_act if i == 0 else self.act, z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in) → (N, out)``; with K copies ``(N, in)`` or ``(K, N, in)`` → ``(K, N, out)``."""
        if self.n_copies is None:
            for i, (w, b) in enumerate(zip(self.weights, self.biases)):
                z = torch.addmm(b, x, w) if x.dim() == 2 else x @ w + b  # addmm: bias fused, same bits
                x = self._activate(i, z)
            return x
        group = self.copies_per_group(x)
        if group >= self.n_copies:
            return self._forward_copies(x, 0, self.n_copies)
        return torch.cat([self._forward_copies(x, k, min(k + group, self.n_copies))
                          for k in range(0, self.n_copies, group)])

    def copies_per_group(self, x: torch.Tensor) -> int:
        """How many copies one batched product takes on ``x`` (``(N, in)`` or ``(K, N, in)``).

        All K on accelerators. On CPU, as many as keep a group's ``(G, N, width)`` activations within
        :attr:`CPU_GROUP_BYTES`: glibc serves bigger blocks with a fresh ``mmap`` (and unmaps them on
        free), so every such temporary is page-faulted in anew (zeroed page by page) at every step,
        which cost more than the whole gain of batching; smaller ones are reused from the heap and
        stay in cache between the product and its activation. Groups are balanced (K = 4 at 128² → 2 + 2).
        """
        k = self.n_copies
        if x.device.type != "cpu":
            return k
        widest = max(w.shape[-1] for w in self.weights)
        per_copy = x.shape[-2] * widest * x.element_size()
        n_groups = -(-k // max(1, self.CPU_GROUP_BYTES // max(per_copy, 1)))
        return -(-k // n_groups)

    def _forward_copies(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Copies ``start:stop`` as one batched product per layer (``x`` broadcast when shared)."""
        x = x.expand(stop - start, *x.shape) if x.dim() == 2 else x[start:stop]
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if stop - start < self.n_copies:
                w, b = w[start:stop], b[start:stop]
            x = self._activate(i, torch.baddbmm(b.unsqueeze(1), x, w))
        return x

    def forward_copy(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Copy ``k`` alone on ``(N, in)`` → ``(N, out)``: what sparse inference evaluates."""
        if self.n_copies is None:
            raise ValueError("forward_copy needs an MLP built with n_copies")
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = self._activate(i, torch.addmm(b[k], x, w[k]))
        return x

    @torch.no_grad()
    def forward_into(
        self, x: torch.Tensor, work: tuple[torch.Tensor, torch.Tensor], out: torch.Tensor, k: int | None = None
    ) -> torch.Tensor:
        """The network (or copy ``k``) on ``(n, in)`` without gradients and without allocating.

        Hidden layers alternate between the two flat ``work`` buffers (each at least ``n·width``
        elements), as contiguous ``(n, width)`` views; the last layer writes ``out`` (``(n,
        out_features)``, any row-major view, e.g. columns of a wider buffer). Same operations as
        :meth:`forward` / :meth:`forward_copy`, so the same values. Returns ``out``.
        """
        if (k is None) != (self.n_copies is None):
            raise ValueError("forward_into: k is given exactly for an MLP built with n_copies")
        n, last = x.shape[0], len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if k is not None:
                w, b = w[k], b[k]
            dest = out if i == last else work[i % 2][: n * w.shape[-1]].view(n, w.shape[-1])
            y = self._activate(i, torch.addmm(b, x, w, out=dest))
            if y is not dest:  # an activation without an in-place form (Softplus)
                dest.copy_(y)
            x = dest
        return x

    @torch.no_grad()
    def forward_sorted_into(
        self, x: torch.Tensor, copy_of_row: torch.Tensor, counts: list[int],
        work: tuple[torch.Tensor, torch.Tensor], out: torch.Tensor,
    ) -> torch.Tensor:
        """Each row of ``x`` (``(n, in)``) through its own copy, rows sorted by copy: ``copy_of_row``
        (``(n,)``, non-decreasing) and ``counts`` (rows per copy) say which. Without gradients and
        without allocating (``work``/``out`` as in :meth:`forward_into`).

        One operator per layer fills every row's bias, one product per copy adds its rows' products in
        place (the same ``beta = 1`` product :meth:`forward_copy`'s ``addmm`` makes), and the activation
        runs once over all rows: the same values as :meth:`forward_copy` row by row, with a handful of
        operators per layer instead of a handful per copy and layer.
        """
        if self.n_copies is None:
            raise ValueError("forward_sorted_into needs an MLP built with n_copies")
        n, last = x.shape[0], len(self.weights) - 1
        spans = [(k, start, start + c) for k, (start, c) in
                 enumerate(zip(itertools.accumulate([0] + counts[:-1]), counts)) if c]
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            dest = out if i == last else work[i % 2][: n * w.shape[-1]].view(n, w.shape[-1])
            torch.index_select(b, 0, copy_of_row, out=dest)
            for k, start, stop in spans:
                dest[start:stop].addmm_(x[start:stop], w[k])
            y = self._activate(i, dest)
            if y is not dest:
                dest.copy_(y)
            x = dest
        return x

