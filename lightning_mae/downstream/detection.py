"""COCO detection / instance segmentation: torchvision's Mask R-CNN on a ViT with a ViTDet simple
feature pyramid (Li et al., 2022).

The pyramid is built from the last block's stride-16 map alone: x4 and x2 by transposed convolutions,
x1, x0.5 by max-pooling, each projected to 256 channels (1x1 + 3x3 conv with LayerNorm), plus a
stride-64 level by max-pooling for the RPN. Evaluation: AP_box and AP_mask from torchmetrics'
``MeanAveragePrecision(iou_type=("bbox", "segm"))`` (COCO protocol, pycocotools backend).

Differences from ViTDet, on purpose to keep the code small: global attention in every block (ViTDet
uses windowed attention in most blocks at 1024 px, for memory), torchvision's standard box/mask heads,
and resize + flip augmentation instead of large-scale jitter.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import lightning.pytorch as pl
from timm.layers import LayerNorm2d
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import MaskRCNN

from lightning_mae.downstream.classification import build_encoder
from lightning_mae.downstream.dense import layer_decay_adamw, save_hyperparameters_except_encoder
from lightning_mae.downstream.encoder import ViTEncoder


class SimpleFeaturePyramid(nn.Module):
    """ViT (last block, stride 16) -> feature maps at strides 4, 8, 16, 32, 64, for torchvision's FPN heads."""

    def __init__(self, encoder: ViTEncoder, out_channels: int = 256) -> None:
        super().__init__()
        self.encoder, self.out_channels = encoder, out_channels
        dim = encoder.embed_dim
        self.rescale = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, 2), LayerNorm2d(dim // 2), nn.GELU(),
                          nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2)),
            nn.ConvTranspose2d(dim, dim // 2, 2, 2),
            nn.Identity(),
            nn.MaxPool2d(2),
        ])
        widths = (dim // 4, dim // 2, dim, dim)
        self.project = nn.ModuleList(
            nn.Sequential(nn.Conv2d(w, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                          nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels))
            for w in widths
        )
        self.extra = nn.MaxPool2d(1, stride=2)  # stride-64 level for the RPN's largest anchors

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        [top] = self.encoder.forward_intermediates(images, [self.encoder.depth - 1])
        levels = [proj(scale(top)) for scale, proj in zip(self.rescale, self.project)]
        return OrderedDict([*((str(i), f) for i, f in enumerate(levels)), ("pool", self.extra(levels[-1]))])


def vit_mask_rcnn(encoder: ViTEncoder, num_classes: int, min_size: int = 1024, max_size: int = 1024,
                  **kwargs: Any) -> MaskRCNN:
    """torchvision ``MaskRCNN`` (default FPN anchors, RoIAlign, box and mask heads) on a ViT pyramid.

    Images are normalised inside (ImageNet statistics) and padded to a multiple of 32.
    """
    if min_size % encoder.patch_size or max_size % encoder.patch_size:
        raise ValueError(f"min_size/max_size must be multiples of patch_size={encoder.patch_size}")
    return MaskRCNN(SimpleFeaturePyramid(encoder), num_classes=num_classes, min_size=min_size, max_size=max_size,
                    **kwargs)


class InstanceSegmentation(pl.LightningModule):
    """Mask R-CNN fine-tuning of a pretrained ViT (ViTDet-B recipe as defaults: AdamW lr 1e-4, wd 0.1,
    layer decay 0.7, drop path 0.1, 250 warm-up iterations, lr x0.1 at 89 % and 96 % of training).

    Args:
        checkpoint: pretrained weights: our pretraining ``.ckpt`` or an official MAE ``.pth``.
        encoder: the encoder architecture (random init without ``checkpoint``); ``None``: from the checkpoint.
        num_classes: object classes + 1 for the background (81 for COCO's 80 categories).
        min_size, max_size: torchvision's resize of the input (short side, cap on the long side).
        drop_path: stochastic depth of the encoder (when built from the checkpoint).
        detections_per_img: boxes kept per image at evaluation.
        lr, weight_decay, layer_decay, betas: AdamW with layer-wise lr decay (pyramid and heads at full lr).
        warmup_steps: linear warm-up iterations.
        decay_at: fractions of training after which the lr is multiplied by 0.1.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        encoder: ViTEncoder | None = None,
        num_classes: int = 81,
        min_size: int = 1024,
        max_size: int = 1024,
        drop_path: float = 0.1,
        detections_per_img: int = 100,
        lr: float = 1e-4,
        weight_decay: float = 0.1,
        layer_decay: float = 0.7,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 250,
        decay_at: tuple[float, float] = (0.89, 0.96),
    ) -> None:
        super().__init__()
        save_hyperparameters_except_encoder(self, encoder)
        if num_classes < 2:
            raise ValueError(f"num_classes (with background) must be >= 2, got {num_classes}")
        enc = build_encoder(checkpoint, encoder, **({"drop_path_rate": drop_path} if encoder is None else {}))
        self.model = vit_mask_rcnn(enc, num_classes, min_size, max_size, box_detections_per_img=detections_per_img)
        self.map = MeanAveragePrecision(iou_type=("bbox", "segm"), backend="pycocotools")

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.model(images)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, targets = batch
        losses = self.model(list(images), list(targets))
        loss = sum(losses.values())
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=len(images))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def _evaluate(self, batch: Any, stage: str) -> None:
        images, targets = batch
        preds = self.model(list(images))
        for pred in preds:  # soft masks [N, 1, H, W] -> binary [N, H, W], as COCO scores them
            pred["masks"] = pred["masks"][:, 0] > 0.5
        self.map.update(preds, [{k: t[k] for k in ("boxes", "labels", "masks", "iscrowd")} for t in targets])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _log_map(self, stage: str) -> None:
        result = self.map.compute()
        self.map.reset()
        for key in ("bbox_map", "bbox_map_50", "bbox_map_75", "segm_map", "segm_map_50", "segm_map_75"):
            self.log(f"{stage}/{key.replace('bbox_map', 'AP_box').replace('segm_map', 'AP_mask')}",
                     result[key].float(), prog_bar=key in ("bbox_map", "segm_map"), sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_map("val")

    def on_test_epoch_end(self) -> None:
        self._log_map("test")

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams

        def schedule(step: int, total: int) -> float:  # linear warm-up, then x0.1 at each of decay_at
            warm = min(1.0, (step + 1) / hp.warmup_steps) if hp.warmup_steps else 1.0
            return warm * 0.1 ** sum(step >= int(f * total) for f in hp.decay_at)

        return layer_decay_adamw(self, self.model.backbone.encoder, "model.backbone.encoder.", schedule)
