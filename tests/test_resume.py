"""Exact resume: the demo stopped mid-epoch and resumed from its last checkpoint ends with the same
weights and optimizer state as an uninterrupted run, and logs into the same W&B run."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from tests.conftest import EXPERIMENTS, REPO, run_lightning


class KillAtStep(pl.Callback):
    """Simulates a crash (no clean-up, no exception handling) once ``global_step`` reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step >= self.step:
            os._exit(3)


class DumpFinalState(pl.Callback):
    """Writes the final weights, optimizer state, W&B run id and the epochs' mask schedule to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.schedule: dict[int, tuple[bool, float]] = {}
        self.losses: dict[int, tuple[int, float, float]] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.schedule[trainer.current_epoch] = (pl_module.masks_informed, pl_module.hint_ratio)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object,
                           batch: object, batch_idx: int) -> None:
        self.losses[trainer.global_step] = (batch_idx, float(outputs["loss"]), float(batch[0].sum()))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save({"losses": self.losses,
            "model": pl_module.state_dict(), "optimizer": trainer.optimizers[0].state_dict(),
            "run_id": trainer.logger.version, "schedule": self.schedule, "global_step": trainer.global_step,
        }, self.path)


def _config(tmp_path: Path, name: str, kill_at: int | None) -> Path:
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(tmp_path / name / "ckpt"), "every_n_train_steps": 4, "save_last": True,
                       "save_top_k": -1}},
        {"class_path": "tests.test_resume.DumpFinalState", "init_args": {"path": str(tmp_path / f"{name}.pt")}},
    ]
    if kill_at is not None:
        callbacks.append({"class_path": "tests.test_resume.KillAtStep", "init_args": {"step": kill_at}})
    config = {
        "trainer": {"max_epochs": 3, "limit_val_batches": 1, "default_root_dir": str(tmp_path / name),
                    "logger": {"class_path": "lightning.pytorch.loggers.WandbLogger",
                               "init_args": {"project": "resume-test", "save_dir": str(tmp_path / name),
                                             "offline": True}},
                    "callbacks": callbacks},
        "model": {"init_args": {"masking": {"init_args": {"start_epoch": 1, "hint_selection": "random"}}}},
        "data": {"init_args": {"train_subset": 320, "batch_size": 32, "num_workers": 1}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_mid_epoch_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(REPO)}  # the subprocess imports the callbacks above from tests/
    base = ["fit", "--config", str(EXPERIMENTS / "sgmae_fmnist.yaml")]

    # 10 steps per epoch, 30 in all; checkpoints every 4 steps; the crash at step 18 leaves the
    # step-16 checkpoint: epoch 1 (informed masks with random hints), batch 6 of 10.
    run_lightning([*base, "--config", str(_config(tmp_path, "full", None))], tmp_path, extra_env=env)
    crashed = run_lightning([*base, "--config", str(_config(tmp_path, "resumed", 18))], tmp_path,
                            extra_env=env, check=False)
    assert crashed.returncode == 3, crashed.stderr[-2000:]
    last = tmp_path / "resumed" / "ckpt" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert (checkpoint["global_step"], checkpoint["epoch"]) == (16, 1)
    assert checkpoint["wandb_run_id"]
    run_lightning([*base, "--config", str(_config(tmp_path, "resumed", None)), "--ckpt_path", str(last)],
                  tmp_path, extra_env=env)

    full, resumed = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("full", "resumed"))
    assert resumed["global_step"] == full["global_step"] == 30
    assert resumed["run_id"] == checkpoint["wandb_run_id"]  # logs into the crashed run's W&B run
    assert full["schedule"] == {0: (False, 0.0), 1: (True, 0.25), 2: (True, pytest.approx(0.05))}
    assert resumed["schedule"][2] == full["schedule"][2]
    assert {s: v for s, v in full["losses"].items() if s > 16} == resumed["losses"]
    assert full["model"].keys() == resumed["model"].keys()
    for key, value in full["model"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, resumed["model"][key]), key
    for a, b in zip(full["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
