"""DataModules of the MAE side: Fashion-MNIST idx files and ImageFolder ImageNet."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import FashionMNIST, ImageNet
from datamodules.pretraining.fashion_mnist import DEBIAN_DIR, read_idx


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


def fmnist_fixture(root: Path, n_train: int = 40, n_test: int = 20, compress: bool = True) -> Path:
    rng = np.random.default_rng(0)
    suffix = "-ubyte.gz" if compress else "-ubyte"
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{split}-images-idx3{suffix}", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(root / f"{split}-labels-idx1{suffix}", np.arange(n) % 10, compress)
    return root


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path, compress):
    dm = FashionMNIST(data_dir=str(fmnist_fixture(tmp_path, compress=compress)), batch_size=8, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    imgs, labels = next(iter(dm.train_dataloader()))
    assert imgs.shape == (8, 1, 28, 28) and imgs.dtype == torch.float32
    assert labels.dtype == torch.long and labels.max() < 10
    assert len(dm.train_set) == 40 and len(dm.val_set) == 20
    val_imgs, val_labels = next(iter(dm.val_dataloader()))
    assert torch.equal(val_labels, torch.arange(8) % 10)  # validation is in file order, unaugmented
    raw = torch.from_numpy(read_idx(next(tmp_path.glob("t10k-images*"))).copy())[:8, None].float() / 255
    assert torch.allclose(val_imgs, (raw - 0.2860) / 0.3530, atol=1e-5)


def test_fashion_mnist_subset_and_resize(tmp_path):
    dm = FashionMNIST(data_dir=str(fmnist_fixture(tmp_path)), batch_size=4, num_workers=0, img_size=32,
                      train_subset=12)
    dm.setup("fit")
    assert len(dm.train_set) == 12
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 1, 32, 32)
    assert next(iter(dm.val_dataloader()))[0].shape == (4, 1, 32, 32)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
        FashionMNIST(data_dir=str(tmp_path / "nowhere")).prepare_data()
    assert str(tmp_path / "nowhere") in str(err.value)


def test_corrupt_idx_file_is_named(tmp_path):
    fmnist_fixture(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(gzip.decompress(bad.read_bytes())[:-100]))  # truncated
    dm = FashionMNIST(data_dir=str(tmp_path), num_workers=0)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz is truncated"):
        dm.setup("fit")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        dm.setup("validate")


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_is_the_default():
    dm = FashionMNIST(num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == 60_000 and len(dm.val_set) == 10_000
    assert sorted(torch.bincount(dm.val_set.labels).tolist()) == [1000] * 10


def imagefolder_fixture(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.JPEG")
    return root


def test_imagenet_imagefolder_layout(tmp_path):
    dm = ImageNet(data_dir=str(imagefolder_fixture(tmp_path)), batch_size=4, num_workers=0, img_size=32)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 2 and len(dm.train_set) == 6 and len(dm.val_set) == 6
    imgs, labels = next(iter(dm.train_dataloader()))
    assert imgs.shape == (4, 3, 32, 32) and set(labels.tolist()) <= {0, 1}
    assert next(iter(dm.val_dataloader()))[0].shape == (4, 3, 32, 32)


def test_missing_imagenet_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="image-net.org") as err:
        ImageNet(data_dir=str(tmp_path)).prepare_data()
    assert str(tmp_path / "train") in str(err.value)
