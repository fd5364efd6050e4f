"""Faults and bad input: corrupt images, errors before training starts, non-finite losses, atomic checkpoints."""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import v2

from datamodules import ImageFolderClassification, ImageNet
from datamodules.images import BadImageError, ImageFiles, image_folder, load_image
from lightning_run import AtomicCheckpointIO, NonFiniteLossError, NonFiniteLossGuard, atomic_torch_save
from lightning_run.configs import expand_config
from tests.conftest import EXPERIMENTS, LIGHTNING, REPO, run_lightning

DEMO = EXPERIMENTS / "sgmae_fmnist.yaml"


# --- image fixtures ---------------------------------------------------------------------------------------
def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (20, 24)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


CORRUPTIONS = {
    "truncated_jpeg": lambda: image_bytes(0)[: len(image_bytes(0)) // 2],
    "truncated_png": lambda: image_bytes(0, "PNG")[: len(image_bytes(0, "PNG")) // 2],
    "not_an_image": lambda: b"<html>404 not found</html>",
    "empty": lambda: b"",
}


def image_tree(root: Path, per_class: int = 3, bad: dict[str, bytes] | None = None) -> Path:
    """``root/{train,val}/{n01,n02}/<i>.JPEG``; ``bad`` maps relative paths to the bytes written instead."""
    for split in ("train", "val"):
        for c, cls in enumerate(("n01", "n02")):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                (root / split / cls / f"{i}.JPEG").write_bytes(image_bytes(10 * c + i))
    for rel, data in (bad or {}).items():
        (root / rel).write_bytes(data)
    return root


# --- 1. corrupt images --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
@pytest.mark.parametrize("pillow_pads_truncated", [False, True])
def test_a_bad_image_raises_naming_the_file(tmp_path, monkeypatch, kind, pillow_pads_truncated):
    # Some libraries set LOAD_TRUNCATED_IMAGES on import; a truncated file must still fail, not load half-grey.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", pillow_pads_truncated)
    path = tmp_path / "broken.JPEG"
    path.write_bytes(CORRUPTIONS[kind]())
    with pytest.raises(BadImageError, match=r"cannot read image .*broken\.JPEG: "):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is pillow_pads_truncated  # the global is restored
    good = tmp_path / "good.PNG"
    good.write_bytes(image_bytes(1, "PNG"))
    assert np.array_equal(np.asarray(load_image(good)), np.asarray(Image.open(io.BytesIO(image_bytes(1, "PNG")))))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_imagenet_raises_naming_the_corrupt_file_also_from_a_worker(tmp_path, num_workers):
    root = image_tree(tmp_path, bad={"train/n02/1.JPEG": CORRUPTIONS["truncated_jpeg"]()})
    dm = ImageNet(str(root), batch_size=6, num_workers=num_workers, img_size=16)
    dm.setup("fit")
    with pytest.raises(BadImageError, match=r"cannot read image .*train/n02/1\.JPEG: \w"):
        list(dm.train_dataloader())


def to_tensor(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(load_image(path))).permute(2, 0, 1)


def test_skip_replaces_bad_images_deterministically_and_counts_them_across_workers(tmp_path):
    root = image_tree(tmp_path, bad={"train/n01/1.JPEG": b"", "train/n02/2.JPEG": CORRUPTIONS["truncated_png"]()})
    dataset = image_folder(root / "train", v2.PILToTensor(), on_bad_image="skip")
    epochs = []
    for _ in range(2):  # a fresh loader (new worker processes) each epoch
        loader = DataLoader(dataset, batch_size=1, num_workers=2, shuffle=False)
        epochs.append([(x[0], int(y)) for x, y in loader])
    # the bad file at index 1 -> the next readable one, 2; the last file (5, bad) wraps around to file 0
    for samples in epochs:
        assert len(samples) == 6
        for (img, label), i in zip(samples, [0, 2, 2, 3, 4, 0]):
            assert torch.equal(img, to_tensor(dataset.paths[i])) and label == dataset.labels[i]
    # the flags set in the worker processes reach the main process
    assert dataset.bad_files == [root / "train/n01/1.JPEG", root / "train/n02/2.JPEG"]


def test_skip_warns_once_per_bad_file_and_never_decodes_it_again(tmp_path, monkeypatch):
    root = image_tree(tmp_path, bad={"train/n01/1.JPEG": b"", "train/n02/2.JPEG": b"GIF89a"})
    dataset = image_folder(root / "train", v2.PILToTensor(), on_bad_image="skip")
    decoded = []
    monkeypatch.setattr("datamodules.images.load_image",
                        lambda path, mode: decoded.append(path) or load_image(path, mode))
    with pytest.warns(UserWarning) as record:
        for _ in range(3):
            assert [label for _, label in dataset] == [0, 0, 0, 1, 1, 0]
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert messages[0].startswith("skipping unreadable image (1 skipped so far): cannot read image ")
    assert messages[0].endswith("train/n01/1.JPEG: cannot identify image file " + repr(str(root / "train/n01/1.JPEG")))
    assert "(2 skipped so far)" in messages[1] and "train/n02/2.JPEG" in messages[1]
    assert decoded.count(str(root / "train/n01/1.JPEG")) == decoded.count(str(root / "train/n02/2.JPEG")) == 1


@pytest.mark.parametrize("datamodule", [ImageNet, ImageFolderClassification])
def test_skip_lists_the_skipped_files_at_teardown(tmp_path, datamodule):
    root = image_tree(tmp_path, bad={"train/n02/0.JPEG": b"\xff\xd8 junk", "val/n01/2.JPEG": b""})
    dm = datamodule(str(root), batch_size=2, num_workers=2, img_size=16, on_bad_image="skip")
    dm.prepare_data()
    dm.setup("fit")
    with pytest.warns(UserWarning, match="skipping unreadable image"):  # read in this process: catchable here
        list(DataLoader(dm.val_set, batch_size=2))
    assert sum(len(x) for x, _ in dm.train_dataloader()) == 6  # the bad file's place taken by another
    skipped = r"2 unreadable image file\(s\) were skipped: .*train/n02/0\.JPEG, .*val/n01/2\.JPEG"
    with pytest.warns(UserWarning, match=skipped):
        dm.teardown("fit")


def test_on_bad_image_is_validated(tmp_path):
    with pytest.raises(ValueError, match="on_bad_image must be 'raise' or 'skip', got 'ignore'"):
        ImageNet(str(tmp_path), on_bad_image="ignore")
    with pytest.raises(ValueError, match="on_bad_image"):
        ImageFolderClassification(str(tmp_path), on_bad_image="ignore")
    with pytest.raises(ValueError, match="on_bad_image"):
        ImageFiles([], [], v2.PILToTensor(), on_bad_image="warn")


# --- 2. empty or missing data folders ----------------------------------------------------------------------
def empty_layout(root: Path, layout: str) -> tuple[Path, str]:
    """A data folder that must fail, and the message expected (a regex)."""
    image_tree(root)  # a valid val/ split, so train/ is what fails
    train = root / "train"
    shutil.rmtree(train)
    if layout == "missing":
        return root, re.escape(f"no ImageFolder split at {train}")
    train.mkdir()
    if layout == "no_classes":
        (train / "README.txt").write_text("images go in class folders")
        return root, re.escape(f"{train} has no class folders")
    for cls in ("n01", "n02"):
        (train / cls).mkdir()
        (train / cls / "labels.txt").write_text("not an image")
    if layout == "no_images":
        return root, re.escape(f"2 of the 2 class folders of {train} hold no images (n01, n02;")
    (train / "n01" / "0.JPEG").write_bytes(image_bytes(0))
    return root, re.escape(f"1 of the 2 class folders of {train} hold no images (n02;")


@pytest.mark.parametrize("layout", ["missing", "no_classes", "no_images", "one_empty_class"])
@pytest.mark.parametrize("datamodule", [ImageNet, ImageFolderClassification])
def test_a_missing_or_empty_image_folder_fails_at_setup_naming_it(tmp_path, layout, datamodule):
    data_dir, message = empty_layout(tmp_path / "data", layout)
    dm = datamodule(str(data_dir), batch_size=2, num_workers=0, img_size=16)
    with pytest.raises(FileNotFoundError, match=message):
        dm.prepare_data()
        dm.setup("fit")


# --- 2. clear errors through the `lightning` command, before the first step ---------------------------------
def lightning_failing(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(cwd), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(LIGHTNING), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def checkpoints(root: Path) -> list[Path]:
    return sorted(root.rglob("*.ckpt"))


def tiny_imagefolder_config(tmp_path: Path, data_dir: Path, **data) -> Path:
    """The demo's recipe at a tiny size on an RGB ImageFolder, checkpointing every step into ``tmp_path``."""
    cfg = yaml.safe_load(DEMO.read_text())
    cfg["trainer"].update(max_steps=2, limit_val_batches=1, logger=False, default_root_dir=str(tmp_path / "run"),
                          enable_progress_bar=False)
    cfg["trainer"]["callbacks"] = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"save_last": True, "every_n_train_steps": 1}},
        {"class_path": "lightning_run.NonFiniteLossGuard"},
    ]
    model = cfg["model"]["init_args"]
    model["backbone"]["init_args"].update(in_chans=3, depth=2, embed_dim=32, num_heads=2)
    model["masking"]["init_args"]["source_layer"] = 1
    model["num_classes"] = 2
    cfg["data"] = {"class_path": "datamodules.ImageNet",
                   "init_args": {"data_dir": str(data_dir), "batch_size": 2, "num_workers": 0, "img_size": 28,
                                 **data}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


QUICK = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.logger", "false",
         "--data.init_args.train_subset", "16", "--data.init_args.batch_size", "8", "--data.init_args.num_workers", "0"]


