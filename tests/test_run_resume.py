"""Resuming through the `lightning` command (lightning_run.cli.ProjectCLI): a resume continues the checkpoint's
run (conflicting model/data overrides are errors, trainer overrides are honoured), `--ckpt_path last` finds the
newest run of the experiment, a run directory in use is never written into, and Ctrl-C leaves a checkpoint to
resume from (lightning_run.callbacks.InterruptCheckpoint).

The runs use a tiny model and DataModule defined here (a few hundred parameters, a few steps), so each takes
seconds; tests/test_resume.py checks exact resume on the real demo.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import wandb
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers.logger import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_run.callbacks import InterruptCheckpoint
from lightning_run.cli import cli
from lightning_run.errors import ConfigError
from lightning_run.resume import find_last


# --- a tiny model and data, by class_path ------------------------------------------------------------------
class TinyModel(pl.LightningModule):
    """Linear regression. ``fail_at``: ``"setup"`` raises a FileNotFoundError in ``setup`` (after the logger
    and config saver ran), ``"step"`` a ValueError in ``training_step`` (a bug)."""

    def __init__(self, lr: float = 0.05, width: int = 4, compile: bool = False, fail_at: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.layer = nn.Linear(width, 1)

    def setup(self, stage: str) -> None:
        if self.hparams.fail_at == "setup":
            raise FileNotFoundError("tiny model: weights file init.bin not found")

    def training_step(self, batch, batch_idx):
        if self.hparams.fail_at == "step":
            raise ValueError("a bug in training_step")
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class TinyData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 4, size: int = 16, width: int = 4, num_workers: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.size, self.width, self.num_workers = batch_size, size, width, num_workers

    def _loader(self, seed: int) -> DataLoader:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(self.size, self.width, generator=g)
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=self.batch_size,
                          num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(1)


WANDB = {"class_path": "lightning.pytorch.loggers.WandbLogger",
         "init_args": {"project": "tiny", "save_dir": "runs/tiny", "offline": True}}


def tiny_config(directory: Path, logger: dict | bool = False, **model) -> Path:
    """A config of the tiny experiment (4 steps an epoch, one checkpoint per epoch and last.ckpt)."""
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1, "limit_val_batches": 1, "default_root_dir": "runs/tiny", "logger": logger,
                    "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"save_last": True}}]},
        "model": {"class_path": "tests.test_run_resume.TinyModel", "init_args": model},
        "data": {"class_path": "tests.test_run_resume.TinyData"},
    }
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(*args: str) -> pl.Trainer:
    """``lightning fit <args>`` in this process; the W&B run (if any) is finished after it, as in a new process."""
    try:
        return cli(["fit", *args]).trainer
    finally:
        if wandb.run is not None:
            wandb.finish()


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- 1. a resume continues the checkpoint's run --------------------------------------------------------------
def test_resume_refuses_conflicting_overrides_and_honours_trainer_ones(in_tmp):
    config = str(tiny_config(in_tmp))
    run("--config", config)
    last = in_tmp / "runs/tiny/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4

    # A model option on the command line that differs from the checkpoint's: an error naming it, both values.
    with pytest.raises(ConfigError, match=r"--model\.init_args\.lr is 0\.5 here but 0\.05 in the checkpoint") as err:
        run("--config", config, "--model.init_args.lr", "0.5", "--ckpt_path", str(last))
    assert "drop the override" in err.value.hint and "new run" in err.value.hint
    # ... and a data option changed in a config file, listed with it
    other = in_tmp / "other.yaml"
    other.write_text(yaml.safe_dump({"data": {"init_args": {"batch_size": 2}}}))
    with pytest.raises(ConfigError, match=r"--model\.init_args\.lr is 0\.5 .*; --data\.init_args\.batch_size is 2 "
                                          r"here but 4 in the checkpoint"):
        run("--config", config, "--config", str(other), "--model.init_args.lr", "0.5", "--ckpt_path", str(last))
    assert torch.load(last, weights_only=True)["global_step"] == 4  # nothing ran

    # Trainer options, and model/data options that change nothing of the run, are honoured.
    trainer = run("--config", config, "--trainer.max_epochs", "3", "--model.init_args.compile", "false",
                  "--data.init_args.num_workers", "0", "--ckpt_path", str(last))
    assert (trainer.current_epoch, trainer.global_step) == (3, 12)
    assert trainer.lightning_module.hparams.lr == 0.05


# --- 2. --ckpt_path last ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ckpt_path_last_resumes_the_newest_run_of_the_experiment_and_its_wandb_run(in_tmp):
    config = str(tiny_config(in_tmp, logger=WANDB))
    with pytest.raises(ConfigError, match=r"--ckpt_path last: no last\.ckpt .* under runs/tiny/tiny\b") as err:
        run("--config", config, "--ckpt_path", "last")
    assert "without --ckpt_path" in err.value.hint
    assert not (in_tmp / "runs").exists()  # nothing created

    first = run("--config", config).logger.version
    second = run("--config", config).logger.version
    assert first != second  # each run has its own W&B id and run directory
    newest = in_tmp / "runs/tiny/tiny" / second / "checkpoints/last.ckpt"
    older = in_tmp / "runs/tiny/tiny" / first / "checkpoints/last.ckpt"
    os.utime(older, (newest.stat().st_mtime + 10,) * 2)  # the first run's checkpoint is the newest now
    trainer = run("--config", config, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert trainer.logger.version == first  # the same W&B run and run directory
    assert trainer.global_step == 8 and torch.load(older, weights_only=True)["global_step"] == 8
    assert len(list((in_tmp / "runs/tiny/tiny").iterdir())) == 2  # no new run directory


def test_last_is_the_newest_last_or_interrupted_checkpoint_across_run_directories(tmp_path):
    trainer = {"default_root_dir": str(tmp_path / "root"), "logger": WANDB | {
        "init_args": {**WANDB["init_args"], "save_dir": str(tmp_path / "runs")}}}
    for i, name in enumerate(["a/checkpoints/last.ckpt", "b/checkpoints/interrupted.ckpt",
                              "c/checkpoints/epoch=3-step=40.ckpt", "d/checkpoints/last.ckpt"]):
        path = tmp_path / "runs/tiny" / name
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
        os.utime(path, (1000 + i * (1 if i != 3 else -1),) * 2)  # d is the oldest; c is no resume file
    assert find_last(trainer) == (tmp_path / "runs/tiny/b/checkpoints/interrupted.ckpt", [tmp_path / "runs/tiny"])
    with pytest.raises(ConfigError, match=rf"no last\.ckpt or interrupted\.ckpt of this experiment under "
                                          rf"{tmp_path}/root$"):
        find_last({"default_root_dir": str(tmp_path / "root"), "logger": False})


# --- 3. a run directory in use ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_reused_run_id_is_refused_before_anything_is_written_or_resumes_that_run(in_tmp):
    config = str(tiny_config(in_tmp, logger=WANDB))
    run("--config", config, "--trainer.logger.init_args.id", "abc")
    directory = in_tmp / "runs/tiny/tiny/abc"
    before = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    wandb_runs = sorted((in_tmp / "runs/tiny/wandb").glob("offline-run-*"))

    def unchanged() -> None:
        assert {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()} == before
        assert sorted((in_tmp / "runs/tiny/wandb").glob("offline-run-*")) == wandb_runs

    with pytest.raises(ConfigError, match=r"run directory runs/tiny/tiny/abc already holds a run \(config\.yaml, 2 "
                                          r"checkpoints in checkpoints/\).*Nothing was written") as err:
        run("--config", config, "--trainer.logger.init_args.id", "abc", "--model.init_args.lr", "0.01")
    assert "--ckpt_path runs/tiny/tiny/abc/checkpoints/last.ckpt" in err.value.hint
    unchanged()

    # Resuming that run is what a checkpoint of it does: the earlier config is kept beside the new one.
    trainer = run("--config", config, "--trainer.logger.init_args.id", "abc", "--trainer.max_epochs", "2",
                  "--ckpt_path", str(directory / "checkpoints/last.ckpt"))
    assert trainer.global_step == 8
    assert (directory / "config.1.yaml").read_bytes() == before[directory / "config.yaml"]
    assert yaml.safe_load((directory / "config.yaml").read_text())["trainer"]["max_epochs"] == 2


class FixedDirLogger(Logger):
    """A logger of its own kind, whose run directory the config does not show: ``runs/tiny/tiny/fixed``."""

    name, version, save_dir = "tiny", "fixed", "runs/tiny"

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_a_reused_run_directory_known_only_at_setup_is_refused_there(in_tmp):
    # Only the config saver, at setup, learns where such a logger's run goes: it checks before writing.
    config = str(tiny_config(in_tmp, logger={"class_path": "tests.test_run_resume.FixedDirLogger"}))
    run("--config", config)
    directory = in_tmp / "runs/tiny/tiny/fixed"
    before = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
    assert directory / "config.yaml" in before and list(directory.glob("checkpoints/*.ckpt"))
    with pytest.raises(ConfigError, match=r"run directory runs/tiny/tiny/fixed already holds a run"):
        run("--config", config, "--model.init_args.lr", "0.01")
    assert {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()} == before
    trainer = run("--config", config, "--trainer.max_epochs", "2", "--ckpt_path",
                  str(directory / "checkpoints/last.ckpt"))  # resuming it is fine
    assert trainer.global_step == 8


@pytest.mark.slow
def test_resuming_from_a_checkpoint_folder_outside_the_run_directory(in_tmp):
    # tests/test_resume.py's layout: checkpoints in a ModelCheckpoint dirpath of their own; the resumed run
    # gets the W&B id, hence the run directory, of the checkpoint's run, which is not refused.
    config = tiny_config(in_tmp, logger=WANDB)
    data = yaml.safe_load(config.read_text())
    data["trainer"]["callbacks"][0]["init_args"]["dirpath"] = "ckpt"
    config.write_text(yaml.safe_dump(data))
    first = run("--config", str(config)).logger.version
    with pytest.raises(ConfigError, match=r"checkpoint folder ckpt \(a ModelCheckpoint dirpath\) already holds"):
        run("--config", str(config))  # a new run would mix its checkpoints into ckpt/
    trainer = run("--config", str(config), "--trainer.max_epochs", "2", "--ckpt_path", "ckpt/last.ckpt")
    assert trainer.logger.version == first and trainer.global_step == 8


def test_logger_false_reusing_the_default_root_dir_is_refused(in_tmp):
    config = str(tiny_config(in_tmp))
    run("--config", config)
    config_yaml = (in_tmp / "runs/tiny/config.yaml").read_bytes()
    with pytest.raises(ConfigError, match=r"run directory runs/tiny already holds a run") as err:
        run("--config", config, "--model.init_args.lr", "0.01")
    assert "--trainer.default_root_dir" in err.value.hint
    assert (in_tmp / "runs/tiny/config.yaml").read_bytes() == config_yaml
    run("--config", config, "--trainer.default_root_dir", "runs/tiny2", "--model.init_args.lr", "0.01")  # a new one


# --- 6. Ctrl-C -------------------------------------------------------------------------------------------------
class InterruptAt(pl.Callback):
    """Raises KeyboardInterrupt (``how="raise"``) or sends this process SIGINT (``how="signal"``) when the
    batch of optimizer step ``step + 1`` starts, i.e. after ``step`` steps completed."""

    def __init__(self, step: int, how: str) -> None:
        self.step, self.how = step, how

    def on_train_batch_start(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            if self.how == "raise":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)


class Record(pl.Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_step = trainer.global_step


def fit(directory: Path, callbacks: list, ckpt_path: Path | None = None, max_steps: int = 10) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=directory, limit_val_batches=0,
                         callbacks=[ModelCheckpoint(dirpath=directory / "checkpoints", save_last=True,
                                                    every_n_train_steps=4), *callbacks])
    torch.manual_seed(0)
    trainer.fit(TinyModel(), TinyData(size=4), ckpt_path=ckpt_path)  # one batch: every step sees the same data
    return trainer


@pytest.fixture
def python_sigint_handler():
    """Python's own Ctrl-C handler for the test, whatever an earlier test or the shell left installed (a
    background job starts with SIGINT ignored; a leftover SIG_DFL would let the test's SIGINT kill pytest)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("how, saved_step", [("raise", 5), ("signal", 6)])
