"""CIFAR-10 / CIFAR-100 from torchvision's files: ``cifar-10-batches-py/{data_batch_1..5,test_batch}``
and ``cifar-100-python/{train,test}`` (the pickled batches of https://www.cs.toronto.edu/~kriz/cifar.html)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from torch.utils.data import Dataset

from datamodules.classification.base import ClassificationDataModule, ImageArrays

CIFAR_FILES = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    100: ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 32, 32, 3]`` uint8 and labels of one pickled CIFAR batch; a bad file raises naming it."""
    try:
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the official files are Python-2 pickles
        data, labels = np.asarray(batch[b"data"], dtype=np.uint8), np.asarray(batch[label_key], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is not a CIFAR batch file: {err!r}") from err
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{path}: expected [N, 3072] images with N labels, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


class CIFAR(ClassificationDataModule):
    """CIFAR-10 or CIFAR-100 (50k train / 10k test, 32x32, upsampled to ``img_size`` as usual for ViTs).

    Args:
        data_dir: the folder holding ``cifar-10-batches-py`` / ``cifar-100-python`` (or that folder itself),
            as ``torchvision.datasets.CIFAR10(root, download=True)`` leaves it.
        num_classes: 10 or 100.
        Other arguments: see ``ClassificationDataModule``.
    """

    def __init__(self, data_dir: str, num_classes: Literal[10, 100] = 10, **kwargs) -> None:
        if num_classes not in CIFAR_FILES:
            raise ValueError(f"num_classes must be 10 or 100 for CIFAR, got {num_classes}")
        super().__init__(data_dir, **kwargs)
        self.num_classes = num_classes

    def _folder(self) -> Path:
        name = CIFAR_FILES[self.num_classes][0]
        for folder in (self.data_dir / name, self.data_dir):
            if (folder / CIFAR_FILES[self.num_classes][2][0]).is_file():
                return folder
        raise FileNotFoundError(
            f"CIFAR-{self.num_classes} not found in {self.data_dir} (expected {self.data_dir / name}/...); get it with "
            f"`python -c \"import torchvision; torchvision.datasets.CIFAR{self.num_classes}('{self.data_dir}', "
            "download=True)\"` (needs internet)"
        )

    def check_files(self) -> None:
        folder = self._folder()
        _, train, test, _ = CIFAR_FILES[self.num_classes]
        missing = [name for name in train + test if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"CIFAR-{self.num_classes} files {missing} missing in {folder}")

    def make_dataset(self, split: Literal["train", "val"], transform: Callable) -> Dataset:
        self.check_files()
        _, train, test, label_key = CIFAR_FILES[self.num_classes]
        parts = [read_cifar_batch(self._folder() / name, label_key) for name in (train if split == "train" else test)]
        images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"CIFAR-{self.num_classes} {split} labels outside [0, {self.num_classes})")
        return ImageArrays(images, labels, transform)
