"""ImageNet (or any dataset) in the standard ImageFolder layout: ``<data_dir>/train/<class>/*.JPEG``
and ``<data_dir>/val/<class>/*.JPEG``, with the MAE pretraining transforms."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import InterpolationMode, v2

from datamodules.images import OnBadImage, image_folder, skipped_images_summary
from datamodules.loaders import make_loader

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageNet(pl.LightningDataModule):
    """ImageFolder DataModule with MAE's augmentation: RandomResizedCrop(scale 0.2-1, bicubic) + flip.

    Args:
        data_dir: root holding ``train/`` and ``val/`` class folders (``val/`` optional for pretraining).
        batch_size: per-device batch size.
        num_workers: DataLoader worker processes per device.
        img_size: training crop / evaluation centre-crop side.
        crop_scale: ``RandomResizedCrop`` scale range.
        eval_crop_ratio: evaluation resizes the short side to ``img_size / eval_crop_ratio`` first.
        on_bad_image: a corrupt or truncated image file ``"raise"``s an error naming it, or is ``"skip"``ped:
            replaced by the next readable file, warned about once, and listed at the end of the run.
    """

    def __init__(
        self,
        data_dir: str = "data/imagenet",
        batch_size: int = 64,
        num_workers: int = 10,
        img_size: int = 224,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        eval_crop_ratio: float = 0.875,
        on_bad_image: OnBadImage = "raise",
    ) -> None:
        super().__init__()
        if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale}")
        if on_bad_image not in ("raise", "skip"):
            raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data_dir, self.batch_size, self.num_workers = Path(data_dir), batch_size, num_workers
        self.img_size, self.crop_scale, self.eval_crop_ratio = img_size, crop_scale, eval_crop_ratio
        self.mean, self.std, self.on_bad_image = IMAGENET_MEAN, IMAGENET_STD, on_bad_image
        self.num_classes: int | None = None

    def _folder(self, split: str, required: bool) -> Path | None:
        path = self.data_dir / split
        if path.is_dir() and any(p.is_dir() for p in path.iterdir()):
            return path
        if required and path.is_dir():
            raise FileNotFoundError(f"{path} has no class folders (expected {path}/<class>/<image>)")
        if required:
            raise FileNotFoundError(
                f"no ImageFolder split at {path} (expected {path}/<class>/<image>). Download ImageNet-1K from "
                "https://image-net.org (ILSVRC2012 train and val archives), arrange val/ into class folders "
                "(e.g. with the valprep.sh script widely used for this), and pass --data.init_args.data_dir."
            )
        return None

    def train_transform(self) -> v2.Transform:
        return v2.Compose([
            v2.PILToTensor(),
            v2.RandomResizedCrop(self.img_size, scale=self.crop_scale, interpolation=InterpolationMode.BICUBIC,
                                 antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(self.mean, self.std),
        ])

    def eval_transform(self) -> v2.Transform:
        return v2.Compose([
            v2.PILToTensor(),
            v2.Resize(int(self.img_size / self.eval_crop_ratio), interpolation=InterpolationMode.BICUBIC,
                      antialias=True),
            v2.CenterCrop(self.img_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(self.mean, self.std),
        ])

    def prepare_data(self) -> None:
        self._folder("train", required=True)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_set = image_folder(self._folder("train", required=True), self.train_transform(),
                                          self.on_bad_image)
            self.num_classes = len(self.train_set.classes)
        val = self._folder("val", required=stage in ("validate", "test", "predict"))
        self.val_set = image_folder(val, self.eval_transform(), self.on_bad_image) if val is not None else None

    def teardown(self, stage: str) -> None:
        summary = skipped_images_summary([getattr(self, "train_set", None), getattr(self, "val_set", None)])
        if summary:
            warnings.warn(f"ImageNet ({self.data_dir}): {summary}", stacklevel=2)

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train_set, self.batch_size, self.num_workers, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []  # pretraining without a val/ split
        return make_loader(self.val_set, self.batch_size, self.num_workers, shuffle=False, drop_last=False)

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()
