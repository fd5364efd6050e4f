"""Linear probing of a frozen pretrained encoder (MAE protocol: ``main_linprobe.py``).

The encoder is frozen and kept in ``eval()`` for the whole run (so no dropout/drop-path, and no
statistics of any kind move); only ``LinearProbe`` = ``BatchNorm1d(affine=False)`` + ``Linear`` trains,
with LARS. Defaults are the MAE recipe (blr 0.1, wd 0, 10 warm-up epochs; with 90 epochs and a
16384 batch in the configs).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.optim import Lars
from torch import Tensor, nn

from lightning_mae.downstream.classification import ClassificationModule, build_encoder
from lightning_mae.downstream.encoder import ViTEncoder
from lightning_mae.probe import LinearProbe


class LinearProbing(ClassificationModule):
    """Train a linear classifier on frozen encoder features.

    Args:
        checkpoint: pretrained weights: our pretraining ``.ckpt`` or an official MAE ``.pth``.
        encoder: the encoder architecture (random init without ``checkpoint``; with it, the
            checkpoint's weights are loaded into it). ``None``: built from the checkpoint.
        num_classes: classes; ``None`` takes the DataModule's ``num_classes``.
        global_pool: ``"token"`` (cls token, MAE's default) or ``"avg"`` (mean of patch tokens, then a
            LayerNorm that stays at its initialisation, as in the official code).
        blr: base learning rate; lr = ``blr * effective_batch / 256``.
        lr: absolute learning rate; overrides ``blr``.
        weight_decay: weight decay (0 in the recipe).
        optimizer: ``"lars"`` (the recipe, made for thousands of steps at a 16k batch) or ``"sgd"``
            (plain momentum SGD, for CPU-sized budgets of a few dozen steps where LARS' trust ratio
            keeps the head near its initialisation).
        momentum: momentum of either optimizer.
        trust_coeff: LARS trust coefficient.
        warmup_epochs: linear warm-up (per step), then cosine to ``min_lr``.
        min_lr: final learning rate.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        encoder: ViTEncoder | None = None,
        num_classes: int | None = None,
        global_pool: Literal["token", "avg"] = "token",
        blr: float = 0.1,
        lr: float | None = None,
        weight_decay: float = 0.0,
        optimizer: Literal["lars", "sgd"] = "lars",
        momentum: float = 0.9,
        trust_coeff: float = 0.001,
        warmup_epochs: float = 10.0,
        min_lr: float = 0.0,
    ) -> None:
        if optimizer not in ("lars", "sgd"):
            raise ValueError(f"optimizer must be 'lars' or 'sgd', got {optimizer!r}")
        enc = build_encoder(checkpoint, encoder, global_pool=global_pool)
        super().__init__(enc, num_classes)
        self.finish_init(encoder)
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def build_head(self, num_classes: int) -> nn.Module:
        return LinearProbe(self.encoder.embed_dim, num_classes)

    def train(self, mode: bool = True) -> LinearProbing:
        # Lightning calls .train() at every epoch start; the frozen encoder must stay in eval mode.
        super().train(mode)
        self.encoder.eval()
        return self

    def features(self, imgs: Tensor) -> Tensor:
        with torch.no_grad():
            return self.encoder(imgs)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        imgs, labels = batch[0], batch[1]
        logits = self(imgs)
        loss = F.cross_entropy(logits, labels)
        self.log("train/loss", loss, prog_bar=True, on_epoch=True)
        self.log("train/acc1", (logits.argmax(-1) == labels).float().mean(), on_epoch=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def param_groups(self) -> list[dict]:
        # LARS adapts the weight matrix only; biases keep the plain rate (as MAE's LARS, which skips
        # 1-D parameters). ``always_adapt`` because the recipe's weight decay is 0.
        weights = [p for p in self.head.parameters() if p.ndim > 1]
        others = [p for p in self.head.parameters() if p.ndim <= 1]
        return [{"params": weights, "always_adapt": True},
                {"params": others, "always_adapt": False, "weight_decay": 0.0}]

    def make_optimizer(self, groups: list[dict], lr: float) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        return Lars(groups, lr=lr, momentum=hp.momentum, weight_decay=hp.weight_decay, trust_coeff=hp.trust_coeff)
