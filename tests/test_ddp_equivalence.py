"""DDP equivalence: a 2-process CPU (gloo) run and a 1-process run with the same effective batch give the
same loss curve, for SG-MAE and for the INR; the learning rate follows the effective batch."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from tests.conftest import EXPERIMENTS, REPO, run_lightning

pytestmark = pytest.mark.slow


class RecordLoss(pl.Callback):
    """Rank 0 writes the per-step training loss averaged over ranks, and the learning rate, to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.losses: list[float] = []
        self.lrs: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: dict,
                           batch: object, batch_idx: int) -> None:
        loss = trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean")
        self.losses.append(float(loss))
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            torch.save({"losses": self.losses, "lrs": self.lrs, "world_size": trainer.world_size}, self.path)


def _fit(tmp_path: Path, name: str, config: str, devices: int, overrides: dict, ddp: str = "ddp") -> dict:
    trainer = {
        "accelerator": "cpu", "devices": devices, "strategy": ddp if devices > 1 else "auto",
        "default_root_dir": str(tmp_path / name), "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": False,
        "callbacks": [{"class_path": "tests.test_ddp_equivalence.RecordLoss",
                       "init_args": {"path": str(tmp_path / f"{name}.pt")}}],
        **overrides.pop("trainer", {}),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"trainer": trainer, **overrides}))
    # Threads: 1 per process, so the 1- and 2-process runs do not oversubscribe 2 cores differently.
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run_lightning(["fit", "--config", str(EXPERIMENTS / config), "--config", str(path)], REPO, extra_env=env)
    return torch.load(tmp_path / f"{name}.pt", weights_only=True)


def test_sgmae_two_processes_match_one(tmp_path: Path) -> None:
    def overrides(batch_size: int) -> dict:
        # Informed masks from the first step with no hints: the masks are a function of the weights,
        # and the sampler gives the 2 ranks the two halves of the 1-process batch. The PCA split: at
        # initialisation every patch pair passes the NCut threshold, the graph is complete and its
        # Fiedler vector is degenerate (any split is valid; LAPACK picks one per batch shape).
        return {
            "trainer": {"max_epochs": 1, "limit_val_batches": 0},
            "model": {"init_args": {"num_classes": 0, "masking": {"init_args": {
                "start_epoch": 0, "hint_start": 0.0, "hint_end": 0.0, "partition": "pca"}}}},
            "data": {"init_args": {"train_subset": 256, "batch_size": batch_size, "num_workers": 0}},
        }

    one = _fit(tmp_path, "one", "sgmae_fmnist.yaml", 1, overrides(32))
    two = _fit(tmp_path, "two", "sgmae_fmnist.yaml", 2, overrides(16))
    assert two["world_size"] == 2 and len(one["losses"]) == len(two["losses"]) == 8
    assert two["lrs"] == pytest.approx(one["lrs"], rel=1e-6)  # effective batch 32 in both
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-3)


def test_inr_two_processes_match_one(tmp_path: Path) -> None:
    def overrides() -> dict:
        return {
            "trainer": {"max_steps": 12, "check_val_every_n_epoch": 100},
            # The manager phase runs (4 steps, on every rank, rank 0's result broadcast) before the 12 steps.
            "model": {"init_args": {"manager_checkpoint": None, "manager_steps": 4}},
            "data": {"init_args": {"size": 32, "steps_per_epoch": 6}},
        }

    one = _fit(tmp_path, "one", "inr_image.yaml", 1, overrides())
    # The stages train different parameter sets (the experts-only stage leaves the encoders and the manager out).
    two = _fit(tmp_path, "two", "inr_image.yaml", 2, overrides(), ddp="ddp_find_unused_parameters_true")
    assert two["world_size"] == 2 and len(one["losses"]) == len(two["losses"]) == 12
    assert two["lrs"] == pytest.approx(one["lrs"], rel=1e-6)
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4)
