"""scikit-learn's bundled handwritten digits (UCI optdigits test set: 1,797 images of 8x8 pixels, 10 classes),
resized to 28x28 and normalised like Fashion-MNIST, for a transfer linear probe of an encoder pretrained on
Fashion-MNIST. The data ships inside scikit-learn (``sklearn.datasets.load_digits``): nothing to download.

The images' 17 grey levels (0 = background, 16 = ink) are scaled to uint8 0..255 (bright strokes on a dark
background, like Fashion-MNIST's objects), upsampled 8 -> 28 bicubically once, and then go through the
classification transforms with Fashion-MNIST's mean and std (the statistics the encoder was trained on).
There is no official split: a fixed, seeded, class-stratified split keeps ``test_fraction`` of each class
for evaluation (450 test / 1,347 train images with the defaults), the same on every machine and run.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Literal

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from datamodules.classification.base import ClassificationDataModule, ImageArrays, Recipe
from datamodules.pretraining.fashion_mnist import MEAN, STD


@lru_cache(maxsize=4)
def digits_arrays(img_size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 ``[N, img_size, img_size]`` images and int64 ``[N]`` labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency of the project
        raise ImportError("DigitsClassification needs scikit-learn (`pip install scikit-learn`), which ships "
                          "the digits data set") from err
    digits = load_digits()
    small = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # [N, 8, 8]
    images = np.stack([np.asarray(Image.fromarray(im).resize((img_size, img_size), Image.BICUBIC)) for im in small])
    return images, digits.target.astype(np.int64)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train_indices, test_indices)``: per class, a seeded shuffle, the first
    ``round(test_fraction * n_class)`` indices to test."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(test_fraction * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


class DigitsClassification(ClassificationDataModule):
    """The 8x8 digits of scikit-learn as 28x28 grey images (10 classes), with the downstream transforms.

    Args:
        test_fraction: share of each class held out as the validation/test split.
        split_seed: seed of the split (fixed: every run and machine sees the same split).
        Other arguments: see ``ClassificationDataModule``. The defaults differ from Fashion-MNIST's in
        ``hflip=False`` (a mirrored digit is another symbol or none) and milder crops (``crop_scale``
        0.5-1: an 8x8 digit fills its frame, a small crop cuts it off).
    """

    mean, std = MEAN, STD
    in_chans = 1
    num_classes = 10

    def __init__(
        self,
        data_dir: str | None = None,
        recipe: Recipe = "probe",
        batch_size: int = 128,
        num_workers: int = 0,
        img_size: int = 28,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        hflip: bool = False,
        auto_augment: str | None = None,
        re_prob: float = 0.0,
        eval_crop_ratio: float = 1.0,
        train_subset: int | None = None,
        test_fraction: float = 0.25,
        split_seed: int = 0,
    ) -> None:
        super().__init__(data_dir, recipe, batch_size, num_workers, img_size, crop_scale, hflip, auto_augment,
                         re_prob, eval_crop_ratio, train_subset)
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.test_fraction, self.split_seed = test_fraction, split_seed

    def check_files(self) -> None:
        digits_arrays(self.img_size)  # ships inside scikit-learn: fails only when it is not installed

    def split_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """``(train, test)`` indices into ``digits_arrays()``."""
        return stratified_split(digits_arrays(self.img_size)[1], self.test_fraction, self.split_seed)

    def make_dataset(self, split: Literal["train", "val"], transform: Callable) -> Dataset:
        images, labels = digits_arrays(self.img_size)
        train, test = self.split_indices()
        chosen = train if split == "train" else test
        return ImageArrays(images[chosen], labels[chosen], transform)