@pytest.mark.slow
@pytest.mark.parametrize("override, message", [
    (["--model.init_args.masking.init_args.partitoin", "pca"], "partitoin"),
    (["--model.init_args.masking.init_args.mask_ratio", "1.0"], r"mask_ratio must be in \(0, 1\), got 1.0"),
    (["--model.init_args.backbone.init_args.patch_size", "5"], "patch_size=5 does not divide img_size=28"),
    (["--data.init_args.data_dir", "{tmp}/no_fmnist_here"], r"not found in \S*/no_fmnist_here"),
], ids=["config_typo", "mask_ratio_1", "patch_size", "missing_data_dir"])
def test_bad_option_fails_through_the_command_before_training(tmp_path, override, message):
    override = [a.replace("{tmp}", str(tmp_path)) for a in override]
    proc = lightning_failing(["fit", "--config", str(DEMO), *QUICK, "--trainer.default_root_dir", str(tmp_path),
                              *override], cwd=tmp_path)
    assert re.search(message, proc.stderr), proc.stderr[-3000:]
    assert "train/loss" not in proc.stdout + proc.stderr and not checkpoints(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["no_classes", "no_images"])
def test_an_empty_image_folder_fails_through_the_command_before_training(tmp_path, layout):
    data_dir, message = empty_layout(tmp_path / "data", layout)
    proc = lightning_failing(["fit", "--config", str(tiny_imagefolder_config(tmp_path, data_dir))], cwd=tmp_path)
    assert re.search(message, proc.stderr), proc.stderr[-3000:]
    assert not checkpoints(tmp_path)


