"""Shared test helpers: the repository paths and a runner for the `lightning` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "datamodules" / "signals" / "samples"  # the signals bundled in the package
EXPERIMENTS = REPO / "experiments"
LIGHTNING = Path(sys.executable).with_name("lightning")  # the project's console script


def run_lightning(args: list[str], cwd: Path, timeout: int = 600, extra_env: dict | None = None,
                  check: bool = True) -> subprocess.CompletedProcess:
    """Run ``lightning <args>`` in a subprocess with W&B offline; with ``check``, fail the test with its
    output on a non-zero exit."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(cwd), "PYTHONWARNINGS": "ignore",
           **(extra_env or {})}
    proc = subprocess.run([str(LIGHTNING), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"lightning {' '.join(args)} exited {proc.returncode}\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(autouse=True)
def _wandb_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No test may reach W&B's servers or write into the repository.
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
