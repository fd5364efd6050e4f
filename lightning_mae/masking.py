"""Masking strategies. Every strategy produces one thing: ``ids_shuffle`` ``[B, N]``, a permutation of
the patch indices with the ``len_keep`` visible patches first and the masked ones after.

- ``random_ids_shuffle``: MAE's uniform random masking.
- ``informed_ids_shuffle``: Self-Guided MAE (Shin et al., NeurIPS 2024). The model's own patch
  embeddings bi-partition each image (Normalized Cut, or a cheaper PCA split); the patches most
  similar to the object-like cluster are masked, and a few hint tokens swap sides.
- ``SelfGuidedMasking``: the schedule (random until ``start_epoch``, informed after, hint ratio
  annealed), as an ``nn.Module`` so its knobs are typed constructor arguments.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Partition = Literal["ncut", "pca"]
HintSelection = Literal["random", "lowest_score"]


def random_ids_shuffle(
    batch_size: int, num_patches: int, device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform random masking: ``argsort`` of i.i.d. noise (small noise = visible)."""
    noise = torch.rand(batch_size, num_patches, device=device, generator=generator)
    return torch.argsort(noise, dim=1)


def _random_order(shape: tuple[int, int], device: torch.device, generator: torch.Generator | None) -> Tensor:
    return torch.argsort(torch.rand(shape, device=device, generator=generator), dim=1)


def ncut_bipartition(z: Tensor, tau: float = 0.2, eps: float = 1e-5) -> Tensor:
    """Normalized-Cut bi-partition of each image's patches (TokenCut-style graph).

    ``z``: ``[B, N, D]`` L2-normalised embeddings. Edges are 1 where the cosine similarity exceeds
    ``tau`` and ``eps`` elsewhere (keeps the graph connected). The Fiedler vector of the generalised
    problem ``(D - W) y = lambda D y`` splits the patches at its mean; the side holding the largest
    ``|y|`` is returned as the object (``True``) side.
    """
    z = z.float()
    affinity = z @ z.transpose(1, 2)
    w = torch.where(affinity > tau, 1.0, eps).to(z.dtype)
    d_inv_sqrt = w.sum(dim=-1).rsqrt()
    # Symmetric normalised Laplacian I - D^-1/2 W D^-1/2 has the same spectrum; y = D^-1/2 v.
    lap = torch.eye(w.shape[-1], device=z.device, dtype=z.dtype) - d_inv_sqrt[:, :, None] * w * d_inv_sqrt[:, None, :]
    _, vecs = torch.linalg.eigh(lap)
    y = vecs[:, :, 1] * d_inv_sqrt
    return _object_side(y)


def pca_bipartition(z: Tensor, iters: int = 20) -> Tensor:
    """Split at the mean of the projection on the first principal direction.

    Cheaper than ``ncut_bipartition``: power iteration on the centred ``[N, N]`` Gram matrix (its top
    eigenvector is the projection on the first principal direction), no eigensolver.
    """
    zc = z.float() - z.float().mean(dim=1, keepdim=True)
    gram = zc @ zc.transpose(1, 2)
    # Start from the Gram column of largest norm: it lies in the range of the Gram matrix, so it is
    # not orthogonal to the top eigenvector unless the data is degenerate.
    p = gram.gather(2, gram.norm(dim=1).argmax(dim=1)[:, None, None].expand(-1, gram.shape[1], 1))
    for _ in range(iters):
        p = F.normalize(gram @ p, dim=1)
    return _object_side(p[..., 0])


def _object_side(y: Tensor) -> Tensor:
    side = y > y.mean(dim=1, keepdim=True)
    foreground = side.gather(1, y.abs().argmax(dim=1, keepdim=True))
    return torch.where(foreground, side, ~side)


def object_similarity(z: Tensor, object_mask: Tensor) -> Tensor:
    """``s_i = <z_i, normalize(mean of z over the object cluster)>``, ``[B, N]``."""
    weights = object_mask.to(z.dtype)
    centre = (z * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1.0)
    return torch.einsum("bnd,bd->bn", z, F.normalize(centre, dim=-1))


