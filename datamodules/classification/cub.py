"""CUB-200-2011 from its official release (``CUB_200_2011/``): ``images.txt`` (id, path),
``image_class_labels.txt`` (id, class 1..200), ``train_test_split.txt`` (id, 1 = train) and ``images/``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from datamodules.classification.base import ClassificationDataModule, ImageFiles

CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt")


def read_id_table(path: Path) -> dict[int, str]:
    """``<id> <value>`` lines -> {id: value}; a malformed line raises naming the file and line."""
    table = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{path}:{number}: expected '<id> <value>', got {line!r}")
        table[int(parts[0])] = parts[1].strip()
    return table


class CUB200(ClassificationDataModule):
    """CUB-200-2011 (5,994 train / 5,794 test images, 200 bird species), the official split.

    Args:
        data_dir: the ``CUB_200_2011`` folder of the official archive (or its parent).
        Other arguments: see ``ClassificationDataModule``.
    """

    num_classes = 200

    def _root(self) -> Path:
        for root in (self.data_dir, self.data_dir / "CUB_200_2011"):
            if all((root / name).is_file() for name in CUB_FILES):
                return root
        raise FileNotFoundError(
            f"CUB-200-2011 not found at {self.data_dir}: expected {', '.join(CUB_FILES)} and images/ (the official "
            "CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/, extracted)"
        )

    def check_files(self) -> None:
        self._root()

    def make_dataset(self, split: Literal["train", "val"], transform: Callable) -> Dataset:
        root = self._root()
        paths, labels, split_of = (read_id_table(root / name) for name in CUB_FILES)
        if set(paths) != set(labels) or set(paths) != set(split_of):
            raise ValueError(f"{root}: {', '.join(CUB_FILES)} list different image ids")
        want = "1" if split == "train" else "0"
        ids = sorted(i for i, s in split_of.items() if s == want)
        classes = [int(labels[i]) - 1 for i in ids]  # the files count classes from 1
        if classes and (min(classes) < 0 or max(classes) >= self.num_classes):
            raise ValueError(f"{root / 'image_class_labels.txt'}: class ids outside 1..{self.num_classes}")
        files = [root / "images" / paths[i] for i in ids]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} CUB images listed in images.txt are missing, e.g. {missing[0]}")
        return ImageFiles(files, classes, transform)
