"""COCO: the DataModule on a fixture in the official instances format, the ViTDet simple feature
pyramid, and one Mask R-CNN training step and evaluation with AP_box / AP_mask."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.dense.coco import COCODetection
from lightning_mae.downstream.detection import InstanceSegmentation, SimpleFeaturePyramid
from lightning_mae.downstream.encoder import ViTEncoder

# uncompressed RLE (column-major runs) of a 2x6 region at rows 44-45, columns 0-5 of a 48x64 image
CROWD_RLE = [44, 2, 46, 2, 46, 2, 46, 2, 46, 2, 46, 2, 2786]  # column-major runs summing to 48 * 64
TINY = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=4, num_heads=4)


def write_coco(root: Path) -> Path:
    """Two splits of 3 images (64x48) with squares of category 3 and triangles of category 7 (polygons), and
    one crowd region (RLE) in each."""
    rng = np.random.default_rng(0)
    categories = [{"id": 3, "name": "car", "supercategory": "vehicle"},
                  {"id": 7, "name": "train", "supercategory": "vehicle"}]
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir()
        images, anns = [], []
        for i in range(3):
            image_id = 10 * i + 1
            pixels = rng.integers(0, 60, (48, 64, 3), dtype=np.uint8)
            x, y = 4 + 6 * i, 6
            pixels[y:y + 20, x:x + 20] = 220  # the square object
            Image.fromarray(pixels).save(root / f"{split}2017" / f"{image_id:012d}.jpg")
            images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": 48, "width": 64})
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 3, "iscrowd": 0, "area": 400.0,
                         "bbox": [x, y, 20, 20], "segmentation": [[x, y, x + 20, y, x + 20, y + 20, x, y + 20]]})
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 7, "iscrowd": 0, "area": 98.0,
                         "bbox": [40, 30, 14, 14], "segmentation": [[40, 30, 54, 30, 40, 44]]})
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 3, "iscrowd": 1, "area": 12.0,
                         "bbox": [0, 44, 6, 2], "segmentation": {"size": [48, 64], "counts": CROWD_RLE}})
        doc = {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": categories}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc))
    return root


def test_coco_datamodule_reads_the_instances_format(tmp_path):
    dm = COCODetection(str(write_coco(tmp_path)), batch_size=2, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 3  # two categories + background
    images, targets = next(iter(dm.val_dataloader()))
    img, t = images[0], targets[0]
    assert img.shape == (3, 48, 64) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    assert t["labels"].tolist() == [1, 2, 1] and t["iscrowd"].tolist() == [0, 0, 1]  # ids 3, 7 -> 1, 2
    assert t["masks"].shape == (3, 48, 64) and t["masks"].dtype == torch.bool
    assert int(t["masks"][0].sum()) >= 400 and t["boxes"][0].tolist() == [4.0, 6.0, 24.0, 26.0]
    assert int(t["masks"][2].sum()) == 12  # the crowd RLE
    _, train_targets = next(iter(dm.train_dataloader()))
    assert all(tt["iscrowd"].sum() == 0 for tt in train_targets)  # crowds are not trained on
    (tmp_path / "annotations" / "instances_val2017.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="instances_val2017.json"):
        COCODetection(str(tmp_path), num_workers=0).setup("validate")
    with pytest.raises(FileNotFoundError, match="COCO 2017 layout"):
        COCODetection(str(tmp_path / "none")).prepare_data()


def test_simple_feature_pyramid_strides():
    pyramid = SimpleFeaturePyramid(ViTEncoder(**TINY), out_channels=16)
    feats = pyramid(torch.randn(1, 3, 64, 96))  # patch 8: the "stride 16" level is at stride 8 here
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    assert all(f.shape[1] == 16 for f in feats.values())


def test_one_training_step_and_one_evaluation(tmp_path):
    pl.seed_everything(0)
    dm = COCODetection(str(write_coco(tmp_path)), batch_size=2, num_workers=0)
    model = InstanceSegmentation(encoder=ViTEncoder(**TINY), num_classes=3, min_size=64, max_size=96,
                                 detections_per_img=20, warmup_steps=1)
    quiet = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                 enable_model_summary=False, num_sanity_val_steps=0)
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, **quiet)
    trainer.fit(model, datamodule=dm)
    losses = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    assert {"train/loss_classifier", "train/loss_box_reg", "train/loss_mask", "train/loss_objectness"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    [metrics] = pl.Trainer(**quiet).validate(model, datamodule=dm, verbose=False)
    for key in ("val/AP_box", "val/AP_mask", "val/AP_box_50", "val/AP_mask_50"):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
