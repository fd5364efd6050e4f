"""End-to-end fine-tuning of a pretrained encoder (MAE protocol: ``main_finetune.py``).

AdamW with layer-wise lr decay, drop path, mixup/cutmix with label smoothing (timm's ``Mixup`` and
soft-target cross-entropy), global average pooling. RandAugment and random erasing are data
transforms (``datamodules.classification.base``, ``recipe="finetune"``). Defaults are the ViT-B recipe.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import Tensor, nn

from lightning_mae.downstream.classification import ClassificationModule, build_encoder
from lightning_mae.downstream.encoder import ViTEncoder
from lightning_mae.downstream.layer_decay import param_groups_layer_decay


class FineTuning(ClassificationModule):
    """Fine-tune encoder + linear head.

    Args:
        checkpoint: pretrained weights: our pretraining ``.ckpt`` or an official MAE ``.pth``.
        encoder: the encoder architecture (random init without ``checkpoint``); ``None``: from the checkpoint.
        num_classes: classes; ``None`` takes the DataModule's ``num_classes``.
        global_pool: ``"avg"`` (MAE's fine-tuning default) or ``"token"``.
        drop_path: stochastic-depth rate of the last block (applies when the encoder is built from
            the checkpoint; a given ``encoder`` keeps its own ``drop_path_rate``).
        blr: base learning rate; lr = ``blr * effective_batch / 256``.
        lr: absolute learning rate; overrides ``blr``.
        layer_decay: layer-wise lr decay factor (1 = off).
        weight_decay: AdamW weight decay (not on biases, norms, cls token and pos embed).
        betas: AdamW betas.
        warmup_epochs: linear warm-up (per step), then cosine to ``min_lr``.
        min_lr: final learning rate.
        mixup: mixup alpha (0 = off).
        cutmix: cutmix alpha (0 = off).
        mixup_prob: probability of applying mixup or cutmix to a batch.
        mixup_switch_prob: probability of cutmix instead of mixup when both are on.
        mixup_mode: ``batch``, ``pair`` or ``elem`` (how mixing parameters are drawn).
        label_smoothing: label smoothing (inside mixup's soft targets when mixing is on).
        head_init_std: std of the head's trunc-normal initialisation (tiny, so the start is near uniform).
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        encoder: ViTEncoder | None = None,
        num_classes: int | None = None,
        global_pool: Literal["token", "avg"] = "avg",
        drop_path: float = 0.1,
        blr: float = 5e-4,
        lr: float | None = None,
        layer_decay: float = 0.65,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 5.0,
        min_lr: float = 1e-6,
        mixup: float = 0.8,
        cutmix: float = 1.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        mixup_mode: Literal["batch", "pair", "elem"] = "batch",
        label_smoothing: float = 0.1,
        head_init_std: float = 2e-5,
    ) -> None:
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        enc = build_encoder(checkpoint, encoder, global_pool=global_pool,
                            **({"drop_path_rate": drop_path} if encoder is None else {}))
        super().__init__(enc, num_classes)
        self.mixup_fn: Mixup | None = None  # built with the head, once the classes are known
        self.finish_init(encoder)

    def build_head(self, num_classes: int) -> nn.Module:
        head = nn.Linear(self.encoder.embed_dim, num_classes)
        nn.init.trunc_normal_(head.weight, std=self.hparams.head_init_std)
        nn.init.zeros_(head.bias)
        if self.mixing_on:
            self.mixup_fn = Mixup(
                mixup_alpha=self.hparams.mixup, cutmix_alpha=self.hparams.cutmix, prob=self.hparams.mixup_prob,
                switch_prob=self.hparams.mixup_switch_prob, mode=self.hparams.mixup_mode,
                label_smoothing=self.hparams.label_smoothing, num_classes=num_classes,
            )
        return head

    @property
    def mixing_on(self) -> bool:
        return self.hparams.mixup > 0 or self.hparams.cutmix > 0

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        imgs, labels = batch[0], batch[1]
        if self.mixup_fn is not None:
            if imgs.shape[0] % 2:
                raise ValueError(f"mixup/cutmix need an even batch size, got {imgs.shape[0]} (use drop_last)")
            imgs, targets = self.mixup_fn(imgs, labels)
            loss = SoftTargetCrossEntropy()(self(imgs), targets)
        else:
            logits = self(imgs)
            loss = (LabelSmoothingCrossEntropy(self.hparams.label_smoothing) if self.hparams.label_smoothing > 0
                    else nn.CrossEntropyLoss())(logits, labels)
        self.log("train/loss", loss, prog_bar=True, on_epoch=True)
        self.log("lr", max(g["lr"] for g in self.trainer.optimizers[0].param_groups))
        return loss

    def param_groups(self) -> list[dict]:
        return param_groups_layer_decay(
            self, depth=self.encoder.depth, weight_decay=self.hparams.weight_decay,
            layer_decay=self.hparams.layer_decay, encoder_prefix="encoder.",
            no_weight_decay=self.encoder.no_weight_decay(),
        )

    def make_optimizer(self, groups: list[dict], lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(self.hparams.betas))
