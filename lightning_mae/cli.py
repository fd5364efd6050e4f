"""The project's ``lightning`` command: a LightningCLI over every model and DataModule of the project.

``lightning`` 2.x installs no ``lightning`` executable; ``pyproject.toml`` maps that name to ``main``.
Models and data are chosen by ``class_path`` (subclass mode), so any LightningModule / DataModule of
``lightning_mae``, ``lightning_inr`` or ``datamodules`` (or of a user's package) can be named in a config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.logger import DummyLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only


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


class RunConfigSaver(SaveConfigCallback):
    """Writes the resolved config to ``run_dir/config.yaml`` and sends it to W&B as the run config.

    Checkpoints also record the W&B run id, so ``fit --ckpt_path`` resumes logging into the same run
    (see ``ProjectCLI.before_instantiate_classes``).
    """

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                checkpoint["wandb_run_id"] = logger.version

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Called on global rank 0 only (SaveConfigCallback.setup checks it).
        directory = run_dir(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.config_filename
        self.parser.save(self.config, path, skip_unset=False, overwrite=True, multifile=False)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(self.config.as_dict(), allow_val_change=True)
                logger.experiment.save(str(path), base_path=str(directory), policy="now")


class RunSummary(pl.Callback):
    """At the end of ``fit``, prints where the run's files are and its final metrics."""

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lines = [f"Run directory: {run_dir(trainer)}"]
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and Path(getattr(ckpt, "last_model_path", "") or "/nonexistent").is_file():
            lines.append(f"Last checkpoint: {ckpt.last_model_path}")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                where = Path(run.dir).parent
                offline = getattr(run.settings, "mode", "") == "offline" or getattr(run, "offline", False)
                lines.append(f"W&B run: {where}" + (f" (offline: upload with `wandb sync {where}`)" if offline else ""))
            elif isinstance(logger, CSVLogger):
                lines.append(f"Metrics CSV: {Path(logger.log_dir, 'metrics.csv')}")
            elif isinstance(logger, TensorBoardLogger):
                lines.append(f"TensorBoard: tensorboard --logdir {logger.log_dir}")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if v.numel() == 1 and not k.endswith(("_step", "_epoch"))}
        if metrics:
            lines.append("Final metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
        rank_zero_info("\n".join(lines))


class ProjectCLI(LightningCLI):
    """LightningCLI that resumes the W&B run of the checkpoint it resumes from."""

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path") if config is not None else None
        if not ckpt_path or not Path(str(ckpt_path)).is_file():
            return  # no checkpoint, or one of Lightning's aliases ("last", "best", ...)
        try:
            run_id = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("wandb_run_id")
        except Exception as err:  # Lightning reports unreadable checkpoints itself, with more context
            rank_zero_info(f"could not read the W&B run id from {ckpt_path}: {err}")
            return
        loggers = config.trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if run_id and _is_wandb(logger) and not logger.init_args.get("id"):
                logger.init_args.id = run_id  # WandbLogger resumes with resume="allow"


def _is_wandb(logger: Any) -> bool:
    class_path = getattr(logger, "class_path", None) if logger is not None else None
    return isinstance(class_path, str) and class_path.rsplit(".", 1)[-1] == "WandbLogger"


def _import_project() -> None:
    # Importing the packages registers their classes, so `--model.help` / `--data.help` list them
    # and configs may use short class names.
    import datamodules  # noqa: F401
    import lightning_inr  # noqa: F401
    import lightning_mae  # noqa: F401


def cli(args: list[str] | None = None) -> LightningCLI:
    """Run the project's LightningCLI (``fit``/``validate``/``test``/``predict``) and return it."""
    os.environ.setdefault("WANDB_SILENT", "true")
    _import_project()
    return ProjectCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RunConfigSaver,
        save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
        auto_configure_optimizers=False,  # every module owns its optimizer as typed arguments
        seed_everything_default=0,  # two runs of one config are comparable unless told otherwise
        # Checkpoints are written next to their target, fsynced, then renamed: never half-written.
        trainer_defaults={"plugins": [{"class_path": "lightning_mae.guards.AtomicCheckpointIO"}]},
        args=args,
    )


def main() -> None:
    """Entry point of the ``lightning`` console script."""
    cli()


if __name__ == "__main__":
    main()
