"""ADE20K: the DataModule on a fixture in the ADEChallengeData2016 layout, UperNet on ViT features,
sliding-window inference, one training step and one evaluation with mIoU over the set."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

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


def miou_reference(pairs, num_classes: int, ignore_index: int = 255) -> float:
    """mIoU as ADE20K (mmseg) defines it: intersection and union of each class summed over all the
    (prediction, label) pairs, IoU per class, mean over the classes with a non-empty union."""
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for pred, label in pairs:
        pred, label = np.asarray(pred), np.asarray(label)
        valid = label != ignore_index
        for c in range(num_classes):
            inter[c] += ((pred == c) & (label == c) & valid).sum()
            union[c] += (((pred == c) | (label == c)) & valid).sum()
    return float((inter[union > 0] / union[union > 0]).mean())


QUIET = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)


def test_one_training_step_and_one_evaluation(ade_root, tmp_path, monkeypatch):
    pl.seed_everything(0)
    model = SemanticSegmentation(encoder=ViTEncoder(**TINY), num_classes=3, img_size=32, channels=16,
                                 aux_channels=8, stride=16, warmup_steps=1)
    dm = ADE20K(str(ade_root), crop_size=32, batch_size=2, num_workers=0)
    quiet = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                 enable_model_summary=False, num_sanity_val_steps=0)
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, **quiet)
    trainer.fit(model, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    # the real model's predictions, as the metric gets them: the logged values are the reference's on them
    seen, update = [], model.miou.update

    def record(preds, target):
        seen.append((preds, target))
        update(preds, target)

    monkeypatch.setattr(model.miou, "update", record)
    [metrics] = pl.Trainer(**quiet).validate(model, datamodule=dm, verbose=False)
    assert [tuple(t.shape) for _, t in seen] == [(1, 40, 56), (1, 30, 44)]  # each label at its own size
    assert metrics["val/mIoU"] == pytest.approx(miou_reference(seen, 3), abs=1e-6)
    valid = [t != 255 for _, t in seen]
    right = sum(int((p == t)[v].sum()) for (p, t), v in zip(seen, valid))
    assert metrics["val/pixel_acc"] == pytest.approx(right / sum(int(v.sum()) for v in valid), abs=1e-6)


# --- mIoU: known answers ------------------------------------------------------------------------------
def predicts_its_input(model: SemanticSegmentation, monkeypatch) -> None:
    """The network's logits are the one-hot of the input's first channel: an image is its own prediction."""
    k = model.hparams.num_classes
    monkeypatch.setattr(model.model, "forward",
                        lambda x: (F.one_hot(x[:, 0].round().long(), k).permute(0, 3, 1, 2).float(), None))


def segmentation_module(**kwargs) -> SemanticSegmentation:
    return SemanticSegmentation(encoder=ViTEncoder(**TINY), num_classes=3, img_size=32, channels=16, aux_channels=8,
                                stride=16, **kwargs)


# Two 2 x 4 images (3 classes, 255 = ignored). Summed over both: class 0 intersection 4, union 5 + 1;
# class 1 intersection 3 + 6, union 4 + 7; class 2 neither labelled nor predicted (the pixel predicted 2 is
# ignored): mIoU (4/6 + 9/11) / 2 = 49/66 = 0.742. Per image: (4/5 + 3/4) / 2 and (0 + 6/7) / 2, whose mean
# is 0.602. Pixel accuracy 13/15 (per-image mean (7/8 + 6/7) / 2).
LABELS = torch.tensor([[[0, 0, 0, 0], [1, 1, 1, 1]],
                       [[1, 1, 1, 1], [1, 1, 1, 255]]])
PREDS = torch.tensor([[[0, 0, 0, 0], [0, 1, 1, 1]],
                      [[0, 1, 1, 1], [1, 1, 1, 2]]])
ACCUMULATED_MIOU, PER_IMAGE_MIOU = (4 / 6 + 9 / 11) / 2, ((4 / 5 + 3 / 4) / 2 + (0 + 6 / 7) / 2) / 2


def test_the_fixture_tells_accumulated_from_per_image_miou():
    assert miou_reference(zip(PREDS, LABELS), 3) == pytest.approx(ACCUMULATED_MIOU) == pytest.approx(49 / 66)
    assert np.mean([miou_reference([pair], 3) for pair in zip(PREDS, LABELS)]) == pytest.approx(PER_IMAGE_MIOU)
    assert abs(ACCUMULATED_MIOU - PER_IMAGE_MIOU) > 0.1


@pytest.mark.parametrize("preds,miou,pixel_acc", [
    pytest.param(LABELS.where(LABELS != 255, 2), 1.0, 1.0, id="ground-truth"),  # wrong only where ignored
    pytest.param((LABELS + 1) % 3, 0.0, 0.0, id="all-wrong"),  # every labelled pixel in another class
    pytest.param(PREDS, ACCUMULATED_MIOU, 13 / 15, id="accumulated-over-the-set"),
])
def test_miou_of_known_predictions(monkeypatch, preds, miou, pixel_acc):
    model = segmentation_module()
    predicts_its_input(model, monkeypatch)
    images = preds[:, None].expand(-1, 3, -1, -1).float()  # each image is its prediction
    loader = DataLoader(list(zip(images, LABELS)), batch_size=1)  # one image per step
    [val] = pl.Trainer(**QUIET).validate(model, loader, verbose=False)
    [test] = pl.Trainer(**QUIET).test(model, loader, verbose=False)
    for stage, metrics in (("val", val), ("test", test)):
        assert metrics[f"{stage}/mIoU"] == pytest.approx(miou, abs=1e-6)
        assert metrics[f"{stage}/pixel_acc"] == pytest.approx(pixel_acc, abs=1e-6)
    if preds is PREDS:  # the set's mIoU, not the mean of the images' mIoU
        assert val["val/mIoU"] != pytest.approx(PER_IMAGE_MIOU, abs=1e-3)


def test_miou_on_the_ade20k_fixture_of_a_constant_prediction(ade_root, monkeypatch):
    """Every pixel predicted as class 1, on the DataModule's validation set (labels at their original size,
    0 = "other" ignored): class 1's IoU is its share of the labelled pixels, classes 0 and 2 (labelled,
    never predicted) score 0, so mIoU is a third of the pixel accuracy."""
    files = sorted((ade_root / "annotations" / "validation").glob("*.png"))
    labels = [reduce_zero_label(np.array(Image.open(f))) for f in files]
    labelled = sum(int((label != 255).sum()) for label in labels)
    share = sum(int((label == 1).sum()) for label in labels) / labelled
    assert miou_reference([(np.ones_like(label), label) for label in labels], 3) == pytest.approx(share / 3)
    model = segmentation_module()
    class_1 = lambda x: F.one_hot(torch.ones_like(x[:, 0], dtype=torch.long), 3).permute(0, 3, 1, 2).float()  # noqa: E731
    monkeypatch.setattr(model.model, "forward", lambda x: (class_1(x), None))
    dm = ADE20K(str(ade_root), crop_size=32, batch_size=2, num_workers=0)
    [val] = pl.Trainer(**QUIET).validate(model, datamodule=dm, verbose=False)
    assert val["val/pixel_acc"] == pytest.approx(share, abs=1e-6)
    assert val["val/mIoU"] == pytest.approx(share / 3, abs=1e-6)
