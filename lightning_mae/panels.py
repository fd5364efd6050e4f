"""Mask panels: input | random mask | informed mask | reconstruction | partition, for a fixed set of images."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import make_grid, save_image

from lightning_mae.mae import MaskedAutoencoderViT
from lightning_mae.masking import SelfGuidedMasking, random_ids_shuffle
from lightning_mae.pretrain import MAEPretraining, split_batch
from lightning_run import run_dir

# The partition column: the object side (masked first) and the rest, two colours that read in grey too.
OBJECT_COLOR, REST_COLOR = (0.95, 0.45, 0.10), (0.15, 0.35, 0.80)
PADDING = 2


def panel_titles(masking: SelfGuidedMasking) -> list[str]:
    """The column titles of ``mask_panel``, left to right."""
    partition = "NCut" if masking.partition == "ncut" else "PCA"
    return ["input", "random mask", "informed mask", "reconstruction", f"{partition} partition"]


def _title_strip(titles: list[str], tile: int, width: int) -> Tensor:
    """A white ``[3, h, width]`` strip with ``titles`` centred over the grid's columns of ``tile`` pixels."""
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    height = max(font.getbbox(t)[3] for t in titles) + 2 * PADDING + 2
    strip = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(strip)
    for i, title in enumerate(titles):
        left = PADDING + i * (tile + PADDING)
        text_width = font.getbbox(title)[2]
        draw.text((left + max(0, (tile - text_width) // 2), PADDING), title, fill="black", font=font)
    return torch.from_numpy(np.asarray(strip, dtype=np.float32) / 255).permute(2, 0, 1)


@torch.no_grad()
def mask_panel(
    model: MaskedAutoencoderViT, masking: SelfGuidedMasking, imgs: Tensor, epoch: int,
    max_epochs: int | None = None, gray: float = 0.5, min_tile: int = 112, titles: bool = True,
) -> Tensor:
    """A ``[3, H', W']`` grid, one row per image: input | random mask | informed mask | reconstruction |
    partition, under a strip of column titles (``titles``).

    The informed mask is computed even before ``start_epoch`` (a preview of what the model's own
    clustering would mask); the reconstruction uses the mask that training uses at ``epoch``. The
    partition is the bi-partition the informed mask was made from (NCut, or PCA under
    ``partition: pca``): orange = the object side, masked first; blue = the rest. Images are min-max
    scaled per image for display and enlarged by an integer factor with nearest neighbour to at least
    ``min_tile`` pixels (28x28 Fashion-MNIST: x4 = 112 px), so every patch stays a sharp square.
    """
    n, len_keep = model.num_patches, masking.len_keep(model.num_patches)
    random_ids = random_ids_shuffle(imgs.shape[0], n, imgs.device, torch.Generator(imgs.device).manual_seed(0))
    info: dict[str, Tensor] = {}
    informed_ids = masking.informed_ids(imgs, model, masking.hint_ratio(epoch, max_epochs), info=info)
    train_ids = informed_ids if masking.is_informed(epoch) else random_ids
    out = model(imgs, train_ids, len_keep)

    patches = model.patchify(imgs)
    pred = out.pred.float()
    if model.norm_pix_loss:  # undo the per-patch normalisation with the true patch statistics
        pred = pred * (patches.var(-1, keepdim=True) + 1.0e-6) ** 0.5 + patches.mean(-1, keepdim=True)

    def masked(ids: Tensor) -> Tensor:
        mask = torch.ones(imgs.shape[0], n, 1, device=imgs.device)
        mask.scatter_(1, ids[:, :len_keep, None], 0.0)
        return model.unpatchify(torch.where(mask.bool(), torch.full_like(patches, float("nan")), patches))

    mask = out.mask[..., None].bool()
    recon = model.unpatchify(torch.where(mask, pred, patches))
    columns = [imgs, masked(random_ids), masked(informed_ids), recon]
    lo = imgs.amin(dim=(1, 2, 3), keepdim=True)
    scale = (imgs.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-6)

    def display(c: Tensor) -> Tensor:  # [B, 3, H, W] in [0, 1], masked patches grey
        c = ((c.float() - lo) / scale).clamp(0, 1).nan_to_num(gray)
        return c.expand(-1, 3, -1, -1) if c.shape[1] == 1 else c

    columns = [display(c) for c in columns]
    grid = model.img_size // model.patch_size
    side = info["partition"].reshape(-1, 1, grid, grid)
    side = side.repeat_interleave(model.patch_size, 2).repeat_interleave(model.patch_size, 3)
    colors = [torch.tensor(c, device=imgs.device)[None, :, None, None] for c in (OBJECT_COLOR, REST_COLOR)]
    columns.append(torch.where(side, *colors))
    rows = torch.stack(columns, dim=1).flatten(0, 1)  # image-major: each row is one image
    factor = max(1, math.ceil(min_tile / rows.shape[-1]))
    if factor > 1:
        rows = F.interpolate(rows, scale_factor=factor, mode="nearest")
    panel = make_grid(rows.cpu(), nrow=len(columns), padding=PADDING, pad_value=1.0)
    if titles:
        panel = torch.cat([_title_strip(panel_titles(masking), rows.shape[-1], panel.shape[-1]), panel], dim=1)
    return panel


class MaskPanels(pl.Callback):
    """Every ``every_n_epochs`` epochs, draws ``mask_panel`` for the first ``num_images`` validation
    images (the training batch if there is no validation set) and logs it to W&B, or writes
    ``<run_dir>/panels/epoch_XXXX.png`` when no ``WandbLogger`` is used."""

    def __init__(self, every_n_epochs: int = 5, num_images: int = 8) -> None:
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError("every_n_epochs and num_images must be >= 1")
        self.every_n_epochs, self.num_images = every_n_epochs, num_images
        self.images: Tensor | None = None
        self.location: str | None = None

    def _fixed_images(self, trainer: pl.Trainer) -> Tensor | None:
        loader = trainer.val_dataloaders
        if isinstance(loader, (list, tuple)):
            loader = loader[0] if loader else None
        if self.images is None and loader is not None:
            self.images = split_batch(next(iter(loader)))[0][: self.num_images]
        return self.images

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
        # Fallback when the run has no validation set: the first training images.
        if self.images is None and trainer.val_dataloaders is None:
            self.images = split_batch(batch)[0][: self.num_images].detach().clone()

    @rank_zero_only
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if trainer.sanity_checking or not ((epoch + 1) % self.every_n_epochs == 0 or last):
            return
        if not isinstance(pl_module, MAEPretraining):
            raise TypeError("MaskPanels needs an MAEPretraining module")
        imgs = self._fixed_images(trainer)
        if imgs is None:
            return  # neither a validation set nor a training batch yet
        was_training = pl_module.training
        pl_module.eval()
        panel = mask_panel(pl_module.backbone, pl_module.masking, imgs.to(pl_module.device), epoch,
                           trainer.max_epochs)
        pl_module.train(was_training)
        caption = " | ".join(panel_titles(pl_module.masking))
        wandb = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if wandb is not None:
            # uint8 HWC: W&B's own float-tensor conversion is not reliable across versions
            image = panel.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            wandb.log_image("mask_panels", [image], step=trainer.global_step, caption=[f"epoch {epoch}: {caption}"])
            self.location = f"W&B run {wandb.experiment.dir} (media/images/mask_panels_*)"
        else:
            path = Path(run_dir(trainer), "panels", f"epoch_{epoch:04d}.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image(panel, path)
            self.location = str(path.parent)

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.location:
            rank_zero_info(f"Mask panels: {self.location}")
