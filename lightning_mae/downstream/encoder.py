"""The ViT encoder of a masked autoencoder, for downstream use (probe, fine-tune, dense tasks).

Built by the same ``vit_stem`` as ``MaskedAutoencoderViT``'s encoder half, under the same parameter
names (those of the official MAE checkpoints: ``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.N.*``, ``norm``), plus what downstream recipes need: stochastic depth, a global-pool option
with its own ``fc_norm``, positional embeddings interpolated to other input sizes, and per-block
feature maps for dense heads.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from torch import Tensor, nn

from lightning_mae.mae import _layer_norm, init_mae_weights, prepend_cls, vit_stem

# Constructor arguments of MaskedAutoencoderViT that describe the encoder (the rest is the decoder's).
ENCODER_KEYS = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")


def resize_grid(tokens: Tensor, grid: int, size: tuple[int, int]) -> Tensor:
    """``[1, grid*grid, D]`` per-patch vectors of a square grid -> ``[1, h*w, D]`` for an ``h x w`` grid (bicubic)."""
    x = tokens.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(1, size[0] * size[1], -1)


class ViTEncoder(nn.Module):
    """ViT encoder built like MAE's. Defaults are ViT-B/16.

    Args:
        img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio: the architecture
            (as in ``MaskedAutoencoderViT``; a checkpoint's ``mae_config`` fills them).
        drop_path_rate: stochastic depth, rising linearly over the blocks up to this value.
        global_pool: ``"token"`` = the cls token after the final norm (MAE's linear probe);
            ``"avg"`` = mean of the patch tokens followed by a fresh ``fc_norm`` (MAE's fine-tune;
            there is no final ``norm`` then, as in the official code).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        global_pool: Literal["token", "avg"] = "token",
    ) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.config = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                           depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
        self.patch_size, self.embed_dim, self.depth, self.global_pool = patch_size, embed_dim, depth, global_pool
        self.grid = img_size // patch_size
        # Not strict about the input size: detection/segmentation feed other sizes (pos_embed is resized).
        # timm's own attention in the blocks (MAE pretraining swaps in an explicit bf16 CPU form for speed).
        self.patch_embed, self.cls_token, pos_embed, self.blocks, norm = vit_stem(
            img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, drop_path_rate,
            strict_img_size=False, attn_layer=TimmAttention,
        )
        # A parameter here (fine-tuning trains it, as the official code does); initialised to MAE's sin-cos.
        self.pos_embed = nn.Parameter(pos_embed)
        # With global pooling the final norm is replaced by ``fc_norm`` after pooling (as in the official
        # code); an unused ``norm`` would also break DDP, which expects every parameter to get a gradient.
        self.norm = norm if global_pool == "token" else nn.Identity()
        self.fc_norm = _layer_norm(embed_dim) if global_pool == "avg" else None
        # Same initialisation as the MAE encoder, so a randomly initialised encoder is a fair baseline.
        init_mae_weights(self)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}

    def _pos_embed(self, h: int, w: int) -> Tensor:
        """Patch positional embeddings for an ``h x w`` grid (bicubic resize of the trained grid)."""
        pos = self.pos_embed[:, 1:]
        if (h, w) == (self.grid, self.grid):
            return pos
        return resize_grid(pos, self.grid, (h, w))

    def _tokens(self, imgs: Tensor) -> tuple[Tensor, int, int]:
        if imgs.shape[-2] % self.patch_size or imgs.shape[-1] % self.patch_size:
            raise ValueError(f"image size {tuple(imgs.shape[-2:])} is not a multiple of patch_size={self.patch_size}")
        h, w = imgs.shape[-2] // self.patch_size, imgs.shape[-1] // self.patch_size
        x = self.patch_embed(imgs) + self._pos_embed(h, w)
        return prepend_cls(x, self.cls_token, self.pos_embed), h, w

    def forward_features(self, imgs: Tensor) -> Tensor:
        """All tokens after the last block, ``[B, 1 + N, D]`` (final ``norm`` applied for ``token`` pooling)."""
        x, _, _ = self._tokens(imgs)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def pool(self, tokens: Tensor) -> Tensor:
        """The image feature ``[B, D]`` from ``forward_features``' tokens."""
        if self.global_pool == "avg":
            return self.fc_norm(tokens[:, 1:].mean(dim=1))
        return tokens[:, 0]

    def forward(self, imgs: Tensor) -> Tensor:
        return self.pool(self.forward_features(imgs))

    def forward_intermediates(self, imgs: Tensor, indices: list[int]) -> list[Tensor]:
        """Feature maps ``[B, D, h, w]`` after the given blocks (0-based), for dense prediction heads."""
        bad = [i for i in indices if not 0 <= i < self.depth]
        if bad:
            raise ValueError(f"block indices {bad} are outside [0, depth={self.depth})")
        x, h, w = self._tokens(imgs)
        wanted, out = set(indices), {}
        for i, blk in enumerate(self.blocks[: max(indices) + 1]):
            x = blk(x)
            if i in wanted:
                out[i] = x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return [out[i] for i in indices]


def scaled_block_indices(depth: int, reference: tuple[int, ...] = (3, 5, 7, 11), reference_depth: int = 12
                         ) -> list[int]:
    """Blocks ``reference`` of a ``reference_depth``-deep ViT mapped to a ``depth``-deep one (e.g. 24 -> 7,11,15,23)."""
    return [round((i + 1) * depth / reference_depth) - 1 for i in reference]
