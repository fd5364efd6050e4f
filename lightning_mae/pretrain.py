"""LightningModule for (Self-Guided) MAE pretraining. It only orchestrates: the model is
``mae.MaskedAutoencoderViT``, the masks come from ``masking.SelfGuidedMasking``, the online probe is
``probe.LinearProbe``."""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_mae.mae import MaskedAutoencoderViT
from lightning_mae.masking import SelfGuidedMasking, degenerate_graph, random_ids_shuffle
from lightning_mae.optim import param_groups_weight_decay, warmup_cosine
from lightning_mae.probe import LinearProbe
from lightning_run import compile_once, effective_batch_size, run_seed


def split_batch(batch: Any) -> tuple[Tensor, Tensor | None]:
    """``(images, labels)`` from an ``(images, labels)`` pair or a bare image tensor."""
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and len(batch) >= 1:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise TypeError(f"expected an image tensor or an (images, labels) pair, got {type(batch).__name__}")


def masks_and_encoder_output(
    masking: SelfGuidedMasking, backbone: MaskedAutoencoderViT, imgs: Tensor, epoch: int, max_epochs: int | None,
    generator: torch.Generator | None = None, info: dict[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """This step's ``ids_shuffle`` and the no-grad encoder output of the unmasked images ``[B, 1 + N, D]``
    (what the online probe reads with ``probe_features: full``). Informed masks take their features from
    that same pass (its first ``source_layer`` blocks), so on top of it they cost only the partition;
    both outputs equal those of separate passes."""
    if masking.is_informed(epoch):
        features, encoded = masking.features_with_encoder_output(imgs, backbone)
    else:
        features = None
        with torch.no_grad():
            encoded = backbone.forward_features(imgs)
    return masking(imgs, backbone, epoch, max_epochs, generator, info, features), encoded


def adamw(groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW, with PyTorch's fused kernel when every parameter is on a CPU or CUDA device: one pass
    over the weights per step instead of about ten per tensor (on CPU the default for-loop AdamW is
    ~10 % of a ViT-B/16 bf16 step; ``python -m benchmarks.mae_speed --reference`` measures it)."""
    fused = all(p.device.type in ("cpu", "cuda") for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def check_visible_patches(masking: SelfGuidedMasking, num_patches: int) -> None:
    """Raise unless ``masking.mask_ratio`` leaves at least one visible and one masked patch of ``num_patches``
    (counted as the masking counts them: ``len_keep = int(num_patches * (1 - mask_ratio))``)."""
    ratio, keep = masking.mask_ratio, masking.len_keep(num_patches)
    if num_patches < 2:
        raise ValueError(f"the image has {num_patches} patch(es): masking needs at least 2 (one visible, one "
                         "masked); use a smaller patch_size or a larger img_size")
    if keep < 1:
        steps = math.floor((1 - 1 / num_patches) * 10_000)  # the largest valid ratio, to 4 decimals (rounded down)
        while int(num_patches * (1 - steps / 10_000)) < 1:
            steps -= 1
        largest = f"{steps / 10_000:g}"
        raise ValueError(
            f"mask_ratio={ratio} leaves {keep} of the {num_patches} patches visible (int({num_patches} x "
            f"(1 - {ratio})) = {keep}), and the encoder needs at least one: use mask_ratio <= {largest} (the "
            f"largest valid ratio for {num_patches} patches) or a smaller patch_size"
        )
    if keep >= num_patches:
        raise ValueError(f"mask_ratio={ratio} masks none of the {num_patches} patches (nothing to reconstruct); "
                         "use a larger mask_ratio")


class MAEPretraining(pl.LightningModule):
    """Self-Guided MAE pretraining; plain MAE when ``masking.start_epoch`` is ``None``.

    Args:
        backbone: the masked autoencoder (default: ViT-B/16 with ``norm_pix_loss``).
        masking: the masking schedule (default: ``SelfGuidedMasking()``).
        blr: base learning rate; the actual lr is ``blr * effective_batch / 256`` where the effective
            batch counts the per-device batch, devices, nodes and gradient accumulation.
        lr: absolute learning rate; overrides ``blr`` when given.
        weight_decay: AdamW weight decay. As facebookresearch/mae's ``main_pretrain.py`` (timm's
            ``add_weight_decay`` with no skip list), every parameter is decayed except the 1-D ones
            (biases, LayerNorm weights): ``cls_token`` and ``mask_token`` are decayed.
        no_weight_decay_tokens: also exempt ``cls_token`` and ``mask_token`` (the model's
            ``no_weight_decay()``) from weight decay, as the fine-tuning recipe and timm's ViTs do; not
            the MAE pretraining reference. A checkpoint written before this option existed (tokens
            exempt) resumes with it switched on.
        betas: AdamW betas.
        warmup_epochs: linear warm-up length in epochs (may be fractional); the schedule is per
            optimizer step, then cosine to ``min_lr``.
        min_lr: final learning rate of the cosine.
        num_classes: classes of the online linear probe; ``0`` disables it (no labels needed).
        probe_lr: learning rate of the probe head (same schedule shape as the backbone).
        probe_features: ``"full"`` (default) probes the cls token of an extra no-grad forward of the
            unmasked image: the offline protocol's feature, comparable between MAE and SG-MAE (costs a
            full encoder pass per step). ``"visible"`` probes the cls token of the masked training
            forward (free), but once informed masks hide the object it sees mostly background, so its
            accuracy is not comparable across masking strategies.
        compile: ``torch.compile`` the backbone's forward (in place: state-dict keys unchanged). The
            first steps pay the compilation; docs/benchmarks.md says what it buys.
    """

    def __init__(
        self,
        backbone: MaskedAutoencoderViT | None = None,
        masking: SelfGuidedMasking | None = None,
        blr: float = 1.5e-4,
        lr: float | None = None,
        weight_decay: float = 0.05,
        no_weight_decay_tokens: bool = False,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: float = 40.0,
        min_lr: float = 0.0,
        num_classes: int = 0,
        probe_lr: float = 1e-3,
        probe_features: Literal["visible", "full"] = "full",
        compile: bool = False,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        # From the CLI the hparams hold the modules' configs; modules built in Python are not pickled
        # into the hparams (their weights are in the state dict), so checkpoints load with weights_only.
        for key in ("backbone", "masking"):
            if isinstance(self.hparams.get(key), nn.Module):
                self.hparams.pop(key)
        self.backbone = backbone if backbone is not None else MaskedAutoencoderViT()
        self.masking = masking if masking is not None else SelfGuidedMasking()
        self.masking.check(self.backbone)  # fail now, not at start_epoch, on a bad source_layer
        self._graph_checked_epoch: int | None = None  # last epoch whose NCut graph was checked (mask/edge_density)
        self._graph_warned = False
        check_visible_patches(self.masking, self.backbone.num_patches)
        if probe_features not in ("visible", "full"):
            raise ValueError(f"probe_features must be 'visible' or 'full', got {probe_features!r}")
        self.probe = LinearProbe(self.backbone.cls_token.shape[-1], num_classes) if num_classes else None
        # top-1 over all images (micro), like the offline probe; torchmetrics' default is the per-class mean
        self.val_probe_acc = MulticlassAccuracy(num_classes, average="micro") if num_classes else None

    def configure_model(self) -> None:
        compile_once(self, self.backbone, bool(self.hparams.get("compile")))

    # --- schedule state, derived from the trainer (so a resumed run continues where it was) -------
    @property
    def masks_informed(self) -> bool:
        return self.masking.is_informed(self.current_epoch)

    @property
    def hint_ratio(self) -> float:
        return self.masking.hint_ratio(self.current_epoch, self.trainer.max_epochs)

    def _mask_generator(self, device: torch.device, batch_idx: int) -> torch.Generator:
        # Masks are a function of (run seed, epoch, batch, rank), not of a global RNG stream: a run
        # resumed mid-epoch draws the same masks as an uninterrupted one without saving RNG states.
        seed = hash((run_seed(), self.current_epoch, batch_idx, self.global_rank)) % 2**62
        return torch.Generator(device).manual_seed(seed)

    # --- steps -------------------------------------------------------------------------------------
    def _probe_features(self, imgs: Tensor, latent: Tensor, encoded: Tensor | None = None) -> Tensor:
        if self.hparams.probe_features == "full":
            if encoded is None:
                with torch.no_grad():
                    encoded = self.backbone.forward_features(imgs)
            return encoded[:, 0]
        return latent[:, 0].detach()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        imgs, labels = split_batch(batch)
        if self.masking.needs_probe:
            self.masking.set_probe(imgs, self.backbone)
        gen = self._mask_generator(imgs.device, batch_idx)
        # The NCut graph statistics cost a sort of every similarity: gather them only on the steps that
        # log them or check them, not on every step of the hot path.
        info: dict[str, Tensor] | None = {} if self._graph_stats_wanted() else None
        probing = self.probe is not None and labels is not None
        epoch, max_epochs = self.current_epoch, self.trainer.max_epochs
        encoded = None
        if probing and self.hparams.probe_features == "full":  # one unmasked pass for the probe and the masks
            ids_shuffle, encoded = masks_and_encoder_output(self.masking, self.backbone, imgs, epoch, max_epochs,
                                                            gen, info)
        else:
            ids_shuffle = self.masking(imgs, self.backbone, epoch, max_epochs, gen, info)
        if info:
            self._log_graph_stats(info)
        out = self.backbone(imgs, ids_shuffle, self.masking.len_keep(self.backbone.num_patches))
        loss = out.loss
        self.log("train/loss", out.loss, prog_bar=True, on_epoch=True)
        self.log("mask/informed", float(self.masks_informed))
        self.log("mask/hint_ratio", self.hint_ratio)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True)
        if probing:
            logits = self.probe(self._probe_features(imgs, out.latent, encoded))
            probe_loss = F.cross_entropy(logits, labels)
            loss = loss + probe_loss  # the probe sees detached features: no gradient to the backbone
            self.log("train/probe_loss", probe_loss, on_epoch=True)
            self.log("train/probe_acc", (logits.argmax(-1) == labels).float().mean(), on_epoch=True)
        return loss

    def _graph_stats_wanted(self) -> bool:
        """This step's stats are logged (Lightning keeps only logging steps' values) or checked (the first
        informed step of an epoch, until the check has warned)."""
        if not self._graph_warned and self._graph_checked_epoch != self.current_epoch:
            return True
        return (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0

    def _log_graph_stats(self, info: dict[str, Tensor]) -> None:
        """Log the NCut graph of this step's informed masks (``mask/sim_q10|q50|q90``, ``mask/edge_density``)
        and warn once when it is degenerate. Read off the similarity matrix the cut computed; the check
        (one device sync) runs on the first informed step of each epoch until it has warned."""
        stats = {k: v for k, v in info.items() if k != "partition"}
        if not stats:  # random masks, or the PCA partition (no graph)
            return
        for key, value in stats.items():
            self.log(f"mask/{key}", value)
        if self._graph_warned or self._graph_checked_epoch == self.current_epoch:
            return
        self._graph_checked_epoch = self.current_epoch
        density = float(stats["edge_density"])
        if degenerate_graph(density):
            self._graph_warned = True
            m = self.masking
            quantiles = ", ".join(f"{k[4:]} {float(v):.3f}" for k, v in stats.items() if k.startswith("sim_q"))
            kind = "complete" if density > 0.5 else "empty"
            rank_zero_warn(
                f"informed masking: the NCut graph is nearly {kind} (edge density {density:.3f} = share of patch "
                f"pairs with similarity above tau={m.tau}, at {m.source} block {m.check(self.backbone)}; "
                f"similarity quantiles {quantiles}), so the cut, hence the informed mask, is arbitrary. Set "
                "tau: mean (each image's mean similarity: --model.init_args.masking.init_args.tau mean) or a tau "
                "near the median similarity; mask/edge_density and mask/sim_q* are logged every step"
            )

    def on_fit_start(self) -> None:
        # A schedule whose informed phase lies past the last epoch is plain MAE: say so, once (rank 0).
        masking, max_epochs = self.masking, self.trainer.max_epochs
        if max_epochs is None or max_epochs < 0:  # -1: no epoch limit
            return
        if masking.auto and masking.switch_epoch is None and masking.auto_min_epoch >= max_epochs:
            rank_zero_warn(
                f"masking.start_epoch='auto' with auto_min_epoch={masking.auto_min_epoch} >= trainer.max_epochs="
                f"{max_epochs}: informed masking will never start, so this run is plain MAE (random masks only); "
                f"lower auto_min_epoch below {max_epochs} or raise trainer.max_epochs"
            )
        elif not masking.auto and masking.informed_from is not None and masking.informed_from >= max_epochs:
            rank_zero_warn(
                f"masking.start_epoch={masking.informed_from} >= trainer.max_epochs={max_epochs}: informed masking "
                f"will never start, so this run is plain MAE (random masks only); set start_epoch below "
                f"{max_epochs} (--model.init_args.masking.init_args.start_epoch) or raise trainer.max_epochs, or "
                "set start_epoch: null to train plain MAE on purpose"
            )

    def on_train_start(self) -> None:
        # configure_optimizers reads trainer.estimated_stepping_batches, which sets up the train loader
        # before Lightning restores the checkpoint's loop state, and Lightning then never hands the
        # saved loader state (the mid-epoch position) to the loader. Hand it over and restart the
        # iterator from it, so a mid-epoch resume continues with the unseen batches (Lightning 2.6).
        fit_loop = self.trainer.fit_loop
        if fit_loop.restarting and fit_loop._combined_loader_states_to_load and fit_loop._data_fetcher is not None:
            fit_loop._load_combined_loader_states()
            iter(fit_loop._data_fetcher)

    def on_train_epoch_end(self) -> None:
        masking = self.masking
        if not masking.auto:
            return
        if masking.switch_epoch is None and masking.probe_images is not None:
            # Every rank measures its own probe batch; the mean decides, so all ranks switch together.
            drift = float(self.trainer.strategy.reduce(masking.relation_drift(self.backbone), reduce_op="mean"))
            self.log("mask/relation_kl", drift)
            if masking.settle(drift, self.current_epoch):
                rank_zero_info(
                    f"start_epoch=auto: token relations moved {drift:.4g} < {masking.auto_threshold} in epoch "
                    f"{self.current_epoch}; informed masking from epoch {masking.switch_epoch}"
                )
        if masking.switch_epoch is not None:
            self.log("mask/start_epoch", float(masking.switch_epoch))

    def _eval_step(self, batch: Any, batch_idx: int, stage: str) -> None:
        imgs, labels = split_batch(batch)
        # The same random masks at every evaluation: val/loss curves are comparable across epochs.
        gen = torch.Generator(imgs.device).manual_seed(batch_idx)
        ids_shuffle = random_ids_shuffle(imgs.shape[0], self.backbone.num_patches, imgs.device, gen)
        out = self.backbone(imgs, ids_shuffle, self.masking.len_keep(self.backbone.num_patches))
        self.log(f"{stage}/loss", out.loss, prog_bar=True, sync_dist=True)
        if self.probe is not None and labels is not None:
            self.val_probe_acc(self.probe(self._probe_features(imgs, out.latent)), labels)
            self.log(f"{stage}/probe_acc", self.val_probe_acc, prog_bar=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor | None]:
        """cls-token features of the unmasked images (and labels), e.g. for an offline probe."""
        imgs, labels = split_batch(batch)
        return {"features": self.backbone.forward_features(imgs)[:, 0], "labels": labels}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Runs before configure_optimizers on a resume. A run saved before `no_weight_decay_tokens` existed
        # exempted the tokens: keep its parameter groups, or its optimizer state would not fit them.
        saved = checkpoint.get("hyper_parameters")
        if (isinstance(saved, dict) and "no_weight_decay_tokens" not in saved and checkpoint.get("optimizer_states")
                and not self.hparams.no_weight_decay_tokens):
            rank_zero_warn("this checkpoint predates `no_weight_decay_tokens`: its run exempted cls_token and "
                           "mask_token from weight decay, and the resumed run keeps doing so")
            self.hparams.no_weight_decay_tokens = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The architecture travels with the weights (``state_dict`` keys ``backbone.*``), so downstream
        # code can rebuild the encoder from the checkpoint alone.
        checkpoint["mae_config"] = dict(self.backbone.config)

    # --- optimization -----------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        total_steps = int(self.trainer.estimated_stepping_batches)  # also sets up the train loader
        eff_batch = effective_batch_size(self.trainer)
        lr = hp.lr if hp.lr is not None else hp.blr * eff_batch / 256
        rank_zero_info(
            f"effective batch {eff_batch} (per device x {self.trainer.world_size} processes x "
            f"{self.trainer.accumulate_grad_batches} accumulation), lr {lr:.3g}, {total_steps} steps"
        )
        skip = self.backbone.no_weight_decay() if hp.no_weight_decay_tokens else ()
        groups = param_groups_weight_decay(self.backbone, hp.weight_decay, skip)
        if self.probe is not None:
            groups.append({"params": list(self.probe.parameters()), "weight_decay": 0.0, "lr": hp.probe_lr})
        optimizer = adamw(groups, lr, tuple(hp.betas))
        max_epochs = self.trainer.max_epochs
        steps_per_epoch = total_steps / max_epochs if max_epochs and max_epochs > 0 else total_steps
        schedule = partial(
            warmup_cosine, warmup_steps=hp.warmup_epochs * steps_per_epoch, total_steps=total_steps,
            min_ratio=hp.min_lr / lr if lr > 0 else 0.0,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
