"""Masking strategies. Every strategy produces one thing: ``ids_shuffle`` ``[B, N]``, a permutation of
the patch indices with the ``len_keep`` visible patches first and the masked ones after.

- ``random_ids_shuffle``: MAE's uniform random masking.
- ``informed_ids_shuffle``: Self-Guided MAE (Shin et al., NeurIPS 2024). The model's own patch
  embeddings bi-partition each image (Normalized Cut, or a cheaper PCA split); the patches most
  similar to the object-like cluster are masked, and a few hint tokens swap sides.
- ``SelfGuidedMasking``: the schedule (random until ``start_epoch``, informed after, hint ratio
  annealed), as an ``nn.Module`` so its knobs are typed constructor arguments. ``start_epoch="auto"``
  switches once the model's token relations stop moving between epochs (beyond the paper).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mae.relations import relation_kl, token_relations

Partition = Literal["ncut", "pca"]
HintSelection = Literal["random", "lowest_score"]
FeatureSource = Literal["encoder", "decoder"]


def random_ids_shuffle(
    batch_size: int, num_patches: int, device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform random masking: ``argsort`` of i.i.d. noise (small noise = visible)."""
    noise = torch.rand(batch_size, num_patches, device=device, generator=generator)
    return torch.argsort(noise, dim=1)


def _random_order(shape: tuple[int, int], device: torch.device, generator: torch.Generator | None) -> Tensor:
    return torch.argsort(torch.rand(shape, device=device, generator=generator), dim=1)


def cosine_affinity(z: Tensor) -> Tensor:
    """Pairwise similarities ``[B, N, N]`` (float32) of ``z`` ``[B, N, D]``: cosines when ``z`` is L2-normalised."""
    z = z.float()
    return z @ z.transpose(1, 2)


def ncut_threshold(affinity: Tensor, tau: float | Literal["mean"]) -> Tensor | float:
    """The edge threshold of each image's graph: ``tau``, or under ``"mean"`` the image's mean off-diagonal
    affinity (a ``[B, 1, 1]`` tensor)."""
    if tau != "mean":
        return tau
    n = affinity.shape[-1]
    off_diagonal = affinity.sum((-2, -1)) - affinity.diagonal(dim1=-2, dim2=-1).sum(-1)
    return (off_diagonal / (n * (n - 1)))[:, None, None]


def ncut_split(affinity: Tensor, tau: float | Literal["mean"] = 0.2, eps: float = 1e-5) -> Tensor:
    """Normalized-Cut bi-partition of the graph whose edges are 1 where ``affinity`` ``[B, N, N]`` exceeds
    ``tau`` (``"mean"``: per image, ``ncut_threshold``) and ``eps`` elsewhere; see ``ncut_bipartition``.
    Any symmetric affinity works (cosine similarities, symmetrised attention)."""
    w = torch.where(affinity > ncut_threshold(affinity, tau), 1.0, eps).to(affinity.dtype)
    d_inv_sqrt = w.sum(dim=-1).rsqrt()
    # Symmetric normalised Laplacian I - D^-1/2 W D^-1/2 has the same spectrum; y = D^-1/2 v.
    eye = torch.eye(w.shape[-1], device=affinity.device, dtype=affinity.dtype)
    lap = eye - d_inv_sqrt[:, :, None] * w * d_inv_sqrt[:, None, :]
    _, vecs = torch.linalg.eigh(lap)
    y = vecs[:, :, 1] * d_inv_sqrt
    return _object_side(y)


def ncut_bipartition(z: Tensor, tau: float | Literal["mean"] = 0.2, eps: float = 1e-5) -> Tensor:
    """Normalized-Cut bi-partition of each image's patches (TokenCut-style graph).

    ``z``: ``[B, N, D]`` L2-normalised embeddings. Edges are 1 where the cosine similarity exceeds
    ``tau`` and ``eps`` elsewhere (keeps the graph connected). ``tau="mean"`` thresholds each image
    at its mean pairwise similarity: MAE features are anisotropic (in the Fashion-MNIST demo every
    block-3 patch pair has cosine > 0.2), and a fixed threshold below all similarities makes the
    graph complete and its Fiedler vector degenerate, i.e. the split arbitrary (``graph_stats`` measures
    it). The Fiedler vector of the generalised problem ``(D - W) y = lambda D y`` splits the patches at
    its mean; the side holding the largest ``|y|`` is returned as the object (``True``) side.
    """
    return ncut_split(cosine_affinity(z), tau, eps)