@pytest.mark.slow
def test_a_corrupt_image_through_the_command_raises_or_is_skipped(tmp_path):
    data = image_tree(tmp_path / "data", per_class=4, bad={"train/n01/2.JPEG": CORRUPTIONS["truncated_jpeg"]()})
    config = tiny_imagefolder_config(tmp_path, data, batch_size=8)  # every step reads every training image
    proc = lightning_failing(["fit", "--config", str(config)], cwd=tmp_path)
    assert "BadImageError: cannot read image" in proc.stderr and "train/n01/2.JPEG" in proc.stderr
    assert not checkpoints(tmp_path)
    # skipping, with two worker processes: the run completes, names the file and writes its checkpoints
    out = run_lightning(["fit", "--config", str(config), "--data.init_args.on_bad_image", "skip",
                         "--data.init_args.num_workers", "2"], cwd=tmp_path, extra_env={"PYTHONWARNINGS": "default"})
    # warned by the worker process that met it, listed by the main process at the end
    assert "skipping unreadable image (1 skipped so far): cannot read image " in out.stderr
    assert re.search(r"ImageNet \(\S+\): 1 unreadable image file\(s\) were skipped: \S+/train/n01/2\.JPEG", out.stderr)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


# --- 3. non-finite loss -------------------------------------------------------------------------------------
class Regression(pl.LightningModule):
    """Linear regression whose loss (or only its gradient) turns non-finite at ``bad_step``."""

    def __init__(self, bad_step: int | None = None, fault: str = "loss", bad_rank: int | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.bad_step, self.fault, self.bad_rank = bad_step, fault, bad_rank

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        if self.global_step == self.bad_step and self.bad_rank in (None, self.global_rank):
            if self.fault == "loss":
                loss = loss * float("nan")
            else:  # finite value, non-finite gradient: d sqrt(u)/du = inf at u = 0, times du/dw = 0
                loss = loss + (0.0 * self.layer.weight.sum()).sqrt()
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def regression_data(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def fit_with_checkpoints(tmp_path: Path, module: pl.LightningModule, callbacks: list, **kw) -> pl.Trainer:
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1, save_top_k=-1)
    trainer = pl.Trainer(accelerator="cpu", max_steps=8, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[*callbacks, ckpt], default_root_dir=tmp_path, **kw)
    trainer.fit(module, regression_data())
    return trainer


@pytest.mark.parametrize("accumulate", [1, 2])
def test_guard_stops_at_a_nan_loss_and_keeps_the_last_good_checkpoint(tmp_path, accumulate):
    module = Regression(bad_step=3)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at global step 3 \(epoch 0\): loss = .*nan") as err:
        fit_with_checkpoints(tmp_path, module, [NonFiniteLossGuard()], accumulate_grad_batches=accumulate)
    assert f"the last checkpoint, {tmp_path / 'last.ckpt'}, is untouched" in str(err.value)
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3 and not list(tmp_path.glob("*step=4*"))
    for name, value in module.state_dict().items():  # the weights of step 3, finite, in memory and on disk
        assert torch.isfinite(value).all() and torch.equal(last["state_dict"][name], value)


def test_without_the_guard_a_nan_step_reaches_the_weights_and_the_checkpoint(tmp_path):
    # The failure the guard prevents: training goes on and the checkpoints hold NaN weights.
    module = Regression(bad_step=3)
    fit_with_checkpoints(tmp_path, module, [])
    assert torch.isnan(torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]["layer.weight"]).all()


