"""``AnalysisMonitor``: the paper's analysis metrics (``analysis.model_report``) tracked during pretraining."""

from __future__ import annotations

import time
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_debug
from torch import Tensor

from lightning_mae.analysis.metrics import ExploitationNorm, model_report, relation_kl_per_layer
from lightning_mae.masking import random_ids_shuffle
from lightning_mae.pretrain import MAEPretraining, split_batch


class AnalysisMonitor(pl.Callback):
    """Computes ``model_report`` on a fixed probe batch at the start of training (the epoch-0
    baseline) and after every ``every_n_epochs`` epochs, and logs it through every logger as
    ``analysis/<family>/<layer>`` (e.g. ``analysis/gap/enc3``, ``analysis/gap_attn/enc3``,
    ``analysis/exploit_mask/dec1``), plus
    ``analysis/kl_prev/enc<i>``: KL(previous check || this check) of each encoder layer's token
    relations, the model's own trajectory (Fig. 3b).

    The probe is the first ``num_images`` images of the first validation batch (of the first training
    batch when there is no validation set) with fixed random masks (seed ``seed``); it and the last
    relations are kept in the callback's ``state_dict``, so a resumed run continues the same curves.
    Runs on global rank 0 only, under ``no_grad``, with no collective operation; the backbone's
    train/eval modes are restored.

    Args:
        every_n_epochs: check after every N-th training epoch (and after the last one).
        num_images: probe images (the state dict keeps ``depth`` N x N relations per image).
        temperature: softmax temperature of the token relations.
        tau: affinity threshold of the Normalized-Cut graph of the gap (``"mean"``: per image, see
            ``masking.ncut_bipartition``).
        eps: edge weight below ``tau``.
        mask_ratio: masking of the decoder metrics; ``None`` = the module's ``masking.mask_ratio``.
        attention: also compute the attention metrics (distance, NMI, attention gap, exploitation rates).
        exploitation: ``"per_token"`` (default): the decoder's exploitation rates are the attention per
            visible / mask / cls token, equal under uniform attention; ``"raw"``: the attention shares
            (``analysis.exploitation_rates``).
        seed: seed of the probe's random masks.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_images: int = 8,
        temperature: float = 0.1,
        tau: float | Literal["mean"] = "mean",
        eps: float = 1e-5,
        mask_ratio: float | None = None,
        attention: bool = True,
        seed: int = 0,
        exploitation: ExploitationNorm = "per_token",
    ) -> None:
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError(f"every_n_epochs and num_images must be >= 1, got {every_n_epochs}, {num_images}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if mask_ratio is not None and not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if exploitation not in ("per_token", "raw"):
            raise ValueError(f"exploitation must be 'per_token' or 'raw', got {exploitation!r}")
        self.exploitation = exploitation
        self.every_n_epochs, self.num_images, self.temperature = every_n_epochs, num_images, temperature
        self.tau, self.eps, self.mask_ratio, self.attention, self.seed = tau, eps, mask_ratio, attention, seed
        self.images: Tensor | None = None  # the probe, on the CPU
        self.ids_shuffle: Tensor | None = None
        self.relations: list[Tensor] | None = None  # of the last check, for kl_prev
        self.seconds = 0.0  # wall time of the last check (its overhead)

    # --- the probe ----------------------------------------------------------------------------------
    def _capture(self, imgs: Tensor, num_patches: int) -> None:
        self.images = imgs[: self.num_images].detach().float().cpu().clone()
        gen = torch.Generator().manual_seed(self.seed)
        self.ids_shuffle = random_ids_shuffle(self.images.shape[0], num_patches, generator=gen)

    def _first_val_images(self, trainer: pl.Trainer) -> Tensor | None:
        loader = trainer.val_dataloaders
        if isinstance(loader, (list, tuple)):
            loader = loader[0] if loader else None
        return None if loader is None else split_batch(next(iter(loader)))[0]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        module = _pretraining(pl_module)
        if trainer.global_rank != 0 or self.images is not None:
            return  # a resumed run keeps its probe (restored by load_state_dict)
        imgs = self._first_val_images(trainer)
        if imgs is not None:
            self._capture(imgs, module.backbone.num_patches)
            self._check(trainer, module)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
                             ) -> None:
        # Fallback when the run has no validation set: the first training images, before the first step.
        if trainer.global_rank == 0 and self.images is None:
            module = _pretraining(pl_module)
            self._capture(split_batch(batch)[0], module.backbone.num_patches)
            self._check(trainer, module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if trainer.global_rank == 0 and ((epoch + 1) % self.every_n_epochs == 0 or last):
            self._check(trainer, _pretraining(pl_module))

    # --- one check ------------------------------------------------------------------------------------
    def _check(self, trainer: pl.Trainer, module: MAEPretraining) -> None:
        if self.images is None or self.ids_shuffle is None:
            return
        start = time.perf_counter()
        backbone = module.backbone
        modes = {m: m.training for m in backbone.modules()}
        backbone.eval()
        try:
            ratio = self.mask_ratio if self.mask_ratio is not None else module.masking.mask_ratio
            len_keep = int(backbone.num_patches * (1 - ratio))
            report = model_report(
                backbone, self.images.to(module.device), self.ids_shuffle.to(module.device), len_keep,
                self.temperature, self.tau, self.eps, self.attention, self.exploitation,
            )
        finally:
            for m, mode in modes.items():
                m.training = mode
        metrics = {f"analysis/{k}": v for k, v in report.scalars.items()}
        relations = [r.cpu() for r in report.relations]
        if self.relations is not None:
            for i, kl in enumerate(relation_kl_per_layer(self.relations, relations), 1):
                metrics[f"analysis/kl_prev/enc{i}"] = float(kl)
        self.relations = relations
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self.seconds = time.perf_counter() - start
        rank_zero_debug(f"AnalysisMonitor: {len(metrics)} metrics in {self.seconds:.3f}s")

    # --- resuming ---------------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(num_images=self.num_images, seed=self.seed)

    def state_dict(self) -> dict[str, Any]:
        if self.images is None:
            return {}
        return {"images": self.images, "ids_shuffle": self.ids_shuffle,
                "relations": None if self.relations is None else torch.stack(self.relations)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self.images, self.ids_shuffle = state_dict["images"], state_dict["ids_shuffle"]
        relations = state_dict.get("relations")
        self.relations = None if relations is None else list(relations.unbind(0))


def _pretraining(pl_module: pl.LightningModule) -> MAEPretraining:
    if not isinstance(pl_module, MAEPretraining):
        raise TypeError(f"AnalysisMonitor needs an MAEPretraining module, got {type(pl_module).__name__}")
    return pl_module
