"""Downstream classification data: the MAE linear-probe / fine-tune transforms and a DataModule base.

``recipe="probe"``: RandomResizedCrop (bicubic) + flip (``main_linprobe.py``).
``recipe="finetune"``: timm's ``create_transform`` with RandAugment ``rand-m9-mstd0.5-inc1`` and random
erasing 0.25 (``main_finetune.py``). Evaluation for both: resize to ``img_size / eval_crop_ratio``,
centre crop. Each dataset subclass only says how to list its images and labels.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
from PIL import Image, ImageOps
from timm.data import create_transform
from timm.data.auto_augment import posterize as _timm_posterize
from torch.utils.data import DataLoader, Dataset, Subset

from datamodules.images import (
    ImageFiles,  # noqa: F401  (cub.py and inat.py import it from here)
    OnBadImage,
    image_files_of,
    skipped_images_summary,
)
from datamodules.loaders import check_train_subset, make_loader

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
Recipe = Literal["probe", "finetune"]


def classification_transform(
    train: bool,
    recipe: Recipe,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_scale: tuple[float, float] = (0.08, 1.0),
    hflip: bool = True,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    re_prob: float = 0.25,
    eval_crop_ratio: float = 0.875,
) -> Callable:
    """PIL image -> normalised tensor, for the given protocol (see the module docstring)."""
    if recipe not in ("probe", "finetune"):
        raise ValueError(f"recipe must be 'probe' or 'finetune', got {recipe!r}")
    if not train:
        return create_transform(img_size, is_training=False, interpolation="bicubic", crop_pct=eval_crop_ratio,
                                mean=tuple(mean), std=tuple(std))
    finetune = recipe == "finetune"
    transform = create_transform(
        img_size, is_training=True, scale=tuple(crop_scale), hflip=0.5 if hflip else 0.0, color_jitter=None,
        auto_augment=auto_augment if finetune else None, interpolation="bicubic",
        re_prob=re_prob if finetune else 0.0, re_mode="pixel", re_count=1, mean=tuple(mean), std=tuple(std),
    )
    for step in getattr(transform, "transforms", []):
        for op in getattr(step, "ops", []):
            if getattr(op, "aug_fn", None) is _timm_posterize:
                op.aug_fn = _posterize_at_least_one_bit
    return transform


def _posterize_at_least_one_bit(img: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    # timm's increasing posterize asks for 0 bits at magnitude 10, which Pillow >= 11 rejects (older
    # Pillow returned a black image); keep 1 bit instead.
    return img if bits_to_keep >= 8 else ImageOps.posterize(img, max(1, bits_to_keep))


class ImageArrays(Dataset):
    """In-memory uint8 images ``[N, H, W]`` (grey) or ``[N, H, W, 3]`` with integer labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels.astype(np.int64), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


class ClassificationDataModule(pl.LightningDataModule):
    """Base DataModule of the downstream datasets; the validation split is the standard test/val split.

    Args:
        data_dir: the dataset's root folder, in its standard layout (see each subclass).
        recipe: ``"probe"`` or ``"finetune"`` training transforms.
        batch_size: per-device batch size.
        num_workers: DataLoader worker processes.
        img_size: training crop / evaluation crop side.
        crop_scale: ``RandomResizedCrop`` scale range.
        hflip: random horizontal flips in training.
        auto_augment: timm RandAugment string for ``finetune`` (``None``: off).
        re_prob: random-erasing probability for ``finetune``.
        eval_crop_ratio: evaluation resizes to ``img_size / eval_crop_ratio`` before the centre crop.
        train_subset: keep only this many training images (quick runs); ``None`` = all.
        on_bad_image: a corrupt or truncated image file ``"raise"``s an error naming it, or is ``"skip"``ped:
            replaced by the next readable file, warned about once, and listed at the end of the run
            (datasets read from image files; in-memory arrays have no such failure).
    """

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    in_chans = 3

    def __init__(
        self,
        data_dir: str,
        recipe: Recipe = "probe",
        batch_size: int = 256,
        num_workers: int = 8,
        img_size: int = 224,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        hflip: bool = True,
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        re_prob: float = 0.25,
        eval_crop_ratio: float = 0.875,
        train_subset: int | None = None,
        on_bad_image: OnBadImage = "raise",
    ) -> None:
        super().__init__()
        if recipe not in ("probe", "finetune"):
            raise ValueError(f"recipe must be 'probe' or 'finetune', got {recipe!r}")
        if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        check_train_subset(train_subset, batch_size)
        if not 0.0 < eval_crop_ratio <= 1.0:
            raise ValueError(f"eval_crop_ratio must be in (0, 1], got {eval_crop_ratio}")
        if on_bad_image not in ("raise", "skip"):
            raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {on_bad_image!r}")
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.recipe, self.batch_size, self.num_workers = recipe, batch_size, num_workers
        self.img_size, self.crop_scale, self.hflip = img_size, tuple(crop_scale), hflip
        self.auto_augment, self.re_prob, self.eval_crop_ratio = auto_augment, re_prob, eval_crop_ratio
        self.train_subset, self.on_bad_image = train_subset, on_bad_image
        self.num_classes: int | None = getattr(type(self), "num_classes", None)

    # --- what a subclass provides ---------------------------------------------------------------------
    def check_files(self) -> None:
        """Raise ``FileNotFoundError`` with instructions when the dataset is not where it should be."""
        raise NotImplementedError

    def make_dataset(self, split: Literal["train", "val"], transform: Callable) -> Dataset:
        raise NotImplementedError

    # --- shared -----------------------------------------------------------------------------------------
    def transform(self, train: bool) -> Callable:
        return classification_transform(train, self.recipe, self.img_size, self.mean, self.std, self.crop_scale,
                                        self.hflip, self.auto_augment, self.re_prob, self.eval_crop_ratio)

    def prepare_data(self) -> None:
        self.check_files()

    def _make(self, split: Literal["train", "val"], transform: Callable) -> Dataset:
        dataset = self.make_dataset(split, transform)
        if (files := image_files_of(dataset)) is not None:
            files.on_bad_image = self.on_bad_image  # one knob for every file-based subclass
        return dataset

    def setup(self, stage: str) -> None:
        if stage == "fit" and not hasattr(self, "train_set"):
            train = self._make("train", self.transform(train=True))
            if self.train_subset is not None:
                train = _first(train, self.train_subset)
            self.train_set = train
        if not hasattr(self, "val_set"):
            self.val_set = self._make("val", self.transform(train=False))

    def teardown(self, stage: str) -> None:
        summary = skipped_images_summary([getattr(self, "train_set", None), getattr(self, "val_set", None)])
        if summary:
            warnings.warn(f"{type(self).__name__} ({self.data_dir}): {summary}", stacklevel=2)

    def train_dataloader(self) -> DataLoader:
        # drop_last: mixup/cutmix need even batches, and BatchNorm a batch larger than one.
        return make_loader(self.train_set, self.batch_size, self.num_workers, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.val_set, self.batch_size, self.num_workers, shuffle=False, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()


def _first(dataset: Dataset, n: int) -> Dataset:
    if n < 1:
        raise ValueError(f"train_subset must be >= 1, got {n}")
    return Subset(dataset, range(min(n, len(dataset))))
