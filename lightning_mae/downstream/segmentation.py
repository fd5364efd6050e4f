"""Semantic segmentation with a ViT encoder: multi-scale neck + UperNet head (MAE/BEiT's ADE20K setup).

Features of four blocks (``[3, 5, 7, 11]`` of a 12-block ViT, scaled to the depth) become a pyramid at
strides 4, 8, 16, 32 (x4 and x2 by transposed convolutions, x1, x0.5 by max-pooling); UperNet (pyramid
pooling on the coarsest level, FPN top-down path, fusion) predicts per-pixel classes. Evaluation runs
the model on overlapping crops (sliding window) and averages the logits. mIoU is
``MulticlassJaccardIndex(average="macro", ignore_index=255)`` accumulated over the whole set.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from lightning_mae.downstream.classification import build_encoder
from lightning_mae.downstream.dense import layer_decay_adamw, save_hyperparameters_except_encoder
from lightning_mae.downstream.encoder import ViTEncoder, scaled_block_indices


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class MultiScaleNeck(nn.Module):
    """Four stride-16 ViT maps -> strides 4, 8, 16, 32 (BEiT/MAE segmentation neck)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up4 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, 2), nn.BatchNorm2d(dim), nn.GELU(),
                                 nn.ConvTranspose2d(dim, dim, 2, 2))
        self.up2 = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.down2 = nn.MaxPool2d(2)

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        return [self.up4(maps[0]), self.up2(maps[1]), maps[2], self.down2(maps[3])]


