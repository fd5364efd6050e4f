"""COCO instances (detection + instance segmentation) in the official layout:
``annotations/instances_{train,val}2017.json`` and ``{train,val}2017/*.jpg``.

Category ids are mapped to contiguous labels ``1..K`` (0 is the background of Mask R-CNN). Training
drops crowd annotations and images without any object; evaluation keeps everything and passes
``iscrowd`` to the metric, as COCO's evaluation does.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

SPLITS = ("train", "val")


def load_coco(path: Path) -> COCO:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: expected the COCO layout (annotations/instances_train2017.json, train2017/, ...), "
            "from https://cocodataset.org/#download"
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            return COCO(str(path))
    except (ValueError, KeyError, TypeError, AssertionError) as err:
        raise ValueError(f"{path} is not a COCO instances file: {err!r}") from err


class COCOInstances(Dataset):
    """``(image float [3, H, W] in [0, 1], target dict)`` with ``boxes`` (xyxy), ``labels``, ``masks``,
    ``iscrowd``, ``image_id``."""

    def __init__(self, images_dir: Path, annotations: Path, train: bool, transform: v2.Transform | None = None
                 ) -> None:
        if not images_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder {images_dir} not found")
        self.coco, self.images_dir, self.train, self.transform = load_coco(annotations), images_dir, train, transform
        self.cat_ids = sorted(self.coco.getCatIds())
        self.label_of = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        ids = sorted(self.coco.getImgIds())
        if train:
            ids = [i for i in ids if any(not a.get("iscrowd", 0) for a in self.coco.imgToAnns[i])]
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.images_dir / info["file_name"]
        try:
            image = tv_tensors.Image(TF.pil_to_tensor(Image.open(path).convert("RGB")))
        except OSError as err:
            raise ValueError(f"cannot read COCO image {path}: {err}") from err
        h, w = image.shape[-2:]
        anns = [a for a in self.coco.imgToAnns[image_id] if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        if self.train:
            anns = [a for a in anns if not a.get("iscrowd", 0)]
        boxes = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in anns)],
                             dtype=torch.float32).reshape(-1, 4)
        masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
            "image_id": torch.tensor(image_id),
        }
        if self.transform is not None:
            image, target = self.transform(image, target)
        target["masks"] = target["masks"].bool()
        return TF.to_dtype(image, torch.float32, scale=True), target


def collate(batch: list) -> tuple[tuple, tuple]:
    """Images differ in size: keep lists (Mask R-CNN batches them itself)."""
    return tuple(zip(*batch))  # type: ignore[return-value]


class COCODetection(pl.LightningDataModule):
    """COCO 2017 instances (118k train / 5k val images, 80 categories).

    Args:
        data_dir: the COCO root holding ``annotations/`` and ``{train,val}2017/``.
        year: the release in the file names.
        batch_size: per-device training batch (images); evaluation uses the same.
        num_workers: DataLoader workers.
        hflip: random horizontal flips in training (the model resizes images itself).
    """

    def __init__(self, data_dir: str = "data/coco", year: str = "2017", batch_size: int = 2, num_workers: int = 4,
                 hflip: bool = True) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data_dir, self.year = Path(data_dir), year
        self.batch_size, self.num_workers, self.hflip = batch_size, num_workers, hflip

    def _split(self, split: str, train: bool, transform: v2.Transform | None = None) -> COCOInstances:
        return COCOInstances(self.data_dir / f"{split}{self.year}",
                             self.data_dir / "annotations" / f"instances_{split}{self.year}.json", train, transform)

    @property
    def num_classes(self) -> int | None:
        """Categories + background, once set up."""
        dataset = getattr(self, "val_set", None)
        return len(dataset.cat_ids) + 1 if dataset is not None else None

    def prepare_data(self) -> None:
        for split in SPLITS:
            for path in (self.data_dir / f"{split}{self.year}",
                         self.data_dir / "annotations" / f"instances_{split}{self.year}.json"):
                if not path.exists():
                    raise FileNotFoundError(f"{path} not found: expected the COCO {self.year} layout under "
                                            f"{self.data_dir} (https://cocodataset.org/#download)")

    def setup(self, stage: str) -> None:
        if stage == "fit" and not hasattr(self, "train_set"):
            flips = [v2.RandomHorizontalFlip()] if self.hflip else []
            self.train_set = self._split("train", True, v2.Compose(flips))
        if not hasattr(self, "val_set"):
            self.val_set = self._split("val", False)

    def train_dataloader(self) -> DataLoader:
        if len(self.train_set) < self.batch_size:
            raise ValueError(f"the training set has {len(self.train_set)} images, fewer than batch_size="
                             f"{self.batch_size}: with drop_last training would run 0 steps; lower batch_size")
        return DataLoader(self.train_set, self.batch_size, shuffle=True, drop_last=True, num_workers=self.num_workers,
                          collate_fn=collate, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, self.batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=collate, persistent_workers=self.num_workers > 0)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
