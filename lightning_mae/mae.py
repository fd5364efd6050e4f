"""Masked autoencoder with a ViT backbone (He et al., 2022), on timm blocks.

Read top to bottom: patchify -> encoder over the visible tokens -> decoder over all tokens -> loss on
the masked patches. Which patches are visible is decided outside, by a permutation ``ids_shuffle``
(visible first, see ``masking.py``): that is the only seam a masking strategy needs. The encoder's
layers come from ``vit_stem``, from which the downstream ``ViTEncoder`` is built too.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import Tensor, nn


def sincos_pos_embed(embed_dim: int, grid_size: int, cls_token: bool = True) -> Tensor:
    """Fixed 2-D sine-cosine positional embedding, ``[(1 +) grid_size**2, embed_dim]``."""
    if embed_dim % 4:
        raise ValueError(f"embed_dim={embed_dim} must be divisible by 4 for the 2-D sin-cos embedding")
    coords = np.arange(grid_size, dtype=np.float64)
    grid_w, grid_h = np.meshgrid(coords, coords)  # w varies fastest, matching patch order
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4.0))

    def embed_1d(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([embed_1d(grid_w), embed_1d(grid_h)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return torch.from_numpy(emb).float()


class Attention(TimmAttention):
    """timm's multi-head self-attention (same parameters, attributes and function), computed in
    bf16/fp16 on CPU as ``softmax(q k^T * scale) v`` with two batched matrix products.

    At MAE sizes (50 or 197 tokens, head dim 64 or 32) PyTorch's CPU flash-attention kernel is slow
    to train through in bf16: its backward takes 3-4x as long as the explicit form's (about an eighth
    of a ViT-B/16 step, see ``python -m benchmarks.mae_speed --reference ... --profile 2``). In fp32 on
    CPU, and on GPUs and other accelerators, the fused kernel (``F.scaled_dot_product_attention``)
    runs, as in timm: there it is the faster one.
    """

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if x.device.type != "cpu" or attn_mask is not None or is_causal or self.gate is not None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if q.dtype == torch.float32:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            x = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
        x = x.transpose(1, 2).reshape(b, n, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(x)))


_layer_norm = partial(nn.LayerNorm, eps=1e-6)


def vit_blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path_rate: float = 0.0,
               attn_layer: type[nn.Module] = Attention) -> nn.ModuleList:
    """``depth`` pre-norm transformer blocks; stochastic depth rises linearly over them up to ``drop_path_rate``."""
    rates = torch.linspace(0, drop_path_rate, depth).tolist()
    return nn.ModuleList(
        Block(dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=rate, norm_layer=_layer_norm, attn_layer=attn_layer)
        for rate in rates
    )


class ViTStem(NamedTuple):
    """The encoder half of a ViT: what the MAE and the downstream ``ViTEncoder`` store under these names."""

    patch_embed: PatchEmbed
    cls_token: nn.Parameter
    pos_embed: Tensor  # [1, 1 + N, D] 2-D sin-cos, cls position first (MAE: a fixed buffer; ViTEncoder: trained)
    blocks: nn.ModuleList
    norm: nn.LayerNorm


def vit_stem(img_size: int, patch_size: int, in_chans: int, embed_dim: int, depth: int, num_heads: int,
             mlp_ratio: float, drop_path_rate: float = 0.0, strict_img_size: bool = True,
             attn_layer: type[nn.Module] = Attention) -> ViTStem:
    """The encoder's layers, freshly built (``init_mae_weights`` initialises them with the rest of a model)."""
    if img_size % patch_size:
        raise ValueError(f"patch_size={patch_size} does not divide img_size={img_size}")
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
    return ViTStem(
        PatchEmbed(img_size, patch_size, in_chans, embed_dim, strict_img_size=strict_img_size),
        nn.Parameter(torch.zeros(1, 1, embed_dim)),
        sincos_pos_embed(embed_dim, img_size // patch_size)[None],
        vit_blocks(embed_dim, depth, num_heads, mlp_ratio, drop_path_rate, attn_layer),
        _layer_norm(embed_dim),
    )


def prepend_cls(x: Tensor, cls_token: Tensor, pos_embed: Tensor) -> Tensor:
    """``[B, N, D]`` patch tokens -> ``[B, 1 + N, D]``, the cls token (plus its position ``pos_embed[:, :1]``) first."""
    cls = (cls_token + pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    return torch.cat([cls, x], dim=1)


class MAEOutput(NamedTuple):
    loss: Tensor  # mean squared error over the masked patches
    pred: Tensor  # [B, N, p*p*C] predicted pixels (normalised per patch if norm_pix_loss)
    mask: Tensor  # [B, N], 1 = masked
    latent: Tensor  # [B, 1 + len_keep, D] encoder output, cls token first


class MaskedAutoencoderViT(nn.Module):
    """MAE with a ViT encoder and a light ViT decoder. Defaults are ViT-B/16 (see ``PRESETS``)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        # Constructor arguments, stored in checkpoints so an encoder can be rebuilt from one file.
        self.config = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
            decoder_num_heads=decoder_num_heads, mlp_ratio=mlp_ratio, norm_pix_loss=norm_pix_loss,
        )
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.depth, self.decoder_depth = depth, decoder_depth
        self.norm_pix_loss = norm_pix_loss
        grid = img_size // patch_size
        self.num_patches = grid * grid

        self.patch_embed, self.cls_token, pos_embed, self.blocks, self.norm = vit_stem(
            img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio
        )
        self.register_buffer("pos_embed", pos_embed)

        if decoder_embed_dim % decoder_num_heads:
            raise ValueError(
                f"decoder_embed_dim={decoder_embed_dim} is not divisible by decoder_num_heads={decoder_num_heads}"
            )
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(decoder_embed_dim, grid)[None])
        self.decoder_blocks = vit_blocks(decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio)
        self.decoder_norm = _layer_norm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        init_mae_weights(self)

    # --- pixels <-> patches -------------------------------------------------------------------
    def patchify(self, imgs: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, N, p*p*C]`` in (row, col, channel) order per patch."""
        p, c = self.patch_size, self.in_chans
        b, _, h, w = imgs.shape
        x = imgs.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: Tensor) -> Tensor:
        p, c = self.patch_size, self.in_chans
        g = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    # --- encoder --------------------------------------------------------------------------------
    def _embed(self, imgs: Tensor) -> Tensor:
        if imgs.shape[1:] != (self.in_chans, self.img_size, self.img_size):
            raise ValueError(
                f"images of shape {tuple(imgs.shape[1:])} do not fit the model "
                f"(in_chans={self.in_chans}, img_size={self.img_size})"
            )
        return self.patch_embed(imgs) + self.pos_embed[:, 1:]

    def encoder_input(self, imgs: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """Tokens entering the first encoder block: cls + all patches, or only ``ids_keep`` ``[B, k]``."""
        x = self._embed(imgs)
        if ids_keep is not None:
            x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        return prepend_cls(x, self.cls_token, self.pos_embed)

    def forward_encoder(self, imgs: Tensor, ids_shuffle: Tensor, len_keep: int) -> tuple[Tensor, Tensor]:
        """Encode the first ``len_keep`` patches of ``ids_shuffle``. Returns (latent, mask)."""
        ids_keep = ids_shuffle[:, :len_keep]
        x = self.encoder_input(imgs, ids_keep)
        for blk in self.blocks:
            x = blk(x)
        mask = torch.ones(imgs.shape[0], self.num_patches, device=imgs.device)
        mask.scatter_(1, ids_keep, 0.0)
        return self.norm(x), mask

    def forward_features(self, imgs: Tensor) -> Tensor:
        """Unmasked encoder output ``[B, 1 + N, D]`` (cls first), for probing and evaluation."""
        x = self.encoder_input(imgs)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    @torch.no_grad()
    def patch_features(self, imgs: Tensor, layer: int) -> Tensor:
        """L2-normalised patch embeddings ``[B, N, D]`` after the first ``layer`` blocks of the full image.

        Only ``layer`` blocks run: this is the extra cost of self-guided masking.
        """
        if not 0 <= layer <= self.depth:
            raise ValueError(f"source_layer={layer} is outside [0, depth={self.depth}]")
        x = self.encoder_input(imgs)
        for blk in self.blocks[:layer]:
            x = blk(x)
        return nn.functional.normalize(x[:, 1:].float(), dim=-1)

    @torch.no_grad()
    def features_with_patch_features(self, imgs: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """``(forward_features(imgs), patch_features(imgs, layer))`` from one no-grad pass: the training
        step's online probe and its informed masks share the first ``layer`` blocks (same values)."""
        if not 0 <= layer <= self.depth:
            raise ValueError(f"source_layer={layer} is outside [0, depth={self.depth}]")
        x = self.encoder_input(imgs)
        z = x
        for i, blk in enumerate(self.blocks):
            if i == layer:
                z = x
            x = blk(x)
        if layer == self.depth:
            z = x
        return self.norm(x), nn.functional.normalize(z[:, 1:].float(), dim=-1)

    @torch.no_grad()
    def decoder_patch_features(self, imgs: Tensor, layer: int, encoded: Tensor | None = None) -> Tensor:
        """L2-normalised decoder patch embeddings ``[B, N, D_dec]`` of the full, unmasked image after the first
        ``layer`` decoder blocks: the whole encoder on all patches (``forward_features``), ``decoder_embed``
        plus the decoder position embedding (every patch visible, no mask token), then ``layer`` blocks.
        ``encoded``: that encoder output, when the caller has it already (no second encoder pass).
        """
        if not 0 <= layer <= len(self.decoder_blocks):
            raise ValueError(f"source_layer={layer} is outside [0, decoder_depth={len(self.decoder_blocks)}]")
        if encoded is None:
            encoded = self.forward_features(imgs)
        x = self.decoder_embed(encoded) + self.decoder_pos_embed
        for blk in self.decoder_blocks[:layer]:
            x = blk(x)
        return nn.functional.normalize(x[:, 1:].float(), dim=-1)

    # --- decoder and loss -----------------------------------------------------------------------
    def decoder_input(self, latent: Tensor, ids_shuffle: Tensor) -> Tensor:
        """Tokens entering the first decoder block: cls + all N patches in image order (mask tokens in place)."""
        x = self.decoder_embed(latent)
        n_mask = self.num_patches + 1 - x.shape[1]
        x_ = torch.cat([x[:, 1:], self.mask_token.expand(x.shape[0], n_mask, -1)], dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x_ = torch.gather(x_, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        return torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed

    def forward_decoder(self, latent: Tensor, ids_shuffle: Tensor) -> Tensor:
        x = self.decoder_input(latent, ids_shuffle)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def target(self, imgs: Tensor) -> Tensor:
        """Per-patch regression target (normalised by each patch's mean/var if ``norm_pix_loss``)."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        loss = ((pred.float() - self.target(imgs).float()) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: Tensor, ids_shuffle: Tensor, len_keep: int) -> MAEOutput:
        latent, mask = self.forward_encoder(imgs, ids_shuffle, len_keep)
        pred = self.forward_decoder(latent, ids_shuffle)
        return MAEOutput(self.forward_loss(imgs, pred, mask), pred, mask, latent)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "mask_token"}


def init_mae_weights(model: nn.Module) -> None:
    """The MAE reference initialisation, for any module with a ``patch_embed``: the patch projection
    like a Linear layer, ``cls_token``/``mask_token`` N(0, 0.02), Linear xavier-uniform with zero bias,
    LayerNorm identity."""
    w = model.patch_embed.proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    for name in ("cls_token", "mask_token"):
        if isinstance(getattr(model, name, None), nn.Parameter):
            nn.init.normal_(getattr(model, name), std=0.02)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# Presets as data: encoder/decoder sizes of the MAE paper, plus tiny/small encoders for quick runs.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=128,
                 decoder_depth=4, decoder_num_heads=4),
    "small": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=256,
                  decoder_depth=4, decoder_num_heads=8),
    "base": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=512,
                 decoder_depth=8, decoder_num_heads=16),
    "large": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, decoder_embed_dim=512,
                  decoder_depth=8, decoder_num_heads=16),
    "huge": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16, decoder_embed_dim=512,
                 decoder_depth=8, decoder_num_heads=16),
}


def mae_vit(preset: str, **overrides: object) -> MaskedAutoencoderViT:
    """Build a preset (``tiny|small|base|large|huge``), overriding any constructor argument."""
    if preset not in PRESETS:
        raise ValueError(f"unknown MAE preset {preset!r}; choose one of {sorted(PRESETS)}")
    return MaskedAutoencoderViT(**{**PRESETS[preset], **overrides})  # type: ignore[arg-type]