class UperNetHead(nn.Module):
    """UperNet decoder (Xiao et al., 2018): PPM on the coarsest level + FPN, fused at the finest stride."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, pool_scales: tuple[int, ...] = (1, 2, 3, 6),
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_bn_relu(in_channels, channels, 1))
                                 for s in pool_scales)
        self.ppm_bottleneck = conv_bn_relu(in_channels + len(pool_scales) * channels, channels, 3)
        self.lateral = nn.ModuleList(conv_bn_relu(in_channels, channels, 1) for _ in range(3))
        self.fpn = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in range(3))
        self.fuse = conv_bn_relu(4 * channels, channels, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))

    def forward(self, feats: list[Tensor]) -> Tensor:
        top = feats[-1]
        pooled = [F.interpolate(p(top), size=top.shape[-2:], mode="bilinear", align_corners=False) for p in self.ppm]
        levels = [lat(f) for lat, f in zip(self.lateral, feats[:-1])]
        levels.append(self.ppm_bottleneck(torch.cat([top, *pooled], 1)))
        for i in range(len(levels) - 1, 0, -1):  # top-down path
            levels[i - 1] = levels[i - 1] + F.interpolate(levels[i], size=levels[i - 1].shape[-2:], mode="bilinear",
                                                          align_corners=False)
        outs = [conv(level) for conv, level in zip(self.fpn, levels[:-1])] + [levels[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.classifier(self.fuse(torch.cat(outs, 1)))


class ViTUperNet(nn.Module):
    """Encoder -> multi-scale neck -> UperNet (+ an auxiliary FCN head on the third level for training)."""

    def __init__(self, encoder: ViTEncoder, num_classes: int, blocks: list[int] | None = None, channels: int = 512,
                 aux_channels: int = 256) -> None:
        super().__init__()
        self.encoder = encoder
        self.blocks = list(blocks) if blocks is not None else scaled_block_indices(encoder.depth)
        if len(self.blocks) != 4:
            raise ValueError(f"UperNet takes the features of 4 blocks, got blocks={self.blocks}")
        self.neck = MultiScaleNeck(encoder.embed_dim)
        self.head = UperNetHead(encoder.embed_dim, channels, num_classes)
        self.aux_head = nn.Sequential(conv_bn_relu(encoder.embed_dim, aux_channels, 3), nn.Dropout2d(0.1),
                                      nn.Conv2d(aux_channels, num_classes, 1)) if aux_channels else None

    def forward(self, imgs: Tensor) -> tuple[Tensor, Tensor | None]:
        """Logits at the input resolution, and the auxiliary head's logits (training only)."""
        feats = self.neck(self.encoder.forward_intermediates(imgs, self.blocks))
        up = lambda x: F.interpolate(x, size=imgs.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
        aux = up(self.aux_head(feats[2])) if self.aux_head is not None and self.training else None
        return up(self.head(feats)), aux


@torch.no_grad()
def sliding_window_logits(model: nn.Module, img: Tensor, num_classes: int, crop: int, stride: int) -> Tensor:
    """Average of ``model``'s logits over ``crop x crop`` windows every ``stride`` pixels (``[B, K, H, W]``).

    Images smaller than a window are padded (the padding's logits are dropped), as in mmseg's "slide" mode.
    """
    if stride <= 0 or stride > crop:
        raise ValueError(f"stride must be in (0, crop={crop}], got {stride}")
    b, _, h, w = img.shape
    ph, pw = max(crop - h, 0), max(crop - w, 0)
    img = F.pad(img, (0, pw, 0, ph))
    H, W = img.shape[-2:]
    logits = img.new_zeros(b, num_classes, H, W)
    count = img.new_zeros(1, 1, H, W)
    rows = range(0, max(math.ceil((H - crop) / stride), 0) + 1)
    cols = range(0, max(math.ceil((W - crop) / stride), 0) + 1)
    for r in rows:
        for c in cols:
            y0, x0 = min(r * stride, H - crop), min(c * stride, W - crop)
            window = img[..., y0:y0 + crop, x0:x0 + crop]
            out = model(window)
            logits[..., y0:y0 + crop, x0:x0 + crop] += out[0] if isinstance(out, tuple) else out
            count[..., y0:y0 + crop, x0:x0 + crop] += 1
    return (logits / count)[..., :h, :w]


class SemanticSegmentation(pl.LightningModule):
    """UperNet fine-tuning of a pretrained ViT (MAE's ADE20K recipe as defaults: AdamW lr 1e-4,
    layer decay 0.65, wd 0.05, drop path 0.1, 1500 warm-up iterations then linear ("poly 1") decay,
    512 crops, sliding-window evaluation with stride 341, auxiliary loss 0.4).

    Args:
        checkpoint: pretrained weights: our pretraining ``.ckpt`` or an official MAE ``.pth``.
        encoder: the encoder architecture (random init without ``checkpoint``); ``None``: from the checkpoint.
        num_classes: classes (150 for ADE20K); label 255 is ignored.
        blocks: the 4 blocks whose features feed the neck; ``None``: ``[3, 5, 7, 11]`` scaled to the depth.
        img_size: encoder input size (the training crop); the positional embedding is resized to it.
        drop_path: stochastic depth of the encoder (when built from the checkpoint).
        channels: UperNet width.
        aux_channels: width of the auxiliary FCN head (0 = none).
        aux_weight: weight of the auxiliary loss.
        lr, weight_decay, layer_decay, betas: AdamW with layer-wise lr decay (neck and heads at full lr).
        warmup_steps: linear warm-up iterations; then linear decay to 0 at ``max_steps``.
        stride: sliding-window stride at evaluation (windows of ``img_size``).
        ignore_index: label value excluded from loss and metric.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        encoder: ViTEncoder | None = None,
        num_classes: int = 150,
        blocks: list[int] | None = None,
        img_size: int = 512,
        drop_path: float = 0.1,
        channels: int = 512,
        aux_channels: int = 256,
        aux_weight: float = 0.4,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        layer_decay: float = 0.65,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 1500,
        stride: int = 341,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        save_hyperparameters_except_encoder(self, encoder)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        options = {"img_size": img_size, "drop_path_rate": drop_path} if encoder is None else {}
        enc = build_encoder(checkpoint, encoder, **options)
        self.model = ViTUperNet(enc, num_classes, blocks, channels, aux_channels)
        self.miou = MulticlassJaccardIndex(num_classes, ignore_index=ignore_index, average="macro")
        self.pixel_acc = MulticlassAccuracy(num_classes, ignore_index=ignore_index, average="micro")

    def forward(self, imgs: Tensor) -> Tensor:
        return self.model(imgs)[0]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        imgs, labels = batch
        logits, aux = self.model(imgs)
        ce = lambda x: F.cross_entropy(x, labels, ignore_index=self.hparams.ignore_index)  # noqa: E731
        loss = ce(logits)
        self.log("train/loss_seg", loss, prog_bar=True)
        if aux is not None:
            loss = loss + self.hparams.aux_weight * ce(aux)
        self.log("train/loss", loss)
        return loss

    def _evaluate(self, batch: Any, stage: str) -> None:
        imgs, labels = batch
        logits = sliding_window_logits(self, imgs, self.hparams.num_classes, self.hparams.img_size,
                                       self.hparams.stride)
        # Scored at the label's (original) resolution.
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        self.miou.update(logits.argmax(1), labels)
        self.pixel_acc.update(logits.argmax(1), labels)
        self.log(f"{stage}/mIoU", self.miou, prog_bar=True)
        self.log(f"{stage}/pixel_acc", self.pixel_acc)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams

        def schedule(step: int, total: int) -> float:  # linear warm-up, then linear decay to 0 ("poly 1")
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            return max(0.0, 1.0 - (step - hp.warmup_steps) / max(total - hp.warmup_steps, 1))

        return layer_decay_adamw(self, self.model.encoder, "model.encoder.", schedule)