def test_guard_stops_at_a_non_finite_gradient_of_a_finite_loss(tmp_path):
    module = Regression(bad_step=2, fault="gradient")
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient at global step 2 \(epoch 0\) in layer\.weight "
                                                 r"\(loss = \d"):
        fit_with_checkpoints(tmp_path, module, [NonFiniteLossGuard()])
    assert torch.isfinite(module.layer.weight).all()
    # checking only the loss, the NaN gradient reaches the weights and is caught one step later
    with pytest.raises(NonFiniteLossError, match="non-finite loss at global step 3"):
        fit_with_checkpoints(tmp_path / "loss_only", Regression(bad_step=2, fault="gradient"),
                             [NonFiniteLossGuard(check_gradients=False)])


DDP_SCRIPT = """
import sys
import lightning.pytorch as pl
import torch
sys.path.insert(0, {repo!r})
from lightning_run.guards import NonFiniteLossGuard
from tests.test_faults import Regression, regression_data

torch.set_num_threads(1)
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=6, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                     callbacks=[NonFiniteLossGuard()])
trainer.fit(Regression(bad_step=2, bad_rank=1), regression_data())
"""


@pytest.mark.slow
def test_guard_stops_every_ddp_rank_when_one_rank_sees_nan(tmp_path):
    script = tmp_path / "ddp_nan.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(repo=str(REPO))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    # Without the reduced decision, rank 1 would raise alone and rank 0 would wait in the next all-reduce.
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    # both ranks stop at the step, naming the loss (rank 0's own gradients are NaN too, after the all-reduce)
    for rank, loss in ((0, r"\d[\d.]*"), (1, "nan")):
        assert re.search(rf"\[rank{rank}\]: \S*NonFiniteLossError: non-finite loss at global step 2 \(epoch 0\) "
                         rf"on 1 of 2 processes \(this process: loss = {loss}\)", out), out[-3000:]


