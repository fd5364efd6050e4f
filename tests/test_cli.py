"""The `lightning` command: every config parses, the demo runs, W&B offline files, DDP on CPU."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lightning_run.cli import cli
from tests.conftest import EXPERIMENTS, run_lightning

CONFIGS = sorted(EXPERIMENTS.glob("*.yaml"))
DEMO = EXPERIMENTS / "sgmae_fmnist.yaml"
# A short demo: few images and batches, so each run takes seconds.
QUICK = ["--data.init_args.train_subset", "64", "--data.init_args.batch_size", "16",
         "--data.init_args.num_workers", "0", "--trainer.limit_val_batches", "2"]


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"sgmae.yaml", "mae.yaml", "sgmae_fmnist.yaml"} <= names


def printed_config(config: Path, capsys) -> dict:
    """``config`` as the run sees it (its ``_base_`` chain merged, every default filled in): ``--print_config``."""
    with pytest.raises(SystemExit) as exit_info:
        cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_print_config_parses(config: Path, capsys, monkeypatch):
    monkeypatch.chdir(EXPERIMENTS.parent)
    printed = printed_config(config, capsys)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]
    assert printed["trainer"]["max_epochs"] or printed["trainer"]["max_steps"]
    assert {"class_path": "lightning_run.checkpoint_io.AtomicCheckpointIO"} in printed["trainer"]["plugins"]


def without_run_dir(config: dict) -> dict:
    config["trainer"].pop("default_root_dir")
    config["trainer"]["logger"]["init_args"].pop("save_dir")
    return config


def test_fmnist_configs_differ_only_in_masking(capsys, monkeypatch):
    """The three Fashion-MNIST runs compared in the README: MAE, SG-MAE from epoch 2, SG-MAE auto start."""
    monkeypatch.chdir(EXPERIMENTS.parent)
    runs = {n: without_run_dir(printed_config(EXPERIMENTS / f"{n}.yaml", capsys))
            for n in ("sgmae_fmnist", "mae_fmnist", "sgmae_fmnist_auto")}
    for config in runs.values():
        masking = config["model"]["init_args"]["masking"]["init_args"]
        assert masking.pop("start_epoch") in (2, None, "auto")
        for knob in ("auto_threshold", "auto_min_epoch", "auto_probe_images", "relation_temperature", "auto_patience"):
            masking.pop(knob, None)
    assert runs["sgmae_fmnist"] == runs["mae_fmnist"] == runs["sgmae_fmnist_auto"]


def test_recipe_configs_differ_only_in_masking(capsys, monkeypatch):
    monkeypatch.chdir(EXPERIMENTS.parent)
    sg, mae = (without_run_dir(printed_config(EXPERIMENTS / n, capsys)) for n in ("sgmae.yaml", "mae.yaml"))
    assert sg["model"]["init_args"]["masking"]["init_args"]["start_epoch"] == 40
    assert mae["model"]["init_args"]["masking"]["init_args"]["start_epoch"] is None
    sg["model"]["init_args"]["masking"]["init_args"]["start_epoch"] = None
    assert sg == mae
    t = sg["trainer"]
    eff = sg["data"]["init_args"]["batch_size"] * t["devices"] * t["num_nodes"] * t["accumulate_grad_batches"]
    assert eff == 4096 and t["precision"] == "bf16-mixed" and t["max_epochs"] == 400


@pytest.mark.parametrize("protocol", ["linprobe", "finetune"])
def test_dataset_configs_differ_only_in_data(protocol, capsys, monkeypatch):
    """The per-dataset overlays change the data class and folder only. They rely on jsonargparse keeping, when
    a ``class_path`` changes, the ``init_args`` the old and new class share (batch size, crops, recipe)."""
    monkeypatch.chdir(EXPERIMENTS.parent)
    base = without_run_dir(printed_config(EXPERIMENTS / f"{protocol}_imagenet.yaml", capsys))
    shared = {k: v for k, v in base.pop("data")["init_args"].items() if k != "data_dir"}
    for dataset in ("cifar10", "cifar100", "cub", "inat2019"):
        config = without_run_dir(printed_config(EXPERIMENTS / f"{protocol}_{dataset}.yaml", capsys))
        data = config.pop("data")["init_args"]
        assert config == base, dataset
        assert {k: data[k] for k in shared if k in data} == {k: v for k, v in shared.items() if k in data}, dataset
        assert data.keys() & shared.keys() >= {"recipe", "batch_size", "crop_scale"}, dataset


def test_a_config_typo_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["fit", "--config", str(DEMO), "--model.init_args.masking.init_args.partitoin", "pca",
             "--print_config"])
    assert exit_info.value.code != 0
    assert "partitoin" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_demo_fast_dev_run_through_the_lightning_command(tmp_path, precision):
    args = ["fit", "--config", str(DEMO), "--trainer.fast_dev_run", "2", "--trainer.precision", precision,
            "--model.init_args.masking.init_args.start_epoch", "0", *QUICK]
    out = run_lightning(args, cwd=tmp_path)
    assert "Run directory:" in out.stdout + out.stderr
    assert "mask/informed=1" in out.stdout + out.stderr


def test_wandb_offline_run_writes_its_files(tmp_path):
    args = ["fit", "--config", str(DEMO), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
            "--trainer.log_every_n_steps", "1", *QUICK]
    proc = run_lightning(args, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    [run] = list((tmp_path / "runs" / "sgmae_fmnist" / "wandb").glob("offline-run-*"))
    run_id = run.name.split("-")[-1]
    assert (run / f"run-{run_id}.wandb").stat().st_size > 0
    # the resolved config: in the run directory and among the W&B run's files
    config = yaml.safe_load((tmp_path / "runs/sgmae_fmnist/sgmae-fmnist" / run_id / "config.yaml").read_text())
    assert config["model"]["init_args"]["masking"]["init_args"]["start_epoch"] == 2
    assert "data_dir" in config["data"]["init_args"]  # None-valued knobs are written too
    assert (run / "files" / "config.yaml").is_file()
    [panel] = list((run / "files" / "media" / "images").glob("mask_panels_*.png"))
    pixels = np.asarray(Image.open(panel).convert("L"), dtype=np.float32)
    assert pixels.std() > 10  # a real picture, not a blank tile
    assert re.search(r"W&B run: .*offline.*wandb sync", out)
    assert (tmp_path / "runs/sgmae_fmnist/sgmae-fmnist" / run_id / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_ddp_two_cpu_processes_with_informed_masking(tmp_path):
    args = ["fit", "--config", str(DEMO), "--trainer.accelerator", "cpu", "--trainer.devices", "2",
            "--trainer.strategy", "ddp", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
            "--model.init_args.masking.init_args.start_epoch", "0", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path), *QUICK]
    proc = run_lightning(args, cwd=tmp_path, extra_env={"OMP_NUM_THREADS": "1"})
    out = proc.stdout + proc.stderr
    # the lr follows the effective batch: 16 per process x 2 processes
    assert "effective batch 32 (per device x 2 processes x 1 accumulation)" in out
    assert "informed=1" in out  # RunSummary's final metrics: informed masks were used
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