@pytest.mark.usefixtures("python_sigint_handler")
def test_ctrl_c_saves_a_checkpoint_to_resume_from(tmp_path, caplog, how, saved_step):
    # "raise": a KeyboardInterrupt reaches Lightning as step 6 begins: the checkpoint holds the 5 completed steps.
    # "signal": the first Ctrl-C lets step 6 finish and saves at its end (what a periodic checkpoint would be).
    interrupted = InterruptCheckpoint()
    with pytest.raises(SystemExit):  # Lightning exits after a KeyboardInterrupt
        fit(tmp_path, [interrupted, InterruptAt(5, how)])
    path = tmp_path / "checkpoints" / "interrupted.ckpt"
    assert interrupted.saved_path == path
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["interrupted"] is True and checkpoint["global_step"] == saved_step
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4  # periodic
    assert f"Interrupted at step {saved_step} (epoch 5): saved {path}\nResume with: " in caplog.text
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored

    record = Record()
    resumed = fit(tmp_path / "resumed", [record], ckpt_path=path)
    assert record.start_step == saved_step and resumed.global_step == 10
    uninterrupted = fit(tmp_path / "full", [])
    for name, value in uninterrupted.lightning_module.state_dict().items():  # the same run, step for step
        assert torch.equal(resumed.lightning_module.state_dict()[name], value), name
