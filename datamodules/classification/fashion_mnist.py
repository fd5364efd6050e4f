"""Fashion-MNIST for downstream evaluation (the embedded default of ``make downstream``): the same idx
files as the pretraining DataModule, with the linear-probe / fine-tune transforms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from datamodules.classification.base import ClassificationDataModule, ImageArrays, Recipe
from datamodules.pretraining.fashion_mnist import DEBIAN_DIR, MEAN, SPLITS, STD, find_idx, read_idx


class FashionMNISTClassification(ClassificationDataModule):
    """Fashion-MNIST (train 60k / test 10k, 28x28 grey, 10 classes) with downstream transforms.

    Args:
        data_dir: folder with the four ``*-idx*-ubyte[.gz]`` files; ``None`` looks in Debian's
            ``/usr/share/datasets/fashion-mnist`` then ``./data/FashionMNIST/raw``.
        Other arguments: see ``ClassificationDataModule`` (defaults suit 28x28 images: no resize
        before the evaluation crop, milder crops).
    """

    mean, std = MEAN, STD
    in_chans = 1
    num_classes = 10

    def __init__(
        self,
        data_dir: str | None = None,
        recipe: Recipe = "probe",
        batch_size: int = 256,
        num_workers: int = 2,
        img_size: int = 28,
        crop_scale: tuple[float, float] = (0.35, 1.0),
        hflip: bool = True,
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        re_prob: float = 0.25,
        eval_crop_ratio: float = 1.0,
        train_subset: int | None = None,
    ) -> None:
        super().__init__(data_dir, recipe, batch_size, num_workers, img_size, crop_scale, hflip, auto_augment,
                         re_prob, eval_crop_ratio, train_subset)

    def _directories(self) -> list[Path]:
        if self.data_dir is not None:
            return [self.data_dir, self.data_dir / "FashionMNIST" / "raw"]
        return [DEBIAN_DIR, Path("data/FashionMNIST/raw")]

    def _files(self, split: str) -> tuple[Path, Path]:
        found = [find_idx(stem, self._directories()) for stem in SPLITS[split]]
        if None in found:
            searched = ", ".join(str(d) for d in self._directories())
            raise FileNotFoundError(
                f"Fashion-MNIST {split} files ({', '.join(SPLITS[split])}[.gz]) not found in {searched}: install "
                "`dataset-fashion-mnist` (Debian/Ubuntu) or point --data.init_args.data_dir at the idx files"
            )
        return found[0], found[1]  # type: ignore[return-value]

    def check_files(self) -> None:
        for split in SPLITS:
            self._files(split)

    def make_dataset(self, split: Literal["train", "val"], transform: Callable) -> Dataset:
        images_path, labels_path = self._files("train" if split == "train" else "test")
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{images_path} and {labels_path} do not hold matching images and labels")
        return ImageArrays(images, labels, transform)