# An NCut graph with more than this share of its off-diagonal pairs as edges (or fewer than 1 - it) is
# (nearly) complete (empty): its Fiedler vector, hence the split, is arbitrary.
DEGENERATE_DENSITY = 0.95
QUANTILES = (0.1, 0.5, 0.9)


def graph_stats(affinity: Tensor, tau: float | Literal["mean"]) -> dict[str, Tensor]:
    """Statistics of the NCut graph built from ``affinity`` ``[B, N, N]`` with threshold ``tau``, as 0-d tensors.

    ``sim_q10``, ``sim_q50``, ``sim_q90``: quantiles of the off-diagonal similarities (per image, nearest
    rank, averaged over the images); ``edge_density``: the share of off-diagonal pairs above the threshold
    (1 = a complete graph, whose cut is arbitrary; ``degenerate_graph``).
    """
    n = affinity.shape[-1]
    off = ~torch.eye(n, dtype=torch.bool, device=affinity.device)
    values = affinity[:, off]  # [B, N (N - 1)]
    ranks = [round(q * (values.shape[1] - 1)) for q in QUANTILES]
    quantiles = values.sort(dim=1).values[:, ranks].mean(0)
    density = (affinity > ncut_threshold(affinity, tau))[:, off].float().mean()
    stats = {f"sim_q{round(q * 100)}": v for q, v in zip(QUANTILES, quantiles.unbind(0))}
    return {**stats, "edge_density": density}


def degenerate_graph(edge_density: float) -> bool:
    """True when the NCut graph is (nearly) complete or (nearly) empty: its split is then arbitrary."""
    return not 1.0 - DEGENERATE_DENSITY <= edge_density <= DEGENERATE_DENSITY


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
    z: Tensor, len_keep: int, partition: Partition = "ncut", tau: float | Literal["mean"] = 0.2, eps: float = 1e-5,
    hint_ratio: float = 0.0, hint_selection: HintSelection = "random",
    generator: torch.Generator | None = None, info: dict[str, Tensor] | None = None,
) -> Tensor:
    """Self-guided informed mask from L2-normalised patch embeddings ``z`` ``[B, N, D]``.

    Patches are sorted by similarity to the object cluster: the ``N - len_keep`` most similar are
    masked (the whole cluster first), then ``round(hint_ratio * n_mask)`` hints swap sides.

    ``info``, when given, receives ``"partition"`` (the bi-partition, bool ``[B, N]``, ``True`` = object
    side) and, for ``"ncut"``, the ``graph_stats`` of its graph, read off the similarity matrix the cut
    already computed (no extra pass).
    """
    with torch.autocast(z.device.type, enabled=False):  # eigh and thresholds need float32
        if partition == "ncut":
            affinity = cosine_affinity(z)
            obj = ncut_split(affinity, tau, eps)
            if info is not None:
                info.update(graph_stats(affinity, tau))
        elif partition == "pca":
            obj = pca_bipartition(z)
        else:
            raise ValueError(f"partition must be 'ncut' or 'pca', got {partition!r}")
        score = object_similarity(z.float(), obj)
    if info is not None:
        info["partition"] = obj
    ids_shuffle = torch.argsort(score, dim=1, stable=True)  # least object-like first = visible
    num_hints = round(hint_ratio * (z.shape[1] - len_keep))
    return add_hints(ids_shuffle, len_keep, num_hints, hint_selection, generator)


class PatchEncoder(Protocol):
    """What the masking needs of the model: its size and its no-grad mid-layer features (with
    ``source="decoder"`` also ``decoder_depth`` and ``decoder_patch_features``; for the pass shared with the
    online probe, ``features_with_encoder_output``, also ``forward_features`` and
    ``features_with_patch_features``: all as ``MaskedAutoencoderViT``)."""

    num_patches: int
    depth: int

    def patch_features(self, imgs: Tensor, layer: int) -> Tensor: ...


