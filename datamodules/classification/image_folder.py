"""ImageNet-1K (or any ImageFolder dataset) for downstream evaluation: ``<data_dir>/train/<class>/*``
and ``<data_dir>/val/<class>/*``, with the linear-probe / fine-tune transforms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from datamodules.classification.base import ClassificationDataModule
from datamodules.images import image_folder


class ImageFolderClassification(ClassificationDataModule):
    """ImageFolder layout; the classes are the sub-folders of ``train/`` (``val/`` must have the same).

    Args: see ``ClassificationDataModule``.
    """

    def _split_dir(self, split: str) -> Path:
        path = self.data_dir / split
        if not path.is_dir():
            raise FileNotFoundError(
                f"no ImageFolder split at {path} (expected {path}/<class>/<image>); for ImageNet-1K download the "
                "ILSVRC2012 train/val archives from https://image-net.org, sort val/ into class folders, and pass "
                "--data.init_args.data_dir"
            )
        if not any(p.is_dir() for p in path.iterdir()):
            raise FileNotFoundError(f"{path} has no class folders (expected {path}/<class>/<image>)")
        return path

    def check_files(self) -> None:
        self._split_dir("train"), self._split_dir("val")

    def make_dataset(self, split: Literal["train", "val"], transform: Callable) -> Dataset:
        dataset = image_folder(self._split_dir(split), transform, self.on_bad_image)
        if split == "train":
            self.classes, self.num_classes = dataset.classes, len(dataset.classes)
        elif getattr(self, "classes", dataset.classes) != dataset.classes:
            raise ValueError(f"{self.data_dir}/val has other class folders than {self.data_dir}/train")
        return dataset

    def setup(self, stage: str) -> None:
        if self.num_classes is None:  # known before the model's setup builds its head
            path = self._split_dir("train")
            self.classes = sorted(p.name for p in path.iterdir() if p.is_dir())
            self.num_classes = len(self.classes)
        super().setup(stage)
