"""Fashion-MNIST from its idx files: the embedded default dataset (28x28 grey images, 10 classes)."""

from __future__ import annotations

import gzip
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from datamodules.loaders import check_train_subset, make_loader

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package `dataset-fashion-mnist`
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MEAN, STD = (0.2860,), (0.3530,)


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped) into a uint8 array; a corrupt file raises naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read idx file {path}: {err}") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated or corrupt: header says {shape}, found {body.size} bytes")
    return body.reshape(shape)


def find_idx(stem: str, directories: list[Path]) -> Path | None:
    for directory in directories:
        for name in (stem + ".gz", stem):
            if (directory / name).is_file():
                return directory / name
    return None


class IdxImages(Dataset):
    """In-memory uint8 images ``[N, H, W]`` with labels; returns ``(float image [1, s, s], label)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: v2.Transform) -> None:
        self.images = torch.from_numpy(images.copy())[:, None]  # [N, 1, H, W] uint8
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.images[index]), self.labels[index]


class FashionMNIST(pl.LightningDataModule):
    """Fashion-MNIST DataModule (train 60k / test 10k, the test split serves as validation).

    Args:
        data_dir: folder holding the four ``*-idx*-ubyte[.gz]`` files. ``None`` looks in Debian's
            ``/usr/share/datasets/fashion-mnist`` then ``./data/FashionMNIST/raw``.
        download: fetch the files with torchvision into ``data_dir`` (or ``./data``) when missing
            (needs internet).
        batch_size: per-device batch size.
        num_workers: DataLoader worker processes.
        img_size: output side; images are resized when it differs from 28.
        crop_scale: ``RandomResizedCrop`` scale range for training (MAE-style augmentation).
        hflip: random horizontal flips for training.
        train_subset: use only the first ``train_subset`` training images (quick runs); ``None`` = all.
    """

    num_classes = 10
    in_chans = 1

    def __init__(
        self,
        data_dir: str | None = None,
        download: bool = False,
        batch_size: int = 256,
        num_workers: int = 2,
        img_size: int = 28,
        crop_scale: tuple[float, float] = (0.35, 1.0),
        hflip: bool = True,
        train_subset: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        check_train_subset(train_subset, batch_size)
        self.data_dir, self.download = data_dir, download
        self.batch_size, self.num_workers = batch_size, num_workers
        self.img_size, self.crop_scale, self.hflip, self.train_subset = img_size, crop_scale, hflip, train_subset
        self.mean, self.std = MEAN, STD

    def _directories(self) -> list[Path]:
        if self.data_dir is not None:
            root = Path(self.data_dir)
            return [root, root / "FashionMNIST" / "raw"]
        return [DEBIAN_DIR, Path("data/FashionMNIST/raw")]

    def _locate(self, split: str) -> tuple[Path, Path]:
        stems = SPLITS[split]
        found = [find_idx(stem, self._directories()) for stem in stems]
        if None in found and self.download:
            from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

            TorchvisionFashionMNIST(self.data_dir or "data", train=split == "train", download=True)
            found = [find_idx(stem, self._directories()) for stem in stems]
        if None in found:
            searched = ", ".join(str(d) for d in self._directories())
            raise FileNotFoundError(
                f"Fashion-MNIST {split} files ({', '.join(stems)}[.gz]) not found in {searched}. Get them with "
                "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass --data.init_args.download "
                "true (torchvision downloads them; needs internet), or point --data.init_args.data_dir at a "
                "folder holding the idx files."
            )
        return found[0], found[1]  # type: ignore[return-value]

    def _load(self, split: str, transform: v2.Transform) -> IdxImages:
        images_path, labels_path = self._locate(split)
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{images_path} and {labels_path} do not hold matching images and labels")
        if split == "train" and self.train_subset is not None:
            images, labels = images[: self.train_subset], labels[: self.train_subset]
        return IdxImages(images, labels, transform)

    def _transform(self, train: bool) -> v2.Transform:
        steps: list[v2.Transform] = []
        if train:
            steps.append(v2.RandomResizedCrop(self.img_size, scale=self.crop_scale, antialias=True))
            if self.hflip:
                steps.append(v2.RandomHorizontalFlip())
        elif self.img_size != 28:
            steps.append(v2.Resize(self.img_size, antialias=True))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        return v2.Compose(steps)

    def prepare_data(self) -> None:
        for split in SPLITS:
            self._locate(split)  # downloads once (rank 0) when asked; fails early with instructions

    def setup(self, stage: str) -> None:
        if stage == "fit" and not hasattr(self, "train_set"):
            self.train_set = self._load("train", self._transform(train=True))
        if not hasattr(self, "val_set"):
            self.val_set = self._load("test", self._transform(train=False))

    def _loader(self, dataset: Dataset, shuffle: bool, drop_last: bool) -> DataLoader:
        return make_loader(dataset, self.batch_size, self.num_workers, shuffle, drop_last)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
