"""iNaturalist 2019 from its official release: ``train2019.json`` / ``val2019.json`` (COCO-style
``images`` with ``file_name`` relative to the root, ``annotations`` with ``category_id``, ``categories``)
and the ``train_val2019/`` image tree."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from datamodules.classification.base import ClassificationDataModule, ImageFiles

INAT_JSON = {"train": "train2019.json", "val": "val2019.json"}


def read_inat_json(path: Path) -> tuple[list[str], list[int], list[int]]:
    """(file names, category ids, all category ids) of one iNat annotation file."""
    try:
        data = json.loads(path.read_text())
        files = {img["id"]: img["file_name"] for img in data["images"]}
        category = {ann["image_id"]: int(ann["category_id"]) for ann in data["annotations"]}
        categories = sorted(int(c["id"]) for c in data["categories"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not an iNaturalist annotation file: {err!r}") from err
    unlabeled = [i for i in files if i not in category]
    if unlabeled:
        raise ValueError(f"{path}: {len(unlabeled)} images without an annotation (e.g. image id {unlabeled[0]})")
    ids = sorted(files)
    return [files[i] for i in ids], [category[i] for i in ids], categories


class INat2019(ClassificationDataModule):
    """iNaturalist 2019 (265,213 train / 3,030 val images, 1,010 species).

    Args:
        data_dir: the folder holding ``train2019.json``, ``val2019.json`` and ``train_val2019/``.
        Other arguments: see ``ClassificationDataModule``.
    """

    def _json(self, split: str) -> Path:
        path = self.data_dir / INAT_JSON[split]
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: download train2019.json/val2019.json and train_val2019.tar.gz from "
                "https://github.com/visipedia/inat_comp/tree/master/2019 and extract them into "
                "--data.init_args.data_dir"
            )
        return path

    def check_files(self) -> None:
        self._json("train"), self._json("val")

    def setup(self, stage: str) -> None:
        if self.num_classes is None:
            self.categories = read_inat_json(self._json("train"))[2]
            self.num_classes = len(self.categories)
        super().setup(stage)

    def make_dataset(self, split: Literal["train", "val"], transform: Callable) -> Dataset:
        files, cats, categories = read_inat_json(self._json(split))
        index = {c: i for i, c in enumerate(getattr(self, "categories", categories))}
        unknown = sorted(set(cats) - set(index))
        if unknown:
            raise ValueError(f"{self._json(split)}: category ids {unknown[:5]} are not among the training categories")
        return ImageFiles([self.data_dir / f for f in files], [index[c] for c in cats], transform)
