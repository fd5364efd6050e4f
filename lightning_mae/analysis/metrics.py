"""The paper's analysis metrics of what an MAE learns (SG-MAE §3 and §5.4), as plain functions.

Every metric takes tensors (or a model and a batch) and returns tensors; nothing here needs a Trainer.

- Patch-embedding geometry: ``feature_variance`` (σF) and ``similarity_variance`` (σs) of Table 1, the
  Normalized-Cut ``bipartition_gap`` µintra − µinter on cosine edges (Fig. 3a, V a), ``token_relations`` /
  ``relation_kl`` of Fig. 3b, ``fourier_amplitude`` of Fig. 7b.
- Attention: ``attention_maps`` recomputes a timm ``Block``'s attention probabilities;
  ``attention_bipartition_gap`` (µintra − µinter on attention edges, Fig. 3a, V b), ``attention_distance``
  and ``attention_nmi`` (Fig. 6, 7a), ``exploitation_rates`` of the decoder (Fig. 4).
- Model passes: ``encoder_trace`` / ``decoder_trace`` re-run ``MaskedAutoencoderViT``'s encoder and
  decoder block by block (tests check they reproduce the model's own outputs), and ``model_report``
  gathers every metric of one model on one probe batch as flat ``{"family/layer": value}`` scalars.

Layers are named ``enc{i}`` (the patch tokens after encoder block ``i``, 1-based, as ``source_layer``)
and ``dec{i}`` (after decoder block ``i``).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_mae.masking import ncut_bipartition, ncut_split
from lightning_mae.relations import relation_kl, token_relations  # noqa: F401  (re-exported)


# --- patch-embedding geometry -------------------------------------------------------------------
def similarity_matrix(z: Tensor) -> Tensor:
    """Cosine similarities ``[B, N, N]`` of patch embeddings ``z`` ``[B, N, D]``."""
    z = F.normalize(z.float(), dim=-1)
    return z @ z.transpose(1, 2)


def feature_variance(z: Tensor) -> Tensor:
    """σF per image ``[B]``: mean squared distance of the L2-normalised embeddings to their mean.

    Normalised first so that models of different feature scales compare (it equals ``1 - |mean|^2``):
    0 when all patches share one direction, 1 - 1/K for K equally populated orthogonal clusters.
    """
    z = F.normalize(z.float(), dim=-1)
    return (z - z.mean(dim=1, keepdim=True)).pow(2).sum(-1).mean(-1)


def similarity_variance(z: Tensor) -> Tensor:
    """σs per image ``[B]``: variance of all N x N entries of the cosine-similarity matrix (diagonal included).

    High when patches split into groups that are similar within and dissimilar across.
    """
    return similarity_matrix(z).flatten(1).var(dim=1, unbiased=False)


def bipartition_gap(
    z: Tensor, clusters: Tensor | None = None, tau: float | Literal["mean"] = "mean", eps: float = 1e-5,
) -> Tensor:
    """µintra − µinter per image ``[B]`` on the cosine-similarity graph of ``z`` ``[B, N, D]``.

    µintra is the mean edge weight (cosine similarity) over pairs of distinct patches in the same
    cluster, µinter over pairs in different clusters. ``clusters`` (bool ``[B, N]``) defaults to
    ``ncut_bipartition(z, tau, eps)``, the partition self-guided masking uses. An image whose
    partition leaves one side empty has no inter-cluster edge and gets NaN.
    """
    sim = similarity_matrix(z)
    if clusters is None:
        clusters = ncut_bipartition(F.normalize(z.float(), dim=-1), tau, eps)
    return _gap(sim, clusters)


def _gap(edges: Tensor, clusters: Tensor) -> Tensor:
    """Mean edge weight within the clusters minus across them, per image, over pairs of distinct patches."""
    same = clusters[:, :, None] == clusters[:, None, :]
    intra = same & ~torch.eye(edges.shape[-1], dtype=torch.bool, device=edges.device)
    inter = ~same

    def mean_over(pairs: Tensor) -> Tensor:
        return (edges * pairs).sum((1, 2)) / pairs.sum((1, 2))  # 0/0 = NaN for an empty set of pairs

    return mean_over(intra) - mean_over(inter)


def grid_size(num_patches: int) -> int:
    g = math.isqrt(num_patches)
    if g * g != num_patches:
        raise ValueError(f"{num_patches} patch tokens do not form a square grid")
    return g


def fourier_amplitude(z: Tensor, eps: float = 1e-6) -> Tensor:
    """Relative log amplitude of the 2-D Fourier transform of a patch-feature map (Park & Kim, 2022).

    ``z`` ``[B, N, D]`` is read as D maps on the ``g x g`` patch grid. Returns ``[g // 2 + 1]``: the log
    amplitude ``log(|FFT| + eps)`` averaged over images and channels, along the diagonal frequencies
    ``(2 pi k / g, 2 pi k / g)`` for ``k = 0 .. g // 2`` (``k = g / 2`` is the highest, pi, for even
    ``g``), minus its value at frequency 0. The last entry is the high-frequency amplitude of Fig. 7b.
    """
    b, n, d = z.shape
    g = grid_size(n)
    amplitude = torch.fft.fft2(z.float().transpose(1, 2).reshape(b, d, g, g)).abs()
    k = torch.arange(g // 2 + 1, device=z.device)
    log_amp = (amplitude[..., k, k] + eps).log().mean(dim=(0, 1))
    return log_amp - log_amp[0]


# --- attention ----------------------------------------------------------------------------------
def attention_maps(block: nn.Module, x: Tensor) -> Tensor:
    """Attention probabilities ``[B, H, T, T]`` (float32) of a timm ``Block`` for its input ``x`` ``[B, T, D]``.

    Recomputes ``softmax(q k^T * scale)`` from the block's own ``norm1``, ``attn.qkv``,
    ``attn.q_norm``/``attn.k_norm`` and ``attn.scale``: the fused attention kernel never materialises it.
    """
    attn = block.attn
    qkv = attn.qkv(block.norm1(x))
    b, t, _ = qkv.shape
    head_dim = getattr(attn, "head_dim", qkv.shape[-1] // (3 * attn.num_heads))
    q, k, _ = qkv.reshape(b, t, 3, attn.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return torch.softmax((q.float() * attn.scale) @ k.float().transpose(-2, -1), dim=-1)


def patch_attention(attn: Tensor, num_prefix_tokens: int = 1) -> Tensor:
    """Patch-to-patch attention: drop the cls query and key and renormalise each row over the patches."""
    a = attn[..., num_prefix_tokens:, num_prefix_tokens:]
    return a / a.sum(-1, keepdim=True).clamp_min(1e-12)


def attention_edges(attn: Tensor, num_prefix_tokens: int = 1) -> Tensor:
    """Symmetric patch-to-patch edge weights ``[B, N, N]`` of one layer's attention ``[B, H, T, T]``:
    ``patch_attention`` (cls dropped, rows renormalised over the patches) averaged over heads, then
    ``(A + A^T) / 2``. Uniform attention gives 1/N everywhere."""
    a = patch_attention(attn.float(), num_prefix_tokens).mean(1)
    return (a + a.transpose(1, 2)) / 2


def attention_bipartition_gap(
    attn: Tensor, clusters: Tensor | None = None, eps: float = 1e-5, num_prefix_tokens: int = 1,
) -> Tensor:
    """µintra − µinter per image ``[B]`` on the attention graph of one layer (the paper's "attention score"
    variant of Fig. 3a / Fig. V b; ``bipartition_gap`` is the cosine one).

    Edges are ``attention_edges(attn)``: the layer's attention probabilities between patch tokens, averaged
    over heads and symmetrised, so they are in units of attention probability (1/N for uniform attention).
    ``clusters`` (bool ``[B, N]``) defaults to the Normalized Cut of that attention graph itself, each image
    thresholded at its mean edge weight (``masking.ncut_split(..., tau="mean")``). NaN if one side is empty.
    """
    edges = attention_edges(attn, num_prefix_tokens)
    if clusters is None:
        clusters = ncut_split(edges, "mean", eps)
    return _gap(edges, clusters)


def patch_distances(grid: int, patch_size: int = 1, device: torch.device | str | None = None) -> Tensor:
    """Euclidean distances ``[N, N]`` in pixels between the centres of the patches of a ``grid x grid`` image."""
    rows, cols = torch.meshgrid(torch.arange(grid, device=device), torch.arange(grid, device=device), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=-1).float() * patch_size
    return torch.cdist(centres, centres)


def attention_distance(attn: Tensor, patch_size: int = 1) -> Tensor:
    """Mean attention distance in pixels: ``sum_k a_qk * |pos_q - pos_k|``, averaged over images, heads
    and queries. ``attn`` ``[B, H, N, N]`` is patch-to-patch attention with rows summing to 1
    (``patch_attention``); 0 for the identity, the mean pairwise patch distance for uniform attention."""
    dist = patch_distances(grid_size(attn.shape[-1]), patch_size, attn.device)
    return (attn.float() * dist).sum(-1).mean()


def attention_nmi(attn: Tensor) -> Tensor:
    """Normalised mutual information between query and key positions, averaged over images and heads.

    Each ``[N, N]`` map of ``attn`` ``[B, H, N, N]`` (rows summing to 1) is read as ``p(k | q)`` with uniform
    queries, ``p(q) = 1/N``. NMI = I(Q; K) / sqrt(H(Q) H(K)): 1 for the identity (each query attends to
    itself only), 0 when every query attends the same way (e.g. uniformly).
    """
    a = attn.float()
    n = a.shape[-1]
    p_k = a.mean(-2)  # [B, H, N] key marginal
    h_k = -torch.xlogy(p_k, p_k).sum(-1)
    # I(Q; K) = H(K) - H(K | Q), H(K | Q) = mean over queries of each row's entropy.
    mi = h_k + torch.xlogy(a, a).sum(-1).mean(-1)
    denom = (math.log(n) * h_k).sqrt()
    return torch.where(denom > 1e-12, mi / denom.clamp_min(1e-12), torch.zeros_like(mi)).mean()


class Exploitation(NamedTuple):
    visible: Tensor  # the masked queries' attention on visible tokens (per token, or their raw share)
    mask: Tensor  # ... on mask tokens
    cls: Tensor  # ... on the cls token


ExploitationNorm = Literal["per_token", "raw"]


def exploitation_rates(attn: Tensor, mask: Tensor, normalization: ExploitationNorm = "per_token") -> Exploitation:
    """How much the decoder's queries at masked positions attend to visible tokens, mask tokens and cls.

    ``attn`` ``[B, H, 1 + N, 1 + N]`` is a decoder layer's attention in the decoder's token order (cls,
    then the N patches in image order); ``mask`` ``[B, N]`` is 1 at masked patches. For every query at a
    masked position, its attention mass is summed over the visible patches' keys, the mask tokens' keys
    and the cls key (the three shares sum to 1).

    ``normalization="per_token"`` (default) divides each share by the number of keys of that kind in the
    image (visible patches, masked patches, 1 for cls): the attention one token of that kind gets, so
    uniform attention gives equal rates (``1 / (1 + N)`` each) and the rates compare kinds of tokens, not
    their counts; this is what lets mask tokens overtake visible ones (the paper's Fig. 4). ``"raw"``
    keeps the shares: under uniform attention they are the key counts over 1 + N, so at 75% masking
    the mask tokens start with three times the visible tokens' share. Either is averaged over the masked
    queries, heads and images (an image without a visible or masked patch counts 0 for that kind).
    """
    if normalization not in ("per_token", "raw"):
        raise ValueError(f"normalization must be 'per_token' or 'raw', got {normalization!r}")
    a = attn.float().mean(1)  # [B, T, T], heads averaged
    masked = mask.bool()
    no_cls = torch.zeros_like(masked[:, :1])
    key_mask = torch.cat([no_cls, masked], dim=1).to(a.dtype)  # [B, T]
    key_visible = torch.cat([no_cls, ~masked], dim=1).to(a.dtype)
    to_mask = (a * key_mask[:, None]).sum(-1)  # [B, T] per query
    to_visible = (a * key_visible[:, None]).sum(-1)
    to_cls = a[..., 0]
    if normalization == "per_token":  # per image: divide by that image's count of keys of each kind
        to_visible = to_visible / key_visible.sum(1, keepdim=True).clamp_min(1.0)
        to_mask = to_mask / key_mask.sum(1, keepdim=True).clamp_min(1.0)
    queries = key_mask  # the masked positions
    n_queries = queries.sum()
    return Exploitation(*((r * queries).sum() / n_queries for r in (to_visible, to_mask, to_cls)))


# --- model passes -------------------------------------------------------------------------------
class Trace(NamedTuple):
    hidden: list[Tensor]  # hidden[i] = tokens after block i; hidden[0] = the input of the first block
    attn: list[Tensor]  # attn[i] = attention probabilities of block i + 1 (empty unless asked)
    out: Tensor  # the pass's output: the encoder's latent (after ``norm``) or the decoder's ``pred``


def run_blocks(blocks: nn.ModuleList, x: Tensor, attention: bool = False) -> tuple[list[Tensor], list[Tensor]]:
    """Run ``blocks`` one after the other, keeping every hidden state (and each block's attention)."""
    hidden, attn = [x], []
    for blk in blocks:
        if attention:
            attn.append(attention_maps(blk, x))
        x = blk(x)
        hidden.append(x)
    return hidden, attn


@torch.no_grad()
def encoder_trace(model: nn.Module, imgs: Tensor, ids_keep: Tensor | None = None, attention: bool = False) -> Trace:
    """``MaskedAutoencoderViT``'s encoder, block by block: all patches (as ``forward_features``) or only
    ``ids_keep`` ``[B, len_keep]`` (as ``forward_encoder``). Token 0 is the cls token."""
    hidden, attn = run_blocks(model.blocks, model.encoder_input(imgs, ids_keep), attention)
    return Trace(hidden, attn, model.norm(hidden[-1]))


@torch.no_grad()
def decoder_trace(model: nn.Module, latent: Tensor, ids_shuffle: Tensor, attention: bool = False) -> Trace:
    """``MaskedAutoencoderViT``'s decoder, block by block, on the encoder's ``latent`` ``[B, 1 + len_keep, D]``.

    Hidden states hold cls + all N patches in image order (visible tokens and mask tokens in place).
    """
    hidden, attn = run_blocks(model.decoder_blocks, model.decoder_input(latent, ids_shuffle), attention)
    return Trace(hidden, attn, model.decoder_pred(model.decoder_norm(hidden[-1]))[:, 1:])


@torch.no_grad()
def encoder_layer_tokens(model: nn.Module, imgs: Tensor) -> list[Tensor]:
    """Patch tokens ``[B, N, D]`` after every encoder block of the full image (``depth`` entries), one pass."""
    return [h[:, 1:] for h in encoder_trace(model, imgs).hidden[1:]]


def layer_relations(tokens: list[Tensor], temperature: float = 0.1) -> list[Tensor]:
    """``token_relations`` of every layer's patch tokens."""
    return [token_relations(z, temperature) for z in tokens]


def relation_kl_per_layer(reference: list[Tensor], current: list[Tensor]) -> list[Tensor]:
    """KL(reference || current) of the token relations, per layer (same images, same layers)."""
    if len(reference) != len(current):
        raise ValueError(f"relations of {len(reference)} and {len(current)} layers cannot be compared")
    return [relation_kl(p, q) for p, q in zip(reference, current)]


def model_relation_kl(reference: nn.Module, model: nn.Module, imgs: Tensor, temperature: float = 0.1) -> list[Tensor]:
    """Per encoder layer, KL(reference's token relations || model's) on the same images (Fig. 3b)."""
    return relation_kl_per_layer(layer_relations(encoder_layer_tokens(reference, imgs), temperature),
                                 layer_relations(encoder_layer_tokens(model, imgs), temperature))


def mask_from_ids(ids_shuffle: Tensor, len_keep: int) -> Tensor:
    """``[B, N]`` float mask, 1 = masked, from a visible-first permutation."""
    return torch.ones_like(ids_shuffle, dtype=torch.float).scatter_(1, ids_shuffle[:, :len_keep], 0.0)


class Report(NamedTuple):
    scalars: dict[str, float]  # "family/layer" -> value, see ``model_report``
    relations: list[Tensor]  # token relations [B, N, N] of every encoder layer, for KL between models
    encoder: Trace  # full-image encoder pass (with attention maps when asked)
    decoder: Trace  # masked decoder pass (with attention maps when asked)


@torch.no_grad()
def model_report(
    model: nn.Module, imgs: Tensor, ids_shuffle: Tensor, len_keep: int, temperature: float = 0.1,
    tau: float | Literal["mean"] = "mean", eps: float = 1e-5, attention: bool = True,
    exploitation: ExploitationNorm = "per_token",
) -> Report:
    """Every metric of one ``MaskedAutoencoderViT`` on one probe batch.

    Encoder metrics use the full (unmasked) images; decoder metrics use the masked pass given by
    ``ids_shuffle``/``len_keep`` (a fixed mask makes checks comparable). Scalars, per layer:

    - ``sigma_f``, ``sigma_s``: Table 1 (encoder and decoder patch tokens);
    - ``gap``: µintra − µinter of the NCut bi-partition, cosine edges (encoder);
    - ``gap_attn``: the same on the attention graph of that block (``attention_bipartition_gap``; encoder,
      if ``attention``);
    - ``fourier_high``: relative log amplitude at the highest frequency (encoder);
    - ``attn_dist`` (pixels), ``attn_nmi``: patch-to-patch attention (encoder and decoder), if ``attention``;
    - ``exploit_visible``, ``exploit_mask``, ``exploit_cls``: decoder, if ``attention``;
      ``exploitation_rates`` with ``normalization=exploitation`` (per token by default);
    - ``mask_var``: σF of the mask tokens' embeddings (decoder, Fig. 7c).
    """
    imgs = imgs.to(next(model.parameters()).dtype)
    enc = encoder_trace(model, imgs, attention=attention)
    latent = encoder_trace(model, imgs, ids_shuffle[:, :len_keep]).out
    dec = decoder_trace(model, latent, ids_shuffle, attention=attention)
    masked_ids = ids_shuffle[:, len_keep:]
    patch = model.patch_size
    out: dict[str, Tensor] = {}
    tokens = [h[:, 1:].float() for h in enc.hidden[1:]]
    for i, z in enumerate(tokens, 1):
        out[f"sigma_f/enc{i}"] = feature_variance(z).mean()
        out[f"sigma_s/enc{i}"] = similarity_variance(z).mean()
        out[f"gap/enc{i}"] = bipartition_gap(z, tau=tau, eps=eps).nanmean()
        out[f"fourier_high/enc{i}"] = fourier_amplitude(z)[-1]
    for i, h in enumerate(dec.hidden[1:], 1):
        z = h[:, 1:].float()
        out[f"sigma_f/dec{i}"] = feature_variance(z).mean()
        out[f"sigma_s/dec{i}"] = similarity_variance(z).mean()
        if masked_ids.shape[1] > 0:
            mask_tokens = z.gather(1, masked_ids[..., None].expand(-1, -1, z.shape[-1]))
            out[f"mask_var/dec{i}"] = feature_variance(mask_tokens).mean()
    if attention:
        for name, trace in (("enc", enc), ("dec", dec)):
            for i, a in enumerate(trace.attn, 1):
                pa = patch_attention(a)
                out[f"attn_dist/{name}{i}"] = attention_distance(pa, patch)
                out[f"attn_nmi/{name}{i}"] = attention_nmi(pa)
        for i, a in enumerate(enc.attn, 1):  # block i's attention, beside gap/enc{i} (block i's output)
            out[f"gap_attn/enc{i}"] = attention_bipartition_gap(a, eps=eps).nanmean()
        mask = mask_from_ids(ids_shuffle, len_keep)
        for i, a in enumerate(dec.attn, 1):
            rates = exploitation_rates(a, mask, exploitation)
            out[f"exploit_visible/dec{i}"], out[f"exploit_mask/dec{i}"], out[f"exploit_cls/dec{i}"] = rates
    scalars = dict(zip(out, torch.stack(list(out.values())).tolist()))  # one device sync, not one per metric
    return Report(scalars, layer_relations(tokens, temperature), enc, dec)
