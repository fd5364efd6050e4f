"""Where a run's files go: one directory per run, shared by its config, checkpoints and callbacks' files."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers.logger import DummyLogger


def run_dir(trainer: pl.Trainer) -> Path:
    """The directory of this run: ``<save_dir>/<name>/<version>`` of the first logger.

    Same rule as ``ModelCheckpoint``'s default ``dirpath`` (minus ``checkpoints/``), so the config,
    the checkpoints and every file a callback writes end up side by side. Without a logger (or under
    ``fast_dev_run``) it is the Trainer's ``default_root_dir``.
    """
    logger = trainer.logger
    if logger is None or isinstance(logger, DummyLogger):
        return Path(trainer.default_root_dir)
    save_dir = logger.save_dir or trainer.default_root_dir
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(save_dir, str(logger.name or ""), version)
