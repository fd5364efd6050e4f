"""What linear probing and fine-tuning share: a pretrained encoder, a classifier head, top-1/top-5,
and the ``lr = blr * effective_batch / 256`` rule with a per-step warm-up + cosine schedule."""

from __future__ import annotations

import inspect
import warnings
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lightning_mae.downstream.checkpoints import load_encoder, load_encoder_weights, read_checkpoint
from lightning_mae.downstream.encoder import ViTEncoder
from lightning_mae.optim import warmup_cosine
from lightning_run import effective_batch_size


def build_encoder(checkpoint: str | None, encoder: ViTEncoder | None, **options: Any) -> ViTEncoder:
    """The encoder of a downstream run: from ``checkpoint`` (architecture and weights), into the given
    ``encoder`` when both are set (its architecture must fit), or ``encoder`` alone (random init)."""
    if checkpoint is None and encoder is None:
        raise ValueError("give a pretrained `checkpoint` (our .ckpt or an official MAE .pth), or an `encoder`")
    if encoder is None:
        return load_encoder(checkpoint, **options)
    if "global_pool" in options and encoder.global_pool != options["global_pool"]:
        raise ValueError(f"encoder.global_pool={encoder.global_pool!r} but global_pool={options['global_pool']!r}")
    if checkpoint is not None:
        state, _ = read_checkpoint(checkpoint)
        load_encoder_weights(encoder, state, source=f"checkpoint {checkpoint}")
    return encoder


class ClassificationModule(pl.LightningModule):
    """Base of ``LinearProbing`` and ``FineTuning``: they build the head (``build_head``) and provide
    ``param_groups`` and ``make_optimizer``. Without ``num_classes`` the head is built in ``setup`` from
    the DataModule's ``num_classes``."""

    def __init__(self, encoder: ViTEncoder, num_classes: int | None) -> None:
        super().__init__()
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.encoder = encoder
        self.num_classes = num_classes
        self.head: nn.Module | None = None

    def finish_init(self, encoder_arg: Any) -> None:
        """Save the subclass's constructor arguments, then build the head if the classes are known.

        An ``encoder`` module built in Python is not pickled into the hparams (its weights are in the
        state dict), so checkpoints load with ``weights_only``.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters(ignore=["encoder"] if isinstance(encoder_arg, nn.Module) else [],
                                      frame=inspect.currentframe().f_back)
        if self.num_classes is not None:
            self._make_head(self.num_classes)

    # --- head and metrics, built once the number of classes is known -------------------------------
    def _make_head(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = self.build_head(num_classes)
        # Top-k accuracy is the fraction of samples right ("micro"); torchmetrics' default ("macro") is the
        # mean per-class recall, which differs from it on imbalanced sets.
        top_k = {"acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
        if num_classes > 5:
            top_k["acc5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        self.val_metrics = MetricCollection(top_k, prefix="val/")
        self.test_metrics = self.val_metrics.clone(prefix="test/")

    def build_head(self, num_classes: int) -> nn.Module:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        # The DataModule knows its classes once set up (ImageFolder layouts); take them from there.
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_classes = getattr(datamodule, "num_classes", None)
        if self.head is None:
            if data_classes is None:
                raise ValueError("num_classes is not set and the DataModule does not provide `num_classes`")
            self._make_head(int(data_classes))
        elif data_classes is not None and data_classes != self.num_classes:
            raise ValueError(f"num_classes={self.num_classes} but the DataModule has {data_classes} classes")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A head sized from the DataModule must be rebuilt by ``load_from_checkpoint`` before the weights load.
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"]["num_classes"] = self.num_classes

    # --- steps ----------------------------------------------------------------------------------------
    def features(self, imgs: Tensor) -> Tensor:
        return self.encoder(imgs)

    def forward(self, imgs: Tensor) -> Tensor:
        return self.head(self.features(imgs))

    def _eval_step(self, batch: Any, metrics: MetricCollection, stage: str) -> None:
        imgs, labels = batch[0], batch[1]
        logits = self(imgs)
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), sync_dist=True)
        metrics.update(logits, labels)
        self.log_dict(metrics, prog_bar=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        # Lets a runner tell whether the metrics in ``trainer.callback_metrics`` are the final model's.
        if not self.trainer.sanity_checking:
            self.validated_epoch = self.current_epoch

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self(batch[0] if isinstance(batch, (list, tuple)) else batch).softmax(-1)

    # --- optimization ---------------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        raise NotImplementedError

    def make_optimizer(self, groups: list[dict], lr: float) -> torch.optim.Optimizer:
        raise NotImplementedError

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        total_steps = int(self.trainer.estimated_stepping_batches)  # also sets up the train loader
        eff_batch = effective_batch_size(self.trainer)
        lr = hp.lr if hp.lr is not None else hp.blr * eff_batch / 256
        rank_zero_info(f"{type(self).__name__}: effective batch {eff_batch}, lr {lr:.3g}, {total_steps} steps")
        groups = self.param_groups()
        for group in groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # LambdaLR scales every group by one factor
        optimizer = self.make_optimizer(groups, lr)
        max_epochs = self.trainer.max_epochs
        steps_per_epoch = total_steps / max_epochs if max_epochs and max_epochs > 0 else total_steps
        schedule = partial(warmup_cosine, warmup_steps=hp.warmup_epochs * steps_per_epoch, total_steps=total_steps,
                           min_ratio=hp.min_lr / lr if lr > 0 else 0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
