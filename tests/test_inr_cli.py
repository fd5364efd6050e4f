"""`fast_dev_run` of every inr_*.yaml config through the `lightning` command on the bundled samples (and, for
inr_image.yaml, the manager shipped in the package, found from another working directory)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_run.cli import cli

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "experiments").glob("inr_*.yaml"))

# Small enough for 2 CPU cores; the configs fit the samples bundled in the package (path: samples/...).
SMALL = {
    "image": ["--data.init_args.size=24"],
    "audio": ["--data.init_args.max_samples=4000"],
    "sdf": [
        "--data.init_args.surface_samples=20000", "--data.init_args.n_surface=500", "--data.init_args.n_near=500",
        "--data.init_args.n_far=500", "--data.init_args.pretrain_resolution=8",
        "--model.init_args.task.init_args.eval_resolution=24", "--model.init_args.task.init_args.eval_points=5000",
    ],
}


def kind(config: Path) -> str:
    return next(k for k in SMALL if config.stem.startswith(f"inr_{k}"))


def test_every_config_kind_is_covered():
    assert {kind(c) for c in CONFIGS} == set(SMALL) and len(CONFIGS) >= 9


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_fast_dev_run(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # samples/... resolves to the bundled files from any working directory
    monkeypatch.setattr(sys, "argv", ["lightning"])  # pytest's own arguments are not the CLI's
    out = tmp_path / "run"
    cli([
        "fit", "--config", str(config), "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={out}",
        *SMALL[kind(config)],
    ])
    assert (out / "metrics.json").is_file()
    suffix = {"image": ".png", "audio": ".wav", "sdf": ".ply"}[kind(config)]
    if kind(config) != "sdf":  # one step of an SDF fit has usually no surface to extract yet
        assert (out / f"reconstruction{suffix}").is_file() and (out / "expert_map.png").is_file()


@pytest.mark.slow
def test_lightning_console_script_fits_an_image(tmp_path):
    out = tmp_path / "run"
    command = Path(sys.executable).with_name("lightning")
    proc = subprocess.run(
        [str(command), "fit", "--config", str(REPO / "experiments" / "inr_image.yaml"), "--trainer.fast_dev_run=true",
         f"--trainer.default_root_dir={out}", "--data.init_args.size=16"],
        cwd=tmp_path, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (out / "reconstruction.png").is_file() and (out / "expert_map.png").is_file()
    # the shipped manager was loaded (its recorded label accuracy, 1.0), not pretrained for one debug step (~0.25)
    assert json.loads((out / "metrics.json").read_text())["manager_accuracy"] == 1.0
