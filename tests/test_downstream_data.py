"""Downstream classification DataModules, each on a tiny fixture written in its dataset's real format."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.classification.base import classification_transform
from datamodules.classification.cifar import CIFAR
from datamodules.classification.cub import CUB200
from datamodules.classification.fashion_mnist import FashionMNISTClassification
from datamodules.classification.image_folder import ImageFolderClassification
from datamodules.classification.inat import INat2019

SMALL = dict(batch_size=2, num_workers=0, img_size=16)


def save_jpeg(path: Path, seed: int, size: tuple[int, int] = (20, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def first_batch(dm, stage: str = "fit"):
    dm.prepare_data()
    dm.setup(stage)
    return next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))


@pytest.mark.parametrize("recipe", ["probe", "finetune"])
def test_transforms_give_normalised_tensors_of_the_crop_size(recipe):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    for train in (True, False):
        x = classification_transform(train, recipe, 32, (0.5,) * 3, (0.25,) * 3)(img)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and x.min() < 0 < x.max()
    text = repr(classification_transform(True, recipe, 32, (0.5,) * 3, (0.25,) * 3))
    assert ("RandAugment" in text and "RandomErasing" in text) == (recipe == "finetune")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_classification_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 6)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    dm = FashionMNISTClassification(str(tmp_path), recipe="finetune", batch_size=4, num_workers=0, train_subset=8)
    (x, y), (vx, vy) = first_batch(dm)
    assert x.shape == (4, 1, 28, 28) and vx.shape == (4, 1, 28, 28) and dm.num_classes == 10
    assert len(dm.train_set) == 8 and len(dm.val_set) == 6
    assert vy.tolist() == [0, 1, 2, 3]
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        FashionMNISTClassification(str(tmp_path / "empty")).prepare_data()


def write_cifar(root: Path, classes: int) -> None:
    folder, train, test, key = {10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                                     ["test_batch"], b"labels"),
                                100: ("cifar-100-python", ["train"], ["test"], b"fine_labels")}[classes]
    (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(classes)
    for i, name in enumerate(train + test):
        labels = [(3 * i + j) % classes for j in range(4)]
        batch = {b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), key: labels, b"batch_label": b"x"}
        with (root / folder / name).open("wb") as f:
            pickle.dump(batch, f)


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_reads_the_pickled_batches(tmp_path, classes):
    write_cifar(tmp_path, classes)
    dm = CIFAR(str(tmp_path), num_classes=classes, **SMALL)
    (x, y), (vx, vy) = first_batch(dm)
    assert x.shape == (2, 3, 16, 16) and vx.shape == (2, 3, 16, 16)
    n_train = 20 if classes == 10 else 4
    assert len(dm.train_set) == n_train and len(dm.val_set) == 4 and dm.num_classes == classes
    assert int(y.max()) < classes


def test_cifar_corrupt_or_missing_files_are_named(tmp_path):
    write_cifar(tmp_path, 10)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="data_batch_3"):
        CIFAR(str(tmp_path), **SMALL).setup("fit")
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_2"):
        CIFAR(str(tmp_path), **SMALL).prepare_data()
    with pytest.raises(FileNotFoundError, match="CIFAR-100"):
        CIFAR(str(tmp_path), num_classes=100, **SMALL).prepare_data()


def write_cub(root: Path) -> None:
    root = root / "CUB_200_2011"
    lines_img, lines_lab, lines_split = [], [], []
    for i in range(1, 7):
        cls = 1 + i % 3
        rel = f"{cls:03d}.Bird_{cls}/Bird_{cls}_{i}.jpg"
        save_jpeg(root / "images" / rel, i)
        lines_img.append(f"{i} {rel}")
        lines_lab.append(f"{i} {cls}")
        lines_split.append(f"{i} {int(i <= 4)}")
    (root / "images.txt").write_text("\n".join(lines_img) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(lines_lab) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(lines_split) + "\n")
    (root / "classes.txt").write_text("\n".join(f"{c} {c:03d}.Bird_{c}" for c in range(1, 201)) + "\n")


def test_cub_reads_the_official_txt_files(tmp_path):
    write_cub(tmp_path)
    dm = CUB200(str(tmp_path), **SMALL)  # the parent of CUB_200_2011/ works too
    (x, y), (vx, vy) = first_batch(dm)
    assert x.shape == (2, 3, 16, 16) and len(dm.train_set) == 4 and len(dm.val_set) == 2
    assert dm.num_classes == 200 and vy.tolist() == [2, 0]  # ids 5, 6: classes 3 and 1, counted from 0
    (tmp_path / "CUB_200_2011" / "train_test_split.txt").write_text("1 1\nbroken line\n")
    with pytest.raises(ValueError, match=r"train_test_split.txt:2"):
        CUB200(str(tmp_path), **SMALL).setup("fit")
    with pytest.raises(FileNotFoundError, match="CUB-200-2011 not found"):
        CUB200(str(tmp_path / "nothing"), **SMALL).prepare_data()


def write_inat(root: Path) -> None:
    categories = [{"id": c, "name": f"species {c}", "kingdom": "Plants"} for c in (0, 1, 2)]
    for split, ids in (("train", range(6)), ("val", range(100, 103))):
        images, annotations = [], []
        for i in ids:
            rel = f"train_val2019/Plants/{i % 3}/{i}.jpg"
            save_jpeg(root / rel, i)
            images.append({"id": i, "file_name": rel, "width": 24, "height": 20, "license": 0})
            annotations.append({"id": i, "image_id": i, "category_id": i % 3})
        doc = {"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": categories}
        (root / f"{split}2019.json").write_text(json.dumps(doc))


def test_inat2019_reads_the_json_annotations(tmp_path):
    write_inat(tmp_path)
    dm = INat2019(str(tmp_path), **SMALL)
    (x, y), (vx, vy) = first_batch(dm)
    assert x.shape == (2, 3, 16, 16) and len(dm.train_set) == 6 and len(dm.val_set) == 3
    assert dm.num_classes == 3 and vy.tolist() == [100 % 3, 101 % 3]
    (tmp_path / "val2019.json").write_text("{not json")
    with pytest.raises(ValueError, match="val2019.json"):
        INat2019(str(tmp_path), **SMALL).setup("validate")


def test_imagefolder_classification(tmp_path):
    for split, n in (("train", 3), ("val", 1)):
        for cls in ("n01", "n02"):
            for i in range(n):
                save_jpeg(tmp_path / split / cls / f"{i}.JPEG", i)
    dm = ImageFolderClassification(str(tmp_path), recipe="finetune", **SMALL)
    (x, y), (vx, vy) = first_batch(dm)
    assert x.shape == (2, 3, 16, 16) and dm.num_classes == 2 and vy.tolist() == [0, 1]
    with pytest.raises(FileNotFoundError, match="train/train"):
        ImageFolderClassification(str(tmp_path / "train"), **SMALL).prepare_data()
