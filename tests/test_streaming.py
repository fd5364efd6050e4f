"""litdata shards: the conversion command (round trip, errors) and ``StreamingImageNet`` (decoding, DDP
sharding, mid-epoch resume by hand and through a Trainer, the streaming config).

The fixture is an ImageFolder of 3 classes x 8 flat grey images; image ``i`` has grey level 8 + 10 i,
which survives JPEG, any crop, resize and flip, so every streamed image tells which file it came from.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import litdata
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from torch import Tensor, nn
from torchvision.datasets import ImageFolder

from datamodules.images import BadImageError
from datamodules.pretraining.imagenet import IMAGENET_MEAN, IMAGENET_STD
from datamodules.pretraining.streaming import StreamingImageNet, convert_image_folder, list_image_folder, main
from lightning_run.cli import cli
from tests.conftest import EXPERIMENTS, REPO

NUM_CLASSES, PER_CLASS = 3, 8
NUM_IMAGES = NUM_CLASSES * PER_CLASS
PNG_ID = NUM_IMAGES - 1  # the one non-JPEG file


def grey(i: int) -> int:
    return 8 + 10 * i


def write_image_folder(root: Path) -> Path:
    for i in range(NUM_IMAGES):
        folder = root / f"class_{i // PER_CLASS}"
        folder.mkdir(parents=True, exist_ok=True)
        suffix = "png" if i == PNG_ID else "jpg"
        Image.fromarray(np.full((20, 24, 3), grey(i), np.uint8)).save(folder / f"img_{i:02d}.{suffix}")
    return root


def sample_ids(images: Tensor) -> list[int]:
    """The fixture index of each normalised image in a batch (from its grey level)."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    level = ((images * std + mean) * 255).mean(dim=(1, 2, 3))
    return ((level - 8) / 10).round().long().tolist()


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imagefolder"))


