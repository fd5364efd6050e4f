"""ADE20K: the DataModule on a fixture in the ADEChallengeData2016 layout, UperNet on ViT features,
sliding-window inference, one training step and one evaluation with mIoU over the set."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from datamodules.dense.ade20k import ADE20K, reduce_zero_label
from lightning_mae.downstream.encoder import ViTEncoder
from lightning_mae.downstream.segmentation import SemanticSegmentation, ViTUperNet, sliding_window_logits

TINY = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=4, num_heads=4)


def write_ade(root: Path, sizes: dict[str, list[tuple[int, int]]], classes: int = 3) -> Path:
    root = root / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for split, folder in (("train", "training"), ("val", "validation")):
        (root / "images" / folder).mkdir(parents=True)
        (root / "annotations" / folder).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes[split]):
            name = f"ADE_{folder}_{i:08d}"
            pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / folder / f"{name}.jpg")
            label = np.zeros((h, w), dtype=np.uint8)  # 0 = "other" in the corner rows
            label[2:] = 1 + (np.arange(w)[None, :] * classes // w)  # vertical stripes of classes 1..classes
            Image.fromarray(label, mode="L").save(root / "annotations" / folder / f"{name}.png")
    return root


@pytest.fixture
def ade_root(tmp_path) -> Path:
    return write_ade(tmp_path, {"train": [(40, 56), (48, 40), (36, 36), (50, 60)], "val": [(40, 56), (30, 44)]})


def test_reduce_zero_label():
    assert reduce_zero_label(np.array([0, 1, 150])).tolist() == [255, 0, 149]


def test_ade20k_datamodule_reads_the_layout(ade_root):
    dm = ADE20K(str(ade_root), crop_size=32, batch_size=2, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    imgs, labels = next(iter(dm.train_dataloader()))
    assert imgs.shape == (2, 3, 32, 32) and imgs.dtype == torch.float32
    assert labels.shape == (2, 32, 32) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= {0, 1, 2, 255}
    img, label = next(iter(dm.val_dataloader()))
    assert img.shape == (1, 3, 32, 44) and label.shape == (1, 40, 56)  # short side -> 32; label as is
    (ade_root / "annotations" / "validation" / "ADE_validation_00000001.png").unlink()
    with pytest.raises(FileNotFoundError, match="annotations missing"):
        ADE20K(str(ade_root), crop_size=32).prepare_data()
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016 layout"):
        ADE20K(str(ade_root / "nope")).prepare_data()


def test_upernet_gives_full_resolution_logits_from_the_scaled_blocks():
    model = ViTUperNet(ViTEncoder(**TINY), num_classes=5, channels=16, aux_channels=8)
    assert model.blocks == [0, 1, 2, 3]
    logits, aux = model.train()(torch.randn(2, 3, 32, 48))
    assert logits.shape == aux.shape == (2, 5, 32, 48)
    logits, aux = model.eval()(torch.randn(1, 3, 32, 32))
    assert aux is None
    with pytest.raises(ValueError, match="4 blocks"):
        ViTUperNet(ViTEncoder(**TINY), num_classes=5, blocks=[1, 2])


class PositionCode(nn.Module):
    """Logits that encode each pixel's absolute x coordinate inside the window: the average over windows
    tells whether they were placed and averaged correctly."""

    def forward(self, x):
        b, _, h, w = x.shape
        return x[:, :1].expand(b, 2, h, w).clone()


def test_sliding_window_averages_overlapping_crops():
    img = torch.arange(40.0).expand(1, 3, 30, 40).clone()  # value = column index
    out = sliding_window_logits(PositionCode(), img, num_classes=2, crop=16, stride=10)
    torch.testing.assert_close(out, img[:, :2])  # a pixel-wise model is unchanged by windowing
    small = sliding_window_logits(PositionCode(), img[..., :10, :12], num_classes=2, crop=16, stride=10)
    assert small.shape == (1, 2, 10, 12)  # padded to a window, cropped back
    with pytest.raises(ValueError, match="stride"):
        sliding_window_logits(PositionCode(), img, 2, crop=16, stride=20)


def test_one_training_step_and_one_evaluation(ade_root, tmp_path):
    pl.seed_everything(0)
    model = SemanticSegmentation(encoder=ViTEncoder(**TINY), num_classes=3, img_size=32, channels=16,
                                 aux_channels=8, stride=16, warmup_steps=1)
    dm = ADE20K(str(ade_root), crop_size=32, batch_size=2, num_workers=0)
    quiet = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                 enable_model_summary=False, num_sanity_val_steps=0)
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, **quiet)
    trainer.fit(model, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    [metrics] = pl.Trainer(**quiet).validate(model, datamodule=dm, verbose=False)
    assert 0.0 <= metrics["val/mIoU"] <= 1.0 and 0.0 <= metrics["val/pixel_acc"] <= 1.0