def add_hints(
    ids_shuffle: Tensor, len_keep: int, num_hints: int, selection: HintSelection = "random",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Reveal ``num_hints`` masked patches and re-mask as many visible ones (chosen at random).

    ``selection="lowest_score"`` reveals the first masked patches of ``ids_shuffle`` (for informed
    masks those are the least object-like); ``"random"`` picks them uniformly. The ratio is unchanged.
    """
    b, n = ids_shuffle.shape
    k = min(num_hints, len_keep, n - len_keep)
    if k <= 0:
        return ids_shuffle
    visible, masked = ids_shuffle[:, :len_keep], ids_shuffle[:, len_keep:]
    visible = visible.gather(1, _random_order((b, len_keep), visible.device, generator))
    if selection == "random":
        masked = masked.gather(1, _random_order((b, n - len_keep), masked.device, generator))
    elif selection != "lowest_score":
        raise ValueError(f"hint_selection must be 'random' or 'lowest_score', got {selection!r}")
    return torch.cat([visible[:, k:], masked[:, :k], visible[:, :k], masked[:, k:]], dim=1)


def informed_ids_shuffle(
    z: Tensor, len_keep: int, partition: Partition = "ncut", tau: float = 0.2, eps: float = 1e-5,
    hint_ratio: float = 0.0, hint_selection: HintSelection = "random",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Self-guided informed mask from L2-normalised patch embeddings ``z`` ``[B, N, D]``.

    Patches are sorted by similarity to the object cluster: the ``N - len_keep`` most similar are
    masked (the whole cluster first), then ``round(hint_ratio * n_mask)`` hints swap sides.
    """
    with torch.autocast(z.device.type, enabled=False):  # eigh and thresholds need float32
        if partition == "ncut":
            obj = ncut_bipartition(z, tau, eps)
        elif partition == "pca":
            obj = pca_bipartition(z)
        else:
            raise ValueError(f"partition must be 'ncut' or 'pca', got {partition!r}")
        score = object_similarity(z.float(), obj)
    ids_shuffle = torch.argsort(score, dim=1, stable=True)  # least object-like first = visible
    num_hints = round(hint_ratio * (z.shape[1] - len_keep))
    return add_hints(ids_shuffle, len_keep, num_hints, hint_selection, generator)


class PatchEncoder(Protocol):
    """What the masking needs of the model: its size and its no-grad mid-layer features."""

    num_patches: int
    depth: int

    def patch_features(self, imgs: Tensor, layer: int) -> Tensor: ...


class SelfGuidedMasking(nn.Module):
    """Random masking until ``start_epoch``, self-guided informed masking from then on.

    Args:
        mask_ratio: fraction of patches masked, exactly, for both kinds of masks.
        start_epoch: first epoch (0-based) of informed masking; ``None`` = random masking only
            (plain MAE). Default 40, i.e. after the MAE recipe's 40 warm-up epochs (not given in the
            paper: the project's choice).
        source_layer: encoder block whose output feeds the partition (the no-grad pass stops there);
            ``None`` = ``depth // 2``, the middle of the encoder. ``0`` = the patch embedding.
        partition: ``"ncut"`` (Normalized Cut, the paper) or ``"pca"`` (cheaper split).
        tau: affinity threshold of the Normalized-Cut graph.
        eps: edge weight below the threshold (keeps the graph connected).
        hint_start: hint ratio (share of masked patches revealed) at ``start_epoch``.
        hint_end: hint ratio at the last epoch; linear in between (project's choice of defaults).
        hint_selection: which masked patches become hints: ``"random"`` or ``"lowest_score"``.
    """

    def __init__(
        self,
        mask_ratio: float = 0.75,
        start_epoch: int | None = 40,
        source_layer: int | None = None,
        partition: Partition = "ncut",
        tau: float = 0.2,
        eps: float = 1e-5,
        hint_start: float = 0.25,
        hint_end: float = 0.05,
        hint_selection: HintSelection = "random",
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if start_epoch is not None and start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0 or None, got {start_epoch}")
        if source_layer is not None and source_layer < 0:
            raise ValueError(f"source_layer must be >= 0 or None, got {source_layer}")
        if partition not in ("ncut", "pca"):
            raise ValueError(f"partition must be 'ncut' or 'pca', got {partition!r}")
        if hint_selection not in ("random", "lowest_score"):
            raise ValueError(f"hint_selection must be 'random' or 'lowest_score', got {hint_selection!r}")
        for name, value in (("hint_start", hint_start), ("hint_end", hint_end)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not -1.0 <= tau < 1.0:
            raise ValueError(f"tau is a cosine-similarity threshold in [-1, 1), got {tau}")
        self.mask_ratio, self.start_epoch, self.source_layer = mask_ratio, start_epoch, source_layer
        self.partition, self.tau, self.eps = partition, tau, eps
        self.hint_start, self.hint_end, self.hint_selection = hint_start, hint_end, hint_selection

    def len_keep(self, num_patches: int) -> int:
        return int(num_patches * (1 - self.mask_ratio))

    def layer(self, depth: int) -> int:
        layer = depth // 2 if self.source_layer is None else self.source_layer
        if layer > depth:
            raise ValueError(f"source_layer={layer} exceeds the encoder depth {depth}")
        return layer

    def is_informed(self, epoch: int) -> bool:
        return self.start_epoch is not None and epoch >= self.start_epoch

    def hint_ratio(self, epoch: int, max_epochs: int | None) -> float:
        """Linear from ``hint_start`` at ``start_epoch`` to ``hint_end`` at the last epoch; 0 before."""
        if not self.is_informed(epoch):
            return 0.0
        assert self.start_epoch is not None
        if max_epochs is None or max_epochs <= 0:
            return self.hint_start  # no known end: hold the starting ratio
        span = max(max_epochs - 1 - self.start_epoch, 1)
        t = min((epoch - self.start_epoch) / span, 1.0)
        return self.hint_start + (self.hint_end - self.hint_start) * t

    def informed_ids(self, imgs: Tensor, model: PatchEncoder, hint_ratio: float) -> Tensor:
        z = model.patch_features(imgs, self.layer(model.depth))
        return informed_ids_shuffle(
            z, self.len_keep(model.num_patches), self.partition, self.tau, self.eps,
            hint_ratio, self.hint_selection,
        )

    def forward(self, imgs: Tensor, model: PatchEncoder, epoch: int, max_epochs: int | None = None) -> Tensor:
        """``ids_shuffle`` for this batch at this epoch."""
        if self.is_informed(epoch):
            return self.informed_ids(imgs, model, self.hint_ratio(epoch, max_epochs))
        return random_ids_shuffle(imgs.shape[0], model.num_patches, imgs.device)