@pytest.fixture(scope="module")
def shards(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "train"
    # chunks of ~3 images: several shards, so the shard-level shuffle and the DDP split are exercised
    convert_image_folder(src, out, seed=0, chunk_bytes="2KB", num_workers=1, verbose=False)
    return out


def datamodule(shards: Path, **kwargs) -> StreamingImageNet:
    args = dict(batch_size=4, num_workers=0, img_size=16, seed=0) | kwargs
    dm = StreamingImageNet(str(shards), **args)
    dm.setup("fit")
    return dm


def epoch_ids(loader) -> list[list[int]]:
    return [sample_ids(images) for images, _ in loader]


# ---------------------------------------------------------------------------------------- conversion
def test_listing_matches_torchvision_imagefolder(src):
    classes, samples = list_image_folder(src)
    reference = ImageFolder(str(src))
    assert classes == reference.classes == ["class_0", "class_1", "class_2"]
    assert samples == reference.samples


def test_conversion_round_trip(src, shards):
    items = list(litdata.StreamingDataset(str(shards)))  # stored order: no shuffle at read time
    names = [item["name"] for item in items]
    source = sorted(p.relative_to(src).as_posix() for p in src.rglob("img_*"))
    assert sorted(names) == source  # every file exactly once
    expected_order = source.copy()
    random.Random(0).shuffle(expected_order)
    assert names == expected_order != source  # shuffled with the seed before sharding
    for item in items:
        i = int(item["name"][-6:-4])
        assert item["label"] == i // PER_CLASS
        if i == PNG_ID:  # re-encoded once: JPEG data with the same pixels
            assert bytes(item["image"][:3]) == b"\xff\xd8\xff"
            pixels = np.asarray(Image.open(io.BytesIO(bytes(item["image"]))))
            assert np.abs(pixels.astype(int) - grey(i)).max() <= 1
        else:
            assert bytes(item["image"]) == (src / item["name"]).read_bytes()
    assert json.loads((shards / "classes.json").read_text()) == ["class_0", "class_1", "class_2"]
    assert len(json.loads((shards / "index.json").read_text())["chunks"]) > 3


def test_conversion_report_and_command_line(src, tmp_path, capsys):
    report = convert_image_folder(src, tmp_path / "a", seed=1, chunk_bytes="64KB", num_workers=2, verbose=False)
    assert (report.num_samples, report.classes, report.reencoded) == (
        NUM_IMAGES, ["class_0", "class_1", "class_2"], ["class_2/img_23.png"])
    main(["convert", str(src), str(tmp_path / "b"), "--seed", "1", "--chunk-bytes", "64KB", "--num-workers", "1"])
    out = capsys.readouterr().out
    assert f"{NUM_IMAGES} images of 3 classes" in out
    assert "re-encoded 1 file(s) to JPEG" in out and "class_2/img_23.png" in out
    names = [[item["name"] for item in litdata.StreamingDataset(str(tmp_path / d))] for d in "ab"]
    assert names[0] == names[1]  # the order is a function of the seed, not of the number of workers


def test_conversion_errors(src, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.*does not exist"):
        convert_image_folder(tmp_path / "missing", tmp_path / "out", verbose=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty has no class folders"):
        convert_image_folder(tmp_path / "empty", tmp_path / "out", verbose=False)
    (tmp_path / "no_images" / "class_a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no_images.*class_a"):
        convert_image_folder(tmp_path / "no_images", tmp_path / "out", verbose=False)

    out = tmp_path / "out"
    convert_image_folder(src, out, chunk_bytes="64KB", num_workers=1, verbose=False)
    with pytest.raises(FileExistsError, match=f"{re.escape(str(out))} already holds shards.*--overwrite"):
        convert_image_folder(src, out, verbose=False)
    report = convert_image_folder(src, out, seed=5, chunk_bytes="2KB", num_workers=1, overwrite=True, verbose=False)
    assert report.num_chunks == len(list(out.glob("*.bin")))  # the old shards are gone, not mixed in


@pytest.mark.parametrize("bad", ["truncated.jpg", "garbage.png"])
def test_unreadable_image_is_named_and_nothing_is_left(tmp_path, bad):
    tree = write_image_folder(tmp_path / "tree")
    good = (tree / "class_1" / "img_08.jpg").read_bytes()
    (tree / "class_1" / bad).write_bytes(good[: len(good) // 2] if bad.endswith("jpg") else b"not an image")
    with pytest.raises(BadImageError, match=f"(?s)1 unreadable image.*class_1/{bad}"):
        convert_image_folder(tree, tmp_path / "out", chunk_bytes="2KB", num_workers=2, verbose=False)
    assert not list((tmp_path / "out").glob("*.bin")) and not (tmp_path / "out" / "index.json").exists()


# ---------------------------------------------------------------------------------------- streaming
def test_batches_are_the_right_images_and_labels(shards):
    dm = datamodule(shards, shuffle=False)
    seen = []
    for images, labels in dm.train_dataloader():
        assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
        ids = sample_ids(images)
        assert labels.tolist() == [i // PER_CLASS for i in ids]
        seen += ids
    assert sorted(seen) == list(range(NUM_IMAGES))


def test_shuffle_is_a_function_of_seed_and_epoch(shards):
    first, again, other = (datamodule(shards, seed=s).train_dataloader() for s in (0, 0, 1))
    epoch0, epoch1 = epoch_ids(first), epoch_ids(first)
    assert epoch0 == epoch_ids(again) and epoch1 == epoch_ids(again)
    assert epoch0 != epoch1 and epoch0 != epoch_ids(other)
    assert sorted(sum(epoch1, [])) == list(range(NUM_IMAGES))


def test_drop_last_keeps_full_batches_only(shards):
    full = epoch_ids(datamodule(shards, batch_size=5).train_dataloader())
    assert [len(b) for b in full] == [5] * 4 and len(set(sum(full, []))) == 20
    kept = epoch_ids(datamodule(shards, batch_size=5, drop_last=False).train_dataloader())
    assert [len(b) for b in kept] == [5] * 4 + [4] and sorted(sum(kept, [])) == list(range(NUM_IMAGES))


def take(loader, num_batches: int) -> list[list[int]]:
    """The ids of the next ``num_batches`` batches, leaving the iterator unexhausted as Lightning does
    (it stops after ``len(loader)`` batches)."""
    return [sample_ids(images) for images, _ in itertools.islice(iter(loader), num_batches)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_resumes_mid_epoch_from_its_state_dict(shards, num_workers):
    reference = datamodule(shards, num_workers=num_workers).train_dataloader()
    expected = [take(reference, 6) for _ in range(3)]  # three uninterrupted epochs of 6 batches

    loader = datamodule(shards, num_workers=num_workers).train_dataloader()
    assert len(loader) == 6 and take(loader, 6) == expected[0]
    head = take(loader, 2)  # epoch 1, interrupted after 2 batches
    state = loader.state_dict()

    resumed = datamodule(shards, num_workers=num_workers).train_dataloader()  # a fresh process's loader
    resumed.load_state_dict(state)
    tail = take(resumed, 4)
    assert head + tail == expected[1]  # the rest of the epoch, in order: no repeat, no gap
    assert take(resumed, 6) == expected[2]  # then the next epoch, in full, with its own shuffle


def test_resume_with_another_worker_count_sees_each_sample_once(shards):
    loader = datamodule(shards, num_workers=0).train_dataloader()
    head = take(loader, 2)
    resumed = datamodule(shards, num_workers=2).train_dataloader()  # litdata's elastic resume
    resumed.load_state_dict(loader.state_dict())
    tail = take(resumed, 4)
    assert sorted(sum(head + tail, [])) == list(range(NUM_IMAGES))
    assert sorted(sum(take(resumed, 6), [])) == list(range(NUM_IMAGES))


def test_bad_arguments_and_missing_shards(tmp_path):
    with pytest.raises(ValueError, match="crop_scale"):
        StreamingImageNet(str(tmp_path), crop_scale=(0.5, 0.2))
    missing = f"no litdata shards at {re.escape(str(tmp_path))}.*datamodules.pretraining.streaming convert"
    with pytest.raises(FileNotFoundError, match=missing):
        StreamingImageNet(str(tmp_path)).setup("fit")
    with pytest.raises(ValueError, match="needs val_dir"):
        StreamingImageNet(str(tmp_path)).setup("validate")


# ---------------------------------------------------------------------------------------- Trainer
class Recorder(pl.LightningModule):
    """Records which fixture images each training step saw (and checks their labels)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.seen: list[dict] = []

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        ids = sample_ids(images)
        assert labels.tolist() == [i // PER_CLASS for i in ids]
        self.seen.append({"epoch": self.current_epoch, "step": self.global_step, "ids": ids})
        return self.weight * images.mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(dm: StreamingImageNet, ckpt_dir: Path, ckpt_path: Path | None = None, **trainer_kwargs) -> list[dict]:
    """Two epochs with a checkpoint after every step; what the training steps saw."""
    model = Recorder()
    checkpoints = ModelCheckpoint(ckpt_dir, "{step}", every_n_train_steps=1, save_top_k=-1)
    trainer = pl.Trainer(**(dict(accelerator="cpu", devices=1, max_epochs=2, logger=False, callbacks=[checkpoints],
                                 enable_progress_bar=False, enable_model_summary=False) | trainer_kwargs))
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model.seen


def test_trainer_resumes_mid_epoch_from_a_checkpoint(shards, tmp_path):
    torch.set_num_threads(1)
    full = fit(datamodule(shards, num_workers=2), tmp_path / "ckpt")
    assert [(s["epoch"], s["step"]) for s in full] == [(e, 6 * e + b) for e in range(2) for b in range(6)]
    for epoch in range(2):
        assert sorted(sum((s["ids"] for s in full if s["epoch"] == epoch), [])) == list(range(NUM_IMAGES))
    # mid-epoch 0, mid-epoch 1, and the checkpoint written after the last batch of epoch 0
    for step in (2, 9, 6):
        resumed = fit(datamodule(shards, num_workers=2), tmp_path / f"resumed{step}",
                      ckpt_path=tmp_path / "ckpt" / f"step={step}.ckpt")
        assert resumed == full[step:], f"resumed from step {step}"


# The DDP run: `python -m tests.test_streaming SHARDS OUT` (Lightning starts rank 1 with the same command):
# two epochs, then the same resumed from the checkpoint of step 4 (mid-epoch 1), on 2 processes.
def _ddp_run(shards: str, out: str) -> None:
    torch.set_num_threads(1)
    ddp = dict(devices=2, strategy="ddp")

    def data() -> StreamingImageNet:
        return StreamingImageNet(shards, batch_size=4, num_workers=2, img_size=16, seed=0)

    full = fit(data(), Path(out, "ckpt"), **ddp)
    resumed = fit(data(), Path(out, "resumed"), ckpt_path=Path(out, "ckpt", "step=4.ckpt"), **ddp)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    Path(out, f"rank{rank}.json").write_text(json.dumps({"full": full, "resumed": resumed}))


@pytest.mark.slow
def test_ddp_ranks_see_disjoint_samples_equal_batches_and_resume(shards, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "tests.test_streaming", str(shards), str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in range(2):
        per_rank = [sum((s["ids"] for s in rank["full"] if s["epoch"] == epoch), []) for rank in ranks]
        batches = [sum(s["epoch"] == epoch for s in rank["full"]) for rank in ranks]
        assert batches == [3, 3]  # 24 images / (2 ranks x batch 4): equal, full batches
        assert not set(per_rank[0]) & set(per_rank[1])
        assert sorted(per_rank[0] + per_rank[1]) == list(range(NUM_IMAGES))  # each image once per epoch
    # rank 0's loader state, restored on both ranks, continues each rank's own stream
    for rank in ranks:
        assert rank["resumed"] == rank["full"][4:]


# ---------------------------------------------------------------------------------------- config
def test_streaming_config_parses_and_differs_from_sgmae_only_in_data(capsys, monkeypatch):
    config = EXPERIMENTS / "sgmae_streaming.yaml"
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["class_path"] == "datamodules.pretraining.streaming.StreamingImageNet"
    assert printed["data"]["init_args"]["train_dir"].startswith("s3://")
    with pytest.raises(SystemExit):  # sgmae_streaming.yaml is an overlay of sgmae.yaml: compare what the runs see
        cli(["fit", "--config", str(EXPERIMENTS / "sgmae.yaml"), "--print_config"])
    folder = yaml.safe_load(capsys.readouterr().out)
    streamed, imagefolder = printed.pop("data")["init_args"], folder.pop("data")["init_args"]
    assert printed == folder
    for key in ("batch_size", "num_workers", "img_size", "crop_scale"):  # kept from sgmae.yaml's ImageNet
        assert streamed[key] == imagefolder[key]


if __name__ == "__main__":
    _ddp_run(*sys.argv[1:3])
