"""COCO: the DataModule on a fixture in the official instances format, the ViTDet simple feature
pyramid, and one Mask R-CNN training step and evaluation with AP_box / AP_mask."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

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
    # the real model's predictions go through the evaluation (their values: the known-answer tests below)
    [metrics] = pl.Trainer(**quiet).validate(model, datamodule=dm, verbose=False)
    assert set(metrics) == {f"val/{k}{s}" for k in ("AP_box", "AP_mask") for s in ("", "_50", "_75")}


# --- AP_box / AP_mask: known answers ------------------------------------------------------------------
AP_KEYS = ("AP_box", "AP_box_50", "AP_box_75", "AP_mask", "AP_mask_50", "AP_mask_75")


def ground_truth(target: dict[str, Tensor]) -> dict[str, Tensor]:
    """The non-crowd objects of ``target`` as Mask R-CNN's eval output: score 1, soft masks [N, 1, H, W]."""
    keep = target["iscrowd"] == 0
    return {"boxes": target["boxes"][keep].as_subclass(Tensor).clone(), "labels": target["labels"][keep].clone(),
            "scores": torch.ones(int(keep.sum())), "masks": target["masks"][keep].float()[:, None]}


def swap_labels(target):
    pred = ground_truth(target)
    pred["labels"] = 3 - pred["labels"]  # squares (1) called triangles (2) and vice versa
    return pred


def shift_squares(target):
    """Squares (20 x 20) moved 4 px right: box and mask IoU 16/24 = 0.67, a match at IoU thresholds
    0.50-0.65 (4 of the 10), not at 0.70-0.95."""
    pred = ground_truth(target)
    square = pred["labels"] == 1
    pred["boxes"][square, 0::2] += 4
    pred["masks"][square] = pred["masks"][square].roll(4, dims=-1)
    return pred


def false_positive_first(target):
    """A square-class false positive (in the empty top right corner of the last image, alone in the last
    batch) scored above all the true detections."""
    pred = ground_truth(target)
    pred["scores"][:] = 0.9
    if int(target["image_id"]) == 21:
        mask = torch.zeros_like(pred["masks"][:1])
        mask[..., 2:12, 44:60] = 1.0
        pred = {"boxes": torch.cat([torch.tensor([[44.0, 2.0, 60.0, 12.0]]), pred["boxes"]]),
                "labels": torch.cat([torch.tensor([1]), pred["labels"]]),
                "scores": torch.cat([torch.tensor([1.0]), pred["scores"]]),
                "masks": torch.cat([mask, pred["masks"]])}
    return pred


class Oracle(nn.Module):
    """Stands in for the Mask R-CNN: returns the predictions ``FeedOracle`` derived from the batch's targets."""

    def __init__(self) -> None:
        super().__init__()
        self.preds: list[dict[str, Tensor]] | None = None

    def forward(self, images: list[Tensor], targets=None) -> list[dict[str, Tensor]]:
        preds, self.preds = self.preds, None
        assert preds is not None and len(preds) == len(images)
        return preds


class FeedOracle(pl.Callback):
    def __init__(self, oracle: Oracle, predict: Callable[[dict], dict]) -> None:
        self.oracle, self.predict = oracle, predict

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.oracle.preds = [self.predict(t) for t in batch[1]]

    on_test_batch_start = on_validation_batch_start


@pytest.mark.parametrize("predict,expected", [
    # every object found, exactly: AP 1 at every IoU threshold
    pytest.param(ground_truth, dict.fromkeys(AP_KEYS, 1.0), id="ground-truth"),
    # every object found with the other class: no true positive
    pytest.param(swap_labels, dict.fromkeys(AP_KEYS, 0.0), id="swapped-labels"),
    # squares: AP 1 at 4 of 10 thresholds = 0.4 (1 at IoU 0.5, 0 at 0.75); triangles exact: AP 1;
    # AP is the mean over the two classes
    pytest.param(shift_squares, {"AP_box": 0.7, "AP_box_50": 1.0, "AP_box_75": 0.5,
                                 "AP_mask": 0.7, "AP_mask_50": 1.0, "AP_mask_75": 0.5}, id="shifted-squares"),
    # squares in score order FP, TP, TP, TP: precision 3/4 at every recall level (the envelope of 0, 1/2,
    # 2/3, 3/4), AP 0.75; triangles 1; mean 0.875 at every threshold
    pytest.param(false_positive_first, dict.fromkeys(AP_KEYS, 0.875), id="false-positive-first"),
])
def test_evaluation_scores_known_predictions(tmp_path, predict, expected):
    dm = COCODetection(str(write_coco(tmp_path)), batch_size=2, num_workers=0)  # 3 images: batches of 2 and 1
    model = InstanceSegmentation(encoder=ViTEncoder(**TINY), num_classes=3, min_size=64, max_size=96)
    model.model = oracle = Oracle()
    quiet = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                 enable_model_summary=False, callbacks=[FeedOracle(oracle, predict)])
    [val] = pl.Trainer(**quiet).validate(model, datamodule=dm, verbose=False)
    assert {k: round(val[f"val/{k}"], 6) for k in AP_KEYS} == expected
    if predict is ground_truth:  # the test loop reports the same
        [test] = pl.Trainer(**quiet).test(model, datamodule=dm, verbose=False)
        assert {k: round(test[f"test/{k}"], 6) for k in AP_KEYS} == expected


def test_shifted_squares_overlap_their_objects_by_two_thirds(tmp_path):
    """The IoU ``shift_squares`` is built on, measured on the fixture's own boxes and masks."""
    dm = COCODetection(str(write_coco(tmp_path)), batch_size=3, num_workers=0)
    dm.setup("validate")
    _, targets = next(iter(dm.val_dataloader()))
    for target in targets:
        pred, truth = shift_squares(target), ground_truth(target)
        square = truth["labels"] == 1
        masks, shifted = truth["masks"][square, 0] > 0.5, pred["masks"][square, 0] > 0.5
        assert ((masks & shifted).sum() / (masks | shifted).sum()).item() == pytest.approx(16 / 24)
        (x0, y0, x1, y1), (u0, _, u1, _) = truth["boxes"][square][0].tolist(), pred["boxes"][square][0].tolist()
        assert (x1 - u0) * (y1 - y0) / ((u1 - x0) * (y1 - y0)) == pytest.approx(16 / 24)