def merged_config(path: Path) -> dict:
    """An experiment with its ``_base_`` chain merged (dicts key by key, lists replaced), without jsonargparse."""
    def merge(base, over):
        if isinstance(base, dict) and isinstance(over, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in over.items()}}
        return over
    config: dict = {}
    for layer in expand_config(path):  # a base's path, or an overlay's YAML text
        config = merge(config, yaml.safe_load(layer if "\n" in layer else Path(layer).read_text()))
    return config


GUARDED = [p for p in sorted(EXPERIMENTS.glob("*.yaml"))
           if merged_config(p)["model"]["class_path"] in ("lightning_mae.MAEPretraining", "lightning_inr.SignalFit")]


def test_pretraining_and_inr_configs_have_the_guard():
    assert len(GUARDED) >= 4 + 9  # (sg)mae(_fmnist) and the INR configs; test_cli checks that all parse
    for config in GUARDED:
        callbacks = merged_config(config)["trainer"].get("callbacks") or []
        assert {"class_path": "lightning_run.NonFiniteLossGuard"} in callbacks, config.name


# --- 4. atomic checkpoints ----------------------------------------------------------------------------------
def write_half_then_fail(real_save):
    def save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    return save


def test_lightning_default_writer_is_not_atomic_across_filesystems(tmp_path, monkeypatch):
    # Why AtomicCheckpointIO exists. Lightning's writer stages the file in the system temp directory;
    # when that is another filesystem, rename fails (EXDEV) and shutil.move copies into the target.
    path = tmp_path / "last.ckpt"
    TorchCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(256)}, path)

    def rename(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def copy_half_then_fail(src, dst, *args, **kwargs):
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])
        raise OSError(errno.EIO, "interrupted")

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "copyfile", copy_half_then_fail)
    with pytest.raises(OSError):
        TorchCheckpointIO().save_checkpoint({"step": 2, "w": torch.zeros(256)}, path)
    monkeypatch.undo()
    with pytest.raises(RuntimeError):  # the previous checkpoint is gone, a truncated one in its place
        torch.load(path, weights_only=True)


def test_atomic_checkpoint_io_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(256)}, path)
    monkeypatch.setattr(torch, "save", write_half_then_fail(torch.save))
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.zeros(256)}, path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no partial or temporary file
    old = torch.load(path, weights_only=True)
    assert old["step"] == 1 and torch.equal(old["w"], torch.ones(256))
    AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.zeros(256)}, path)
    assert torch.load(path, weights_only=True)["step"] == 2


KILL_SCRIPT = """
import io, os, signal, sys
import torch
sys.path.insert(0, {repo!r})
from lightning_run.checkpoint_io import atomic_torch_save

real_save = torch.save
def save_half_then_die(obj, f):
    buf = io.BytesIO()
    real_save(obj, buf)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # no exception handler runs
torch.save = save_half_then_die
atomic_torch_save({{"step": 2, "w": torch.zeros(4096)}}, {path!r})
"""


@pytest.mark.slow
def test_atomic_save_killed_mid_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(4096)}, path)
    script = tmp_path / "die.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT.format(repo=str(REPO), path=str(path))))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert torch.load(path, weights_only=True)["step"] == 1
    [leftover] = [p for p in tmp_path.iterdir() if p.name.startswith(".last.ckpt.")]  # hidden, named after it
    assert leftover.suffix == ".tmp" and 0 < leftover.stat().st_size < path.stat().st_size * 2


def test_atomic_checkpoint_io_in_a_trainer(tmp_path):
    trainer = fit_with_checkpoints(tmp_path, Regression(), [], plugins=[AtomicCheckpointIO()])
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == 8
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would