class SelfGuidedMasking(nn.Module):
    """Random masking until ``start_epoch``, self-guided informed masking from then on.

    Args:
        mask_ratio: fraction of patches masked, exactly, for both kinds of masks.
        start_epoch: first epoch (0-based) of informed masking; ``None`` = random masking only
            (plain MAE). Default 40, i.e. after the MAE recipe's 40 warm-up epochs (not given in the
            paper: the project's choice). ``"auto"``: switch at the epoch after the one whose token
            relations (on a fixed probe batch, at ``source_layer``) moved less than
            ``auto_threshold`` since the previous epoch; the switch epoch is part of the state dict.
        source_layer: the block whose output feeds the partition, counted from 1 within its ``source``:
            ``6`` = the output of the 6th block (the no-grad pass stops there), ``0`` = the input of the
            first block (for the encoder: the patch embedding plus position). ``None`` = ``depth // 2``
            (the middle of the encoder) for ``source="encoder"``, ``decoder_depth`` (the decoder's last
            block, as the paper's "layer 8 (decoder)" of ViT-B/16) for ``source="decoder"``.
        source: where the features come from. ``"encoder"``: the encoder on all patches of the full
            image, blocks ``1..source_layer``. ``"decoder"``: a full, unmasked pass through the whole
            encoder (``forward_features``, normed), then ``decoder_embed`` plus the decoder's position
            embedding, then decoder blocks ``1..source_layer`` (no mask token: every patch is
            visible). The paper compares encoder layers 3, 7, 11 and decoder layer 8 (Fig. VIII).
        partition: ``"ncut"`` (Normalized Cut, the paper) or ``"pca"`` (cheaper split).
        tau: affinity threshold of the Normalized-Cut graph (cosine similarity), or ``"mean"``: each
            image's mean pairwise similarity (use it when every pair exceeds a fixed threshold, see
            ``ncut_bipartition``).
        eps: edge weight below the threshold (keeps the graph connected).
        hint_start: hint ratio (share of masked patches revealed) at ``start_epoch``.
        hint_end: hint ratio at the last epoch; linear in between (project's choice of defaults).
        hint_selection: which masked patches become hints: ``"random"`` or ``"lowest_score"``.
        auto_threshold: ``"auto"`` only: KL divergence (nats, mean over the probe tokens) between
            consecutive epochs' token relations under which the clustering counts as settled.
        auto_min_epoch: ``"auto"`` only: earliest epoch informed masking may start.
        auto_patience: ``"auto"`` only: consecutive epochs under ``auto_threshold`` required (one
            quiet epoch can be a plateau of the learning-rate warm-up rather than settled clusters).
        auto_probe_images: ``"auto"`` only: images of the fixed probe batch (taken from the first
            training batch).
        relation_temperature: softmax temperature of the token relations (``analysis.token_relations``).
    """

    def __init__(
        self,
        mask_ratio: float = 0.75,
        start_epoch: int | Literal["auto"] | None = 40,
        source_layer: int | None = None,
        source: FeatureSource = "encoder",
        partition: Partition = "ncut",
        tau: float | Literal["mean"] = 0.2,
        eps: float = 1e-5,
        hint_start: float = 0.25,
        hint_end: float = 0.05,
        hint_selection: HintSelection = "random",
        auto_threshold: float = 0.01,
        auto_min_epoch: int = 1,
        auto_patience: int = 1,
        auto_probe_images: int = 32,
        relation_temperature: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if start_epoch != "auto" and start_epoch is not None and (isinstance(start_epoch, str) or start_epoch < 0):
            raise ValueError(f"start_epoch must be an epoch >= 0, 'auto' or None, got {start_epoch!r}")
        if source_layer is not None and source_layer < 0:
            raise ValueError(f"source_layer must be >= 0 or None, got {source_layer}")
        if source not in ("encoder", "decoder"):
            raise ValueError(f"source must be 'encoder' or 'decoder', got {source!r}")
        if partition not in ("ncut", "pca"):
            raise ValueError(f"partition must be 'ncut' or 'pca', got {partition!r}")
        if hint_selection not in ("random", "lowest_score"):
            raise ValueError(f"hint_selection must be 'random' or 'lowest_score', got {hint_selection!r}")
        for name, value in (("hint_start", hint_start), ("hint_end", hint_end)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if tau != "mean" and (isinstance(tau, str) or not -1.0 <= tau < 1.0):
            raise ValueError(f"tau is a cosine-similarity threshold in [-1, 1) or 'mean', got {tau!r}")
        if auto_threshold <= 0 or relation_temperature <= 0:
            raise ValueError(f"auto_threshold and relation_temperature must be > 0, got {auto_threshold}, "
                             f"{relation_temperature}")
        if auto_min_epoch < 0 or auto_patience < 1 or auto_probe_images < 1:
            raise ValueError(f"need auto_min_epoch >= 0, auto_patience >= 1 and auto_probe_images >= 1, got "
                             f"{auto_min_epoch}, {auto_patience}, {auto_probe_images}")
        self.mask_ratio, self.start_epoch = mask_ratio, start_epoch
        self.source_layer, self.source = source_layer, source
        self.partition, self.tau, self.eps = partition, tau, eps
        self.hint_start, self.hint_end, self.hint_selection = hint_start, hint_end, hint_selection
        self.auto_threshold, self.auto_min_epoch, self.auto_patience = auto_threshold, auto_min_epoch, auto_patience
        self.auto_probe_images, self.relation_temperature = auto_probe_images, relation_temperature
        # "auto" state; saved with the model (``get_extra_state``) so a resumed run keeps its switch.
        self.switch_epoch: int | None = None
        self.quiet_epochs = 0  # consecutive checks under the threshold
        self.probe_images: Tensor | None = None
        self.last_relations: Tensor | None = None

    @property
    def auto(self) -> bool:
        return self.start_epoch == "auto"

    @property
    def informed_from(self) -> int | None:
        """The first informed epoch: ``start_epoch``, or under ``"auto"`` the switch once decided."""
        return self.switch_epoch if self.auto else self.start_epoch  # type: ignore[return-value]

    def len_keep(self, num_patches: int) -> int:
        return int(num_patches * (1 - self.mask_ratio))

    def layer(self, depth: int, decoder_depth: int | None = None) -> int:
        """The number of blocks of ``source`` the feature pass runs (``source_layer``, resolved and checked
        against the encoder's ``depth``, or for ``source="decoder"`` against ``decoder_depth``)."""
        if self.source == "decoder":
            if decoder_depth is None:
                raise ValueError("source='decoder' needs a model with a decoder (decoder_depth)")
            layer = decoder_depth if self.source_layer is None else self.source_layer
            if layer > decoder_depth:
                raise ValueError(
                    f"source_layer={layer} exceeds the decoder depth {decoder_depth} (source='decoder'): use 0 to "
                    f"{decoder_depth} (0 = the decoder's input) or null (its last block, {decoder_depth}), or "
                    "source='encoder'"
                )
            return layer
        layer = depth // 2 if self.source_layer is None else self.source_layer
        if layer > depth:
            raise ValueError(f"source_layer={layer} exceeds the encoder depth {depth}: use 0 to {depth} (0 = the "
                             f"patch embedding) or null (the middle block, {depth // 2})")
        return layer

    def check(self, model: PatchEncoder) -> int:
        """Fail now on a ``source_layer`` the model does not have; returns the resolved layer."""
        return self.layer(model.depth, getattr(model, "decoder_depth", None))

    def features(self, imgs: Tensor, model: PatchEncoder) -> Tensor:
        """The no-grad, L2-normalised patch features ``[B, N, D]`` the partition is made from."""
        layer = self.check(model)
        if self.source == "decoder":
            return model.decoder_patch_features(imgs, layer)  # type: ignore[attr-defined]
        return model.patch_features(imgs, layer)

    def features_with_encoder_output(self, imgs: Tensor, model: PatchEncoder) -> tuple[Tensor, Tensor]:
        """``(features(imgs, model), model.forward_features(imgs))`` from one no-grad pass, for a step that
        needs the unmasked encoder output anyway (the online probe): the masks then cost only the partition."""
        layer = self.check(model)
        if self.source == "decoder":
            with torch.no_grad():
                encoded = model.forward_features(imgs)  # type: ignore[attr-defined]
            return model.decoder_patch_features(imgs, layer, encoded), encoded  # type: ignore[attr-defined]
        encoded, z = model.features_with_patch_features(imgs, layer)  # type: ignore[attr-defined]
        return z, encoded

    def is_informed(self, epoch: int) -> bool:
        return self.informed_from is not None and epoch >= self.informed_from

    def hint_ratio(self, epoch: int, max_epochs: int | None) -> float:
        """Linear from ``hint_start`` at the first informed epoch to ``hint_end`` at the last; 0 before."""
        start = self.informed_from
        if start is None or epoch < start:
            return 0.0
        if max_epochs is None or max_epochs <= 0:
            return self.hint_start  # no known end: hold the starting ratio
        span = max(max_epochs - 1 - start, 1)
        t = min((epoch - start) / span, 1.0)
        return self.hint_start + (self.hint_end - self.hint_start) * t

    def informed_ids(
        self, imgs: Tensor, model: PatchEncoder, hint_ratio: float, generator: torch.Generator | None = None,
        info: dict[str, Tensor] | None = None, features: Tensor | None = None,
    ) -> Tensor:
        """Informed ``ids_shuffle``; ``info`` (optional) receives the partition and graph statistics
        (see ``informed_ids_shuffle``); ``features``: ``self.features(imgs, model)`` if already computed."""
        return informed_ids_shuffle(
            self.features(imgs, model) if features is None else features, self.len_keep(model.num_patches),
            self.partition, self.tau, self.eps, hint_ratio, self.hint_selection, generator, info,
        )

    def forward(
        self, imgs: Tensor, model: PatchEncoder, epoch: int, max_epochs: int | None = None,
        generator: torch.Generator | None = None, info: dict[str, Tensor] | None = None,
        features: Tensor | None = None,
    ) -> Tensor:
        """``ids_shuffle`` for this batch at this epoch (random draws from ``generator``). ``info`` is
        filled only when the mask is informed (``informed_ids``); ``features`` is passed on to it."""
        if self.is_informed(epoch):
            return self.informed_ids(imgs, model, self.hint_ratio(epoch, max_epochs), generator, info, features)
        return random_ids_shuffle(imgs.shape[0], model.num_patches, imgs.device, generator)

    # --- "auto" start ----------------------------------------------------------------------------
    @property
    def needs_probe(self) -> bool:
        return self.auto and self.probe_images is None

    def set_probe(self, imgs: Tensor, model: PatchEncoder) -> None:
        """Keep the first ``auto_probe_images`` images and their token relations under the initial model."""
        self.probe_images = imgs[: self.auto_probe_images].detach().clone()
        self.last_relations = self._relations(model)

    def _relations(self, model: PatchEncoder) -> Tensor:
        assert self.probe_images is not None
        return token_relations(self.features(self.probe_images, model), self.relation_temperature)

    def relation_drift(self, model: PatchEncoder) -> Tensor:
        """KL between the probe batch's token relations now and at the previous call; remembers the new ones."""
        if self.probe_images is None or self.last_relations is None:
            raise RuntimeError("relation_drift needs set_probe() first (start_epoch='auto')")
        relations = self._relations(model)
        drift = relation_kl(relations, self.last_relations.to(relations.device))
        self.last_relations = relations
        return drift

    def settle(self, drift: float, epoch: int) -> bool:
        """After ``epoch`` with the given drift: decide (once) to switch at ``epoch + 1``. True if it did."""
        if not self.auto or self.switch_epoch is not None:
            return False
        self.quiet_epochs = self.quiet_epochs + 1 if drift < self.auto_threshold else 0
        if self.quiet_epochs >= self.auto_patience and epoch + 1 >= self.auto_min_epoch:
            self.switch_epoch = epoch + 1
            return True
        return False

    def get_extra_state(self) -> dict[str, Any]:
        return {"switch_epoch": self.switch_epoch, "quiet_epochs": self.quiet_epochs,
                "probe_images": self.probe_images, "last_relations": self.last_relations}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.switch_epoch, self.quiet_epochs = state.get("switch_epoch"), state.get("quiet_epochs", 0)
        self.probe_images, self.last_relations = state.get("probe_images"), state.get("last_relations")

    def _apply(self, fn: Any, recurse: bool = True) -> SelfGuidedMasking:
        # Moves the "auto" tensors with the module (``.to(device)``) like buffers; they are not buffers
        # because their shapes are unknown until the first batch.
        super()._apply(fn, recurse)
        if self.probe_images is not None:
            self.probe_images = fn(self.probe_images)
        if self.last_relations is not None:
            self.last_relations = fn(self.last_relations)
        return self
