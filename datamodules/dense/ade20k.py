"""ADE20K (SceneParsing, ``ADEChallengeData2016/``): ``images/{training,validation}/*.jpg`` and
``annotations/{training,validation}/*.png`` with 0 = "other" and 1..150 the classes.

Labels are shifted to 0..149 with "other" -> 255 (ignored), as in mmseg's ``reduce_zero_label``.
Training: random resize (ratio 0.5-2 of a ``2048 x crop`` scale), random crop (padded with 255),
flip, colour jitter. Evaluation: the image resized to a short side of ``crop`` (long side at most 4x),
the label at its original size (the model's logits are resized to it), batch size 1.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from datamodules.classification.base import IMAGENET_MEAN, IMAGENET_STD
from datamodules.loaders import make_loader

SPLIT_DIRS = {"train": "training", "val": "validation"}


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """0 ("other") -> 255 (ignored), k -> k - 1."""
    label = label.astype(np.int64) - 1
    label[label < 0] = 255
    return label


class ADE20KSegments(Dataset):
    """Pairs of ``images/<split>/X.jpg`` and ``annotations/<split>/X.png`` with a joint transform."""

    def __init__(self, root: Path, split: str, transform: v2.Transform, eval_size: int | None = None) -> None:
        img_dir, ann_dir = root / "images" / SPLIT_DIRS[split], root / "annotations" / SPLIT_DIRS[split]
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise FileNotFoundError(
                    f"{d} not found: expected the ADEChallengeData2016 layout (images/ and annotations/ with training/ "
                    "and validation/), from http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
                )
        self.images = sorted(img_dir.glob("*.jpg"))
        if not self.images:
            raise FileNotFoundError(f"no .jpg images in {img_dir}")
        self.labels = [ann_dir / (p.stem + ".png") for p in self.images]
        missing = [str(p) for p in self.labels if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} annotations missing in {ann_dir}, e.g. {missing[0]}")
        self.transform, self.eval_size = transform, eval_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        try:
            img = tv_tensors.Image(TF.pil_to_tensor(Image.open(self.images[index]).convert("RGB")))
            label_img = Image.open(self.labels[index])
            if label_img.mode not in ("L", "P"):
                raise ValueError(f"mode {label_img.mode}, expected a single-channel PNG")
            label = torch.from_numpy(reduce_zero_label(np.asarray(label_img)))
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read ADE20K pair {self.images[index]} / {self.labels[index]}: {err}") from err
        if label.shape != img.shape[-2:]:
            raise ValueError(f"{self.labels[index]} is {tuple(label.shape)} but its image is {tuple(img.shape[-2:])}")
        if self.eval_size is None:
            img, mask = self.transform(img, tv_tensors.Mask(label[None]))
            return img, mask[0].long()
        return self.transform(img), label  # label kept at the original resolution for scoring


class ADE20K(pl.LightningDataModule):
    """ADE20K semantic segmentation (20,210 train / 2,000 val images, 150 classes).

    Args:
        data_dir: the ``ADEChallengeData2016`` folder.
        crop_size: training crop side (the encoder's input size) and evaluation short side.
        ratio_range: random rescale range in training, relative to a ``4*crop_size x crop_size`` scale.
        batch_size: per-device training batch (evaluation always uses 1: images differ in size).
        num_workers: DataLoader workers.
    """

    num_classes = 150

    def __init__(self, data_dir: str = "data/ADEChallengeData2016", crop_size: int = 512,
                 ratio_range: tuple[float, float] = (0.5, 2.0), batch_size: int = 2, num_workers: int = 4) -> None:
        super().__init__()
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must satisfy 0 < min <= max, got {ratio_range}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data_dir, self.crop_size, self.ratio_range = Path(data_dir), crop_size, ratio_range
        self.batch_size, self.num_workers = batch_size, num_workers

    def train_transform(self) -> v2.Transform:
        lo, hi = (int(r * self.crop_size) for r in self.ratio_range)
        return v2.Compose([
            v2.RandomShortestSize(list(range(lo, hi + 1, max((hi - lo) // 16, 1))), max_size=4 * hi, antialias=True),
            v2.RandomCrop(self.crop_size, pad_if_needed=True, fill={tv_tensors.Mask: 255, "others": 0}),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.125, 0.5, 0.5, 0.05),  # a light version of mmseg's photometric distortion
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def eval_transform(self) -> v2.Transform:
        return v2.Compose([
            v2.Resize(self.crop_size, max_size=4 * self.crop_size, interpolation=InterpolationMode.BILINEAR,
                      antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def prepare_data(self) -> None:
        for split in SPLIT_DIRS:
            ADE20KSegments(self.data_dir, split, self.eval_transform(), eval_size=self.crop_size)

    def setup(self, stage: str) -> None:
        if stage == "fit" and not hasattr(self, "train_set"):
            self.train_set = ADE20KSegments(self.data_dir, "train", self.train_transform())
        if not hasattr(self, "val_set"):
            self.val_set = ADE20KSegments(self.data_dir, "val", self.eval_transform(), eval_size=self.crop_size)

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train_set, self.batch_size, self.num_workers, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.val_set, 1, self.num_workers, shuffle=False, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
